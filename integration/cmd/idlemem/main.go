// Command idlemem measures what idle client connections cost the proxy: it opens N
// connections, has each run one SET and one GET, leaves them open and idle, and reports the
// growth of the proxy's resident memory per connection (VmRSS from /proc).
//
//	go run ./integration/cmd/idlemem -addr 127.0.0.1:6380 -pid $(pgrep -n valkey-lock-proxy) -n 9000
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:6380", "proxy address")
	pid := flag.Int("pid", 0, "the proxy's process id")
	n := flag.Int("n", 9000, "connections to open (stay below limits.max-clients and ulimit -n)")
	settle := flag.Duration("settle", 2*time.Second, "wait before reading memory")
	flag.Parse()
	if *pid == 0 {
		fmt.Fprintln(os.Stderr, "idlemem: -pid is required")
		os.Exit(2)
	}
	before, err := rssKiB(*pid)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlemem:", err)
		os.Exit(1)
	}
	req := []byte("*3\r\n$3\r\nSET\r\n$12\r\nidlemem:key0\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$12\r\nidlemem:key0\r\n")
	conns := make([]net.Conn, 0, *n)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for i := 0; i < *n; i++ {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "idlemem: connection %d: %v\n", i, err)
			break
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		rd := bufio.NewReader(c)
		if _, err := c.Write(req); err == nil {
			for range 3 { // +OK, $5, value
				if _, err = rd.ReadString('\n'); err != nil {
					break
				}
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "idlemem: connection %d: %v\n", i, err)
			_ = c.Close()
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(*settle)
	after, err := rssKiB(*pid)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idlemem:", err)
		os.Exit(1)
	}
	fmt.Printf("%d idle connections: proxy VmRSS %d KiB -> %d KiB, %.1f KiB per connection\n",
		len(conns), before, after, float64(after-before)/float64(max(len(conns), 1)))
}
