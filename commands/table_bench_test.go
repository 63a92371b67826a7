package commands

import "testing"

func benchTable() *Table {
	t := &Table{cmds: map[string]*Spec{}}
	for _, s := range []*Spec{
		{Name: "get", Arity: 2, simple: true, first: 1, step: 1, ReadOnly: true},
		{Name: "set", Arity: -3, simple: true, first: 1, step: 1},
		{Name: "mget", Arity: -2, simple: true, first: 1, last: -1, step: 1, ReadOnly: true},
		{Name: "eval", Arity: -3, keySpecs: []keySpec{{bsType: 'i', bsIndex: 2, fkType: 'n', keyNumIdx: 0, firstKey: 1, keyNumStep: 1}}},
	} {
		t.cmds[s.Name] = s
	}
	return t
}

// BenchmarkLookupAndKeys is the per-command work of routing: find the spec, check arity, and
// find the key positions.
func BenchmarkLookupAndKeys(b *testing.B) {
	t := benchTable()
	args := [][]byte{[]byte("SET"), []byte("key:000000012345"), []byte("xxx")}
	var keys []int
	b.ReportAllocs()
	for b.Loop() {
		s, e := t.Lookup(args)
		if s == nil {
			b.Fatal(e)
		}
		keys = s.Keys(args, keys[:0])
	}
}

func BenchmarkLookupMovableKeys(b *testing.B) {
	t := benchTable()
	args := [][]byte{[]byte("EVAL"), []byte("return 1"), []byte("2"), []byte("{a}1"), []byte("{a}2"), []byte("x")}
	var keys []int
	b.ReportAllocs()
	for b.Loop() {
		s, _ := t.Lookup(args)
		keys = s.Keys(args, keys[:0])
	}
}

func BenchmarkLockKey(b *testing.B) {
	var dst []byte
	r := []byte("orders:42")
	b.ReportAllocs()
	for b.Loop() {
		dst = LockKey(dst[:0], "lock:", r)
	}
}

func BenchmarkParseLock(b *testing.B) {
	args := split("LOCK orders:42 PX 10000 WAIT 100 FENCE")
	b.ReportAllocs()
	for b.Loop() {
		if _, e := ParseLock(args, testLimits); e != "" {
			b.Fatal(e)
		}
	}
}
