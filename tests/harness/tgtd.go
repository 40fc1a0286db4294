package harness

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tgtd is a tgtd (Debian tgt: a real userspace iSCSI target) run for a test
// on 127.0.0.1 with its own portal and control port.
type Tgtd struct {
	Portal  string // 127.0.0.1:port
	control int
	t       testing.TB
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	nextTID int
}

// Target is a target with one LUN backed by a sparse file.
type Target struct {
	TID    int
	IQN    string
	LUN    int
	Portal string
	Path   string
}

// TargetOptions configure AddTarget.
type TargetOptions struct {
	// CHAP: the initiator's user and secret (incoming), and for mutual CHAP
	// the target's (outgoing).
	User, Secret             string
	TargetUser, TargetSecret string
	// Params are target parameters set with `tgtadm --op update`
	// (MaxRecvDataSegmentLength, InitialR2T, FirstBurstLength, …).
	Params map[string]string
}

// StartTgtd runs tgtd in the foreground; it is stopped at cleanup.
func StartTgtd(t testing.TB) *Tgtd {
	t.Helper()
	bin := Need(t, "tgtd", "tgtd (Debian package tgt)")
	Need(t, "tgtadm", "tgtadm (Debian package tgt)")
	d, err := startTgtd(bin, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d.t = t
	t.Cleanup(d.Stop)
	return d
}

// startTgtd runs tgtd with its log in dir, on a free portal and a random
// control port; the caller stops it. Adm needs a test: it is set by
// StartTgtd only.
func startTgtd(bin, dir string) (*Tgtd, error) {
	d := &Tgtd{nextTID: 1}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		d.control = 1000 + rand.IntN(30000)
		d.Portal = "127.0.0.1:" + strconv.Itoa(port)
		d.cmd = exec.Command(bin, "-f", "-C", strconv.Itoa(d.control), "--iscsi", "portal="+d.Portal)
		logf, err := os.CreateTemp(dir, "tgtd-*.log")
		if err != nil {
			return nil, err
		}
		// A file, not a pipe: Wait must not wait for tgtd's descendants.
		d.cmd.Stdout, d.cmd.Stderr = logf, logf
		// tgtd ignores SIGTERM: if the test binary dies without stopping
		// it, the kernel kills it.
		d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = d.cmd.Start()
		logf.Close()
		if err != nil {
			return nil, fmt.Errorf("start tgtd: %w", err)
		}
		d.done = make(chan struct{})
		go func() { d.cmd.Wait(); close(d.done) }()
		if d.waitReady() {
			return d, nil
		}
		d.kill()
		if attempt == 3 {
			b, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("tgtd did not start: %s", b)
		}
	}
}

func (d *Tgtd) waitReady() bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			return false
		default:
		}
		if _, err := d.adm("--mode", "system", "--op", "show"); err == nil {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func (d *Tgtd) adm(args ...string) (string, error) {
	all := append([]string{"-C", strconv.Itoa(d.control), "--lld", "iscsi"}, args...)
	out, err := exec.Command("tgtadm", all...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("tgtadm %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Adm runs tgtadm against this tgtd and fails the test on error.
func (d *Tgtd) Adm(args ...string) string {
	d.t.Helper()
	out, err := d.adm(args...)
	if err != nil {
		d.t.Fatal(err)
	}
	return out
}

// AddTarget creates a target with a LUN 1 backed by a sparse file of size
// bytes, open to every initiator.
func (d *Tgtd) AddTarget(t testing.TB, size int64, o TargetOptions) Target {
	t.Helper()
	d.mu.Lock()
	tid := d.nextTID
	d.nextTID++
	d.mu.Unlock()
	path := filepath.Join(t.TempDir(), fmt.Sprintf("lun%d.img", tid))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	iqn := fmt.Sprintf("iqn.2026-11.io.cinderport.test:t%d-%d", tid, rand.IntN(1e6))
	tids := strconv.Itoa(tid)
	d.Adm("--mode", "target", "--op", "new", "--tid", tids, "--targetname", iqn)
	d.Adm("--mode", "logicalunit", "--op", "new", "--tid", tids, "--lun", "1", "--backing-store", path)
	d.Adm("--mode", "target", "--op", "bind", "--tid", tids, "--initiator-address", "ALL")
	if o.User != "" {
		d.adm("--mode", "account", "--op", "new", "--user", o.User, "--password", o.Secret)
		d.Adm("--mode", "account", "--op", "bind", "--tid", tids, "--user", o.User)
	}
	if o.TargetUser != "" {
		d.adm("--mode", "account", "--op", "new", "--user", o.TargetUser, "--password", o.TargetSecret)
		d.Adm("--mode", "account", "--op", "bind", "--tid", tids, "--user", o.TargetUser, "--outgoing")
	}
	for k, v := range o.Params {
		d.Adm("--mode", "target", "--op", "update", "--tid", tids, "--name", k, "--value", v)
	}
	return Target{TID: tid, IQN: iqn, LUN: 1, Portal: d.Portal, Path: path}
}

// Connections lists the ids of the sessions' connections on a target, as
// "sid cid" pairs.
func (d *Tgtd) Connections(tid int) [][2]string {
	out, _ := d.adm("--mode", "conn", "--op", "show", "--tid", strconv.Itoa(tid))
	var conns [][2]string
	var sid string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "Session: "); ok {
			sid = v
		}
		if v, ok := strings.CutPrefix(line, "Connection: "); ok {
			conns = append(conns, [2]string{sid, v})
		}
	}
	return conns
}

// CutConnections closes every connection to the target, as a network
// failure or a target restart would.
func (d *Tgtd) CutConnections(tid int) int {
	n := 0
	for _, c := range d.Connections(tid) {
		if _, err := d.adm("--mode", "conn", "--op", "delete", "--tid", strconv.Itoa(tid), "--sid", c[0], "--cid", c[1]); err == nil {
			n++
		}
	}
	return n
}

// Targets counts the targets, for leak checks.
func (d *Tgtd) Targets() int {
	out, _ := d.adm("--mode", "target", "--op", "show")
	return strings.Count(out, "Target ")
}

func (d *Tgtd) kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// Stop deletes everything and ends tgtd (it ignores SIGTERM).
func (d *Tgtd) Stop() {
	select {
	case <-d.done:
		return
	default:
	}
	exec.Command("tgtadm", "-C", strconv.Itoa(d.control), "--op", "update", "--mode", "sys", "--name", "State", "-v", "offline").Run()
	exec.Command("tgtadm", "-C", strconv.Itoa(d.control), "--op", "delete", "--mode", "system").Run()
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.kill()
	}
}
