package integration

import "testing"

func TestSmokeGoRedis(t *testing.T) {
	p := startProxy(t, nil)
	c := p.client(t)
	ctx := ctxT(t)
	if err := c.Set(ctx, "smoke:a", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.MSet(ctx, "smoke:b", "2", "smoke:c", "3", "smoke:d", "4").Err(); err != nil {
		t.Fatal(err)
	}
	vals, err := c.MGet(ctx, "smoke:a", "smoke:b", "smoke:c", "smoke:d", "smoke:none").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := []any{"1", "2", "3", "4", nil}
	for i := range want {
		if vals[i] != want[i] {
			t.Fatalf("MGET[%d] = %v, want %v", i, vals[i], want[i])
		}
	}
	n, err := c.Del(ctx, "smoke:a", "smoke:b", "smoke:c", "smoke:d", "smoke:none").Result()
	if err != nil || n != 4 {
		t.Fatalf("DEL = %d, %v; want 4", n, err)
	}
}
