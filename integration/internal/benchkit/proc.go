package benchkit

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ClockTicks is the kernel's clock ticks per second (getconf CLK_TCK, 100 when it does not
// say), the unit of the CPU times in /proc: a reading is exact to 1/ClockTicks() s.
func ClockTicks() float64 { return clkTck() }

var clkTck = sync.OnceValue(func() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
})

func ticks(n uint64) time.Duration {
	return time.Duration(float64(n) / clkTck() * float64(time.Second))
}

// ProcCPU is the CPU time (utime+stime, every thread, live and exited) of process pid, from
// /proc/PID/stat; ok is false when it cannot be read.
func ProcCPU(pid int) (cpu time.Duration, ok bool) {
	return statCPU("/proc/" + strconv.Itoa(pid) + "/stat")
}

// SelfCPU is the CPU time of this process, as ProcCPU.
func SelfCPU() (cpu time.Duration, ok bool) {
	return statCPU("/proc/self/stat")
}

func statCPU(path string) (time.Duration, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	// The command name (field 2) may hold spaces: fields count from after its closing ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return ticks(ut + st), true
}

// ProcIO is the count of read-family (read, readv, pread; not recvmsg or epoll) and
// write-family (write, writev, pwrite; not sendmsg) system calls of process pid, from
// /proc/PID/io (syscr, syscw); ok is false when they cannot be read.
func ProcIO(pid int) (syscr, syscw uint64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0, 0, false
	}
	var gotR, gotW bool
	for _, line := range strings.Split(string(b), "\n") {
		k, v, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "syscr":
			syscr, gotR = n, true
		case "syscw":
			syscw, gotW = n, true
		}
	}
	return syscr, syscw, gotR && gotW
}

// MachineBusy is the busy time of every CPU together, from the first line of /proc/stat;
// ok is false when it cannot be read.
func MachineBusy() (busy time.Duration, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, false
	}
	var n uint64
	for i, v := range f[1:] {
		x, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, false
		}
		// user nice system idle iowait irq softirq steal guest guest_nice: guest time is
		// already in user and nice; idle and iowait are not busy.
		if i == 3 || i == 4 || i >= 8 {
			continue
		}
		n += x
	}
	return ticks(n), true
}

// MicrosPer is the CPU time from before to after in µs per operation, for n operations; NaN
// when the readings are not both good (ok false) or n is not positive.
func MicrosPer(before, after time.Duration, ok bool, n int64) float64 {
	if !ok || n <= 0 {
		return math.NaN()
	}
	return float64(after-before) / float64(time.Microsecond) / float64(n)
}

// CountPer is the growth of a counter from before to after per operation, for n operations;
// NaN when the readings are not both good (ok false) or n is not positive.
func CountPer(before, after uint64, ok bool, n int64) float64 {
	if !ok || n <= 0 {
		return math.NaN()
	}
	return float64(after-before) / float64(n)
}
