package cluster

import "sync"

const tagAlphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

var (
	slotTagsOnce sync.Once
	slotTags     [SlotCount]string
)

// SlotTag returns a short fixed string (without braces) whose slot is slot: the shortest
// string over [0-9a-zA-Z] with that slot, first in length-then-alphabet order. Wrapped in
// braces it pins any key to the slot. The table is computed once, on first use.
func SlotTag(slot uint16) string {
	slotTagsOnce.Do(buildSlotTags)
	return slotTags[slot&(SlotCount-1)]
}

func buildSlotTags() {
	left := SlotCount
	buf := make([]byte, 0, 4)
	for length := 1; left > 0; length++ {
		idx := make([]int, length)
		for {
			buf = buf[:0]
			for _, i := range idx {
				buf = append(buf, tagAlphabet[i])
			}
			s := crc16(buf) & (SlotCount - 1)
			if slotTags[s] == "" {
				slotTags[s] = string(buf)
				left--
			}
			// Next string of this length.
			k := length - 1
			for k >= 0 {
				idx[k]++
				if idx[k] < len(tagAlphabet) {
					break
				}
				idx[k] = 0
				k--
			}
			if k < 0 || left == 0 {
				break
			}
		}
	}
}
