// Package benchkit holds what the benchmark commands under integration/cmd share: reading
// process and machine CPU from /proc, starting and stopping the proxy under test, and the
// small helpers of their markdown reports (machine description, proxy build, number
// formatting, medians, shell quoting).
//
// It is Linux-only in practice: without /proc the readers report failure and the reports say
// "n/a" or "unknown".
package benchkit

import (
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Main runs a benchmark command: run gets the command-line arguments and a context cancelled
// by SIGINT or SIGTERM; an error is printed as "name: error" and exits with status 1.
func Main(name string, run func(ctx context.Context, argv []string) error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// SplitList splits a comma-separated list, trimming spaces and dropping empty items.
func SplitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// MachineInfo describes the machine a benchmark runs on.
type MachineInfo struct {
	CPUs    int    // runtime.NumCPU, what nproc says
	Model   string // the first "model name" of /proc/cpuinfo
	Kernel  string // /proc/sys/kernel/osrelease
	LoadAvg string // /proc/loadavg when Machine was called
}

// Machine reads the machine's description now; a value it cannot read is "unknown".
func Machine() MachineInfo {
	return MachineInfo{
		CPUs:    runtime.NumCPU(),
		Model:   cpuModel(),
		Kernel:  readTrim("/proc/sys/kernel/osrelease"),
		LoadAvg: LoadAvg(),
	}
}

// LoadAvg is the content of /proc/loadavg, "unknown" when it cannot be read.
func LoadAvg() string { return readTrim("/proc/loadavg") }

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// ProxyBuild describes the binary bin for a report: the Go version it was built with, its VCS
// revision (and whether the working tree was modified, and the commit time) when recorded, and
// the first 8 bytes of its SHA-256.
func ProxyBuild(bin string) string {
	s := "build info unavailable"
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		s = bi.GoVersion
		var rev, mod, at string
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision":
				rev = kv.Value
			case "vcs.modified":
				mod = kv.Value
			case "vcs.time":
				at = kv.Value
			}
		}
		if rev != "" {
			s += ", revision " + rev[:min(12, len(rev))]
			if mod == "true" {
				s += " (modified working tree)"
			}
			if at != "" {
				s += " of " + at
			}
		}
	}
	if b, err := os.ReadFile(bin); err == nil {
		sum := sha256.Sum256(b)
		s += ", sha256 " + hex.EncodeToString(sum[:8])
	}
	return s
}

// Median is the median of xs, ignoring NaNs; NaN when nothing is left.
func Median(xs []float64) float64 {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// Num formats x with prec decimals, or as "n/a" when it is NaN or infinite (not measured).
func Num(x float64, prec int) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "n/a"
	}
	return strconv.FormatFloat(x, 'f', prec, 64)
}

// ShellQuote joins args into a command line a POSIX shell reads back as the same arguments,
// quoting only those that need it.
func ShellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\$`*?[]{}();&|<>!#~") {
			out[i] = a
		} else {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

// Tail is s without surrounding space, cut to its last 400 bytes: for quoting a command's
// output in an error.
func Tail(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 400 {
		s = "..." + s[len(s)-400:]
	}
	return s
}

// WriteReport prints the report to stdout and, when path is not empty, also writes it there
// and says so through logf.
func WriteReport(report, path string, logf func(format string, args ...any)) error {
	fmt.Print(report)
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return err
	}
	logf("report written to %s", path)
	return nil
}
