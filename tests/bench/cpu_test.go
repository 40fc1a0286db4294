package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The kernel counts CPU time in /proc in USER_HZ ticks, 100 a second on
// every Linux architecture Go runs on.
const tick = 10 * time.Millisecond

// cpuTimes are the host's CPU times (all CPUs) from /proc/stat, in ticks.
type cpuTimes struct{ idle, total uint64 }

func readCPU() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var c cpuTimes
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		c.total += v
		if i == 3 || i == 4 { // idle, iowait
			c.idle += v
		}
	}
	return c
}

// busySince is the share of CPU time that was not idle since c0.
func (c cpuTimes) busySince(c0 cpuTimes) float64 {
	if c.total <= c0.total {
		return 0
	}
	return 1 - float64(c.idle-c0.idle)/float64(c.total-c0.total)
}

// seconds is the host's busy CPU time since c0, all CPUs together.
func (c cpuTimes) secondsSince(c0 cpuTimes) float64 {
	if c.total <= c0.total {
		return 0
	}
	return float64((c.total-c0.total)-(c.idle-c0.idle)) * tick.Seconds()
}

// procCPU is a process's user + system CPU time so far, 0 if it is gone.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: fields count from its ")".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	k, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(u+k) * tick
}

// commCPU sums procCPU over the processes named comm (every tgtd: the
// harness's and the Cinder lab's).
func commCPU(comm string) time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/comm")
	var t time.Duration
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != comm {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		t += procCPU(pid)
	}
	return t
}

// selfCPU is this process's user + system CPU time so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuUse is the CPU time, in seconds, that one timed copy cost: the whole
// host's (every process, kernel threads included), and that of the target
// (tgtd), the process that read the LUN (the worker, or qemu-img) and the
// client that wrote the file (this process, for a download over HTTP).
type cpuUse struct{ host, tgtd, copier, client float64 }

// cpuMark is where the counters stood when a copy began.
type cpuMark struct {
	host               cpuTimes
	tgtd, worker, self time.Duration
	pid                int
}

// markCPU starts counting; pid is the worker's (0: none).
func markCPU(pid int) cpuMark {
	m := cpuMark{host: readCPU(), tgtd: commCPU("tgtd"), self: selfCPU(), pid: pid}
	if pid != 0 {
		m.worker = procCPU(pid)
	}
	return m
}

// since is the CPU spent since m. The worker's time is the copier's;
// without a worker the copier's is left for the caller (a child's
// ProcessState).
func (m cpuMark) since() cpuUse {
	u := cpuUse{host: readCPU().secondsSince(m.host), tgtd: (commCPU("tgtd") - m.tgtd).Seconds()}
	if m.pid != 0 {
		u.copier = (procCPU(m.pid) - m.worker).Seconds()
		u.client = (selfCPU() - m.self).Seconds()
	}
	return u
}
