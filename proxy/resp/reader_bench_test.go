package resp

import (
	"bytes"
	"testing"
)

// loopReader serves the same bytes forever.
type loopReader struct {
	data []byte
	off  int
}

func (l *loopReader) Read(p []byte) (int, error) {
	n := copy(p, l.data[l.off:])
	l.off = (l.off + n) % len(l.data)
	return n, nil
}

// BenchmarkReaderPipeline16 parses pipelines of 16 SET commands, as valkey-benchmark -P 16
// sends them; ns/op and allocs/op are per command.
func BenchmarkReaderPipeline16(b *testing.B) {
	var buf bytes.Buffer
	for range 16 {
		buf.WriteString("*3\r\n$3\r\nSET\r\n$16\r\nkey:000000012345\r\n$3\r\nxxx\r\n")
	}
	rd := NewReader(&loopReader{data: buf.Bytes()}, DefaultLimits)
	b.ReportAllocs()
	b.SetBytes(int64(buf.Len() / 16))
	b.ResetTimer()
	n := 0
	for n < b.N {
		cmds, err := rd.ReadBatch()
		if err != nil {
			b.Fatal(err)
		}
		n += len(cmds)
	}
}

// BenchmarkReaderSingle parses one GET per read, as at pipeline 1.
func BenchmarkReaderSingle(b *testing.B) {
	req := []byte("*2\r\n$3\r\nGET\r\n$16\r\nkey:000000012345\r\n")
	rd := NewReader(&loopReader{data: req}, DefaultLimits)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rd.ReadBatch(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReaderInline(b *testing.B) {
	rd := NewReader(&loopReader{data: []byte("SET key \"a value\"\r\n")}, DefaultLimits)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rd.ReadBatch(); err != nil {
			b.Fatal(err)
		}
	}
}
