package cluster

// SlotCount is the number of hash slots in a Valkey cluster.
const SlotCount = 16384

// crc16tab is the CRC16/XMODEM table (polynomial 0x1021), computed once at start-up.
var crc16tab = func() (t [256]uint16) {
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc = crc<<8 ^ crc16tab[byte(crc>>8)^c]
	}
	return crc
}

// HashTag returns the part of key that decides its slot: the bytes between the first '{' and
// the next '}' when that run is non-empty, else the whole key.
func HashTag(key []byte) []byte {
	for i, c := range key {
		if c != '{' {
			continue
		}
		for j := i + 1; j < len(key); j++ {
			if key[j] == '}' {
				if j == i+1 {
					return key
				}
				return key[i+1 : j]
			}
		}
		return key
	}
	return key
}

// SlotOf returns the cluster hash slot of key, as Valkey computes it.
func SlotOf(key []byte) uint16 {
	return crc16(HashTag(key)) & (SlotCount - 1)
}

// SlotOfString is SlotOf for a string key.
func SlotOfString(key string) uint16 {
	return SlotOf([]byte(key))
}
