package iscsi

import (
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

// patternFile writes size random bytes to path and returns their md5 and
// sha512 in hex.
func patternFile(t testing.TB, path string, size int64, seed byte) (string, string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, s := md5.New(), sha512.New()
	r := io.LimitReader(rand.NewChaCha8([32]byte{seed}), size)
	if _, err := io.Copy(io.MultiWriter(f, m, s), r); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(m.Sum(nil)), hex.EncodeToString(s.Sum(nil))
}

// qemuCompare has qemu-img (libiscsi, an independent initiator) compare the
// LUN with a file.
func qemuCompare(t testing.TB, qemu, file string, tg harness.Target) {
	t.Helper()
	out, err := exec.Command(qemu, "compare", "-f", "raw", "-F", "raw", file, tg.URL()).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v: %s", file, tg.URL(), err, out)
	}
	if !strings.Contains(string(out), "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
}

// cutter cuts a target's connections once a copy's progress passes each of
// its marks, from its own goroutine so that the copy is not held up.
type cutter struct {
	d     *harness.Tgtd
	tid   int
	marks []int64
	wg    sync.WaitGroup
	mu    sync.Mutex
	cuts  int
}

func (c *cutter) progress(done int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.marks) == 0 || done < c.marks[0] {
		return
	}
	c.marks = c.marks[1:]
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		n := c.d.CutConnections(c.tid)
		c.mu.Lock()
		c.cuts += n
		c.mu.Unlock()
	}()
}

func (c *cutter) wait(t testing.TB) {
	t.Helper()
	c.wg.Wait()
	if c.cuts == 0 || len(c.marks) > 0 {
		t.Fatalf("%d connections cut, %d marks not reached", c.cuts, len(c.marks))
	}
}

// TestPeer1GiB moves 1 GiB of random data through the copy engine and the
// initiator, and has qemu-img (libiscsi) check it from the other side: what
// we write it reads back identical, what it writes we read back identical,
// also when the target cuts our connection in the middle of a write or a
// read (the session is reinstated and the commands in flight reissued).
func TestPeer1GiB(t *testing.T) {
	qemu := harness.Need(t, "qemu-img", "qemu-img (Debian qemu-utils and qemu-block-extra)")
	const size = 1 << 30
	d := harness.StartTgtd(t)
	src := filepath.Join(t.TempDir(), "src.img")
	wantMD5, wantSHA := patternFile(t, src, size, 9)
	ctx := context.Background()
	copier := &blockio.Copier{}

	fill := func(t *testing.T, tg harness.Target, progress func(int64)) *Device {
		t.Helper()
		dev := openT(t, cfgFor(tg, Auth{}), false)
		f, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		dg, err := copier.Fill(ctx, dev, f, jobs.FillRequest{HashAlgo: "sha512", Progress: progress})
		if err != nil {
			t.Fatal(err)
		}
		if dg.Bytes != size || dg.MD5 != wantMD5 || dg.HashValue != wantSHA {
			t.Fatalf("fill digest %+v", dg)
		}
		if err := dev.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		return dev
	}
	drain := func(t *testing.T, tg harness.Target, progress func(int64)) *Device {
		t.Helper()
		dev := openT(t, cfgFor(tg, Auth{}), true)
		dg, err := copier.Drain(ctx, dev, io.Discard, jobs.DrainRequest{Length: size, HashAlgo: "sha512", Progress: progress})
		if err != nil {
			t.Fatal(err)
		}
		if dg.Bytes != size || dg.MD5 != wantMD5 || dg.HashValue != wantSHA {
			t.Fatal("the data read back differs")
		}
		return dev
	}

	t.Run("initiator writes then qemu-img reads", func(t *testing.T) {
		tg := d.AddTarget(t, size, harness.TargetOptions{})
		fill(t, tg, nil).Close()
		qemuCompare(t, qemu, src, tg)
		d.RemoveTarget(t, tg)
	})
	t.Run("qemu-img writes then initiator reads", func(t *testing.T) {
		tg := d.AddTarget(t, size, harness.TargetOptions{})
		qemuConvert(t, qemu, src, tg, "writeback")
		drain(t, tg, nil)
		d.RemoveTarget(t, tg)
	})
	t.Run("connection cut mid-write and mid-read", func(t *testing.T) {
		tg := d.AddTarget(t, size, harness.TargetOptions{})
		cw := &cutter{d: d, tid: tg.TID, marks: []int64{256 << 20, 640 << 20}}
		dev := fill(t, tg, cw.progress)
		cw.wait(t)
		if n := dev.Session().Reconnects(); n == 0 {
			t.Fatal("the session never reconnected")
		}
		dev.Close()
		qemuCompare(t, qemu, src, tg)

		cr := &cutter{d: d, tid: tg.TID, marks: []int64{384 << 20}}
		dev = drain(t, tg, cr.progress)
		cr.wait(t)
		if n := dev.Session().Reconnects(); n == 0 {
			t.Fatal("the session never reconnected while reading")
		}
		d.RemoveTarget(t, tg)
	})
}
