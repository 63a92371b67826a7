package cluster

import (
	"maps"
	"net"
	"slices"
	"testing"
)

func TestClusterNodesPrimaries(t *testing.T) {
	out := "" +
		"a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n" +
		"b2 127.0.0.1:7002@17002,host-b master - 0 1 2 connected 5461-10922\n" + // hostname too
		"c3 127.0.0.1:7007@17007 master - 0 1 7 connected\n" + // slotless: a new shard
		"d4 127.0.0.1:7004@17004 slave a1 0 1 1 connected\n" +
		"e5 127.0.0.1:7005@17005 master,fail - 0 1 5 disconnected 10923-16383\n" +
		"f6 127.0.0.1:7006@17006 master,fail? - 0 1 6 connected\n" +
		"g7 :0@0 master,noaddr - 0 1 0 disconnected\n" +
		"h8 127.0.0.1:7008@17008 handshake - 0 0 0 connected\n" +
		"\n"
	got := slices.Sorted(maps.Keys(clusterNodesPrimaries(out)))
	want := []string{"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7007", "host-b:7002"}
	if !slices.Equal(got, want) {
		t.Fatalf("clusterNodesPrimaries = %v; want %v", got, want)
	}
}

// FuzzClusterNodesPrimaries: any CLUSTER NODES text parses without a panic, and every address
// found has a port.
func FuzzClusterNodesPrimaries(f *testing.F) {
	f.Add("a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460\n")
	f.Add("b2 127.0.0.1:7002@17002,host-b master - 0 1 2 connected\n")
	f.Add("c3 :0@0 master,noaddr - 0 1 0 disconnected\nd4 [::1]:7004@17004,h master - 0 0 4 connected\n")
	f.Fuzz(func(t *testing.T, out string) {
		for addr := range clusterNodesPrimaries(out) {
			if _, _, err := net.SplitHostPort(addr); err != nil {
				t.Fatalf("address %q is not host:port: %v", addr, err)
			}
		}
	})
}
