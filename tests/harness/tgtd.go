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
// on loopback with its own portal and control port.
type Tgtd struct {
	Portal  string // host:port
	control int
	t       testing.TB
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	nextTID int
	dir     string // backing files and the log
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

// StartTgtd runs tgtd in the foreground on 127.0.0.1; it is stopped at
// cleanup.
func StartTgtd(t testing.TB) *Tgtd {
	t.Helper()
	return StartTgtdAt(t, "127.0.0.1")
}

// StartTgtdAt runs tgtd with its portal on host, a loopback address
// (tgtd never redirects an initiator to its own address: a redirect test
// needs a second tgtd on another one, such as 127.0.0.2).
func StartTgtdAt(t testing.TB, host string) *Tgtd {
	t.Helper()
	bin := Need(t, "tgtd", "tgtd (Debian package tgt)")
	Need(t, "tgtadm", "tgtadm (Debian package tgt)")
	// tgtadm splits --backing-store at commas, which test names may hold:
	// the LUNs live in a directory of our own naming.
	dir, err := os.MkdirTemp("", "cinderport-tgtd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := startTgtd(bin, dir, host)
	if err != nil {
		t.Fatal(err)
	}
	d.t = t
	t.Cleanup(d.Stop)
	return d
}

// startTgtd runs tgtd with its log and LUNs in dir, on a free portal on
// host and a random control port; the caller stops it. Adm needs a test:
// it is set by StartTgtdAt only.
func startTgtd(bin, dir, host string) (*Tgtd, error) {
	d := &Tgtd{nextTID: 1, dir: dir}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		d.control = 1000 + rand.IntN(30000)
		d.Portal = host + ":" + strconv.Itoa(port)
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

// Adm runs tgtadm against this tgtd and fails the test that started it on
// error.
func (d *Tgtd) Adm(args ...string) string {
	d.t.Helper()
	return d.admT(d.t, args...)
}

func (d *Tgtd) admT(t testing.TB, args ...string) string {
	t.Helper()
	out, err := d.adm(args...)
	if err != nil {
		t.Fatal(err)
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
	path := filepath.Join(d.dir, fmt.Sprintf("lun%d.img", tid))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	iqn := fmt.Sprintf("iqn.2026-11.io.cinderport.test:t%d-%d", tid, rand.IntN(1e6))
	tids := strconv.Itoa(tid)
	d.admT(t, "--mode", "target", "--op", "new", "--tid", tids, "--targetname", iqn)
	d.admT(t, "--mode", "logicalunit", "--op", "new", "--tid", tids, "--lun", "1", "--backing-store", path)
	d.admT(t, "--mode", "target", "--op", "bind", "--tid", tids, "--initiator-address", "ALL")
	if o.User != "" {
		d.adm("--mode", "account", "--op", "new", "--user", o.User, "--password", o.Secret)
		d.admT(t, "--mode", "account", "--op", "bind", "--tid", tids, "--user", o.User)
	}
	if o.TargetUser != "" {
		d.adm("--mode", "account", "--op", "new", "--user", o.TargetUser, "--password", o.TargetSecret)
		d.admT(t, "--mode", "account", "--op", "bind", "--tid", tids, "--user", o.TargetUser, "--outgoing")
	}
	for k, v := range o.Params {
		d.admT(t, "--mode", "target", "--op", "update", "--tid", tids, "--name", k, "--value", v)
	}
	return Target{TID: tid, IQN: iqn, LUN: 1, Portal: d.Portal, Path: path}
}

// URL names the LUN as qemu-img and libiscsi's tools want it.
func (tg Target) URL() string { return fmt.Sprintf("iscsi://%s/%s/%d", tg.Portal, tg.IQN, tg.LUN) }

// RemoveTarget deletes the target (ending its sessions) and its backing
// file, so that long runs do not accumulate gigabytes of LUNs.
func (d *Tgtd) RemoveTarget(t testing.TB, tg Target) {
	t.Helper()
	d.admT(t, "--mode", "target", "--op", "delete", "--force", "--tid", strconv.Itoa(tg.TID))
	if err := os.Remove(tg.Path); err != nil {
		t.Error(err)
	}
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

// TargetNames lists the targets' IQNs.
func (d *Tgtd) TargetNames() []string {
	out, _ := d.adm("--mode", "target", "--op", "show")
	var names []string
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "Target "); ok {
			if _, name, ok := strings.Cut(rest, ": "); ok {
				names = append(names, strings.TrimSpace(name))
			}
		}
	}
	return names
}

func (d *Tgtd) kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// Stop deletes every target and ends tgtd (it ignores SIGTERM, and
// refuses to shut down while targets exist).
func (d *Tgtd) Stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.adm("--mode", "sys", "--op", "update", "--name", "State", "-v", "offline")
	for _, tid := range d.tids() {
		d.adm("--mode", "target", "--op", "delete", "--force", "--tid", tid)
	}
	d.adm("--mode", "system", "--op", "delete")
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.kill()
	}
}

// tids lists the targets' ids.
func (d *Tgtd) tids() []string {
	out, _ := d.adm("--mode", "target", "--op", "show")
	var ids []string
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "Target "); ok {
			if id, _, ok := strings.Cut(rest, ":"); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}
