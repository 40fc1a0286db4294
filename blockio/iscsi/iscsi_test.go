package iscsi

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

const initiator = "iqn.2026-11.io.cinderport:test-initiator"

func testLog(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

func cfgFor(tg harness.Target, auth Auth) Config {
	return Config{InitiatorName: initiator, Paths: []Path{{Portal: tg.Portal, Target: tg.IQN, LUN: tg.LUN}}, Auth: auth,
		Log: zerolog.Nop()}
}

func randomBuf(n int, seed uint64) []byte {
	b := make([]byte, n)
	var k [32]byte
	k[0], k[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(k).Read(b)
	return b
}

func openT(t *testing.T, cfg Config, readOnly bool) *Device {
	t.Helper()
	dev, err := Open(context.Background(), cfg, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

func TestWriteReadBack(t *testing.T) {
	d := harness.StartTgtd(t)
	for _, c := range []struct {
		name    string
		digests bool
		params  map[string]string
		want    params
	}{
		{"tgtd defaults", false, nil, params{sendDSL: 8192, maxBurst: 262144, firstBurst: 65536, initialR2T: true, immediateData: true}},
		{"CRC32C digests", true, map[string]string{"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"},
			params{headerDigest: true, dataDigest: true, sendDSL: 8192, maxBurst: 262144, firstBurst: 65536, initialR2T: true, immediateData: true}},
		{"tuned target", false, tunedTarget, params{sendDSL: 262144, maxBurst: 262144, firstBurst: 262144, immediateData: true}},
		{"unsolicited Data-Out", false, map[string]string{"InitialR2T": "No", "FirstBurstLength": "262144"},
			params{sendDSL: 8192, maxBurst: 262144, firstBurst: 262144, immediateData: true}},
		{"no immediate data, short bursts", false, map[string]string{"ImmediateData": "No", "MaxBurstLength": "65536"},
			params{sendDSL: 8192, maxBurst: 65536, firstBurst: 65536, initialR2T: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tg := d.AddTarget(t, 64<<20, harness.TargetOptions{Params: c.params})
			ctx := context.Background()
			cfg := cfgFor(tg, Auth{})
			cfg.Digests = c.digests
			cfg.Log = testLog(t)
			dev := openT(t, cfg, false)
			if dev.Size() != 64<<20 || dev.BlockSize() != 512 {
				t.Fatalf("size %d, block size %d", dev.Size(), dev.BlockSize())
			}
			c.want.recvDSL = 256 << 10
			if p := dev.Session().negotiated(); p != c.want {
				t.Fatalf("negotiated %+v, want %+v", p, c.want)
			}
			vendor, product, err := dev.Session().Inquiry(ctx)
			if err != nil || vendor == "" || product == "" {
				t.Fatalf("INQUIRY: %q %q %v", vendor, product, err)
			}
			// Odd sizes: a single command, several in flight, a partial last one.
			data := randomBuf(3<<20+512, 1)
			if _, err := dev.WriteAt(data, 4096); err != nil {
				t.Fatal(err)
			}
			if _, err := dev.WriteAt(data[:512], dev.Size()-512); err != nil {
				t.Fatal(err)
			}
			// One 1 MiB command: several R2T bursts, or unsolicited data and then R2Ts.
			if err := dev.Session().Write16(ctx, data[:1<<20], 16<<10, 512); err != nil {
				t.Fatal(err)
			}
			if err := dev.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			big := make([]byte, 1<<20)
			if err := dev.Session().Read16(ctx, big, 16<<10, 512); err != nil || !bytes.Equal(big, data[:1<<20]) {
				t.Fatalf("1 MiB command read back: %v", err)
			}
			back := make([]byte, len(data))
			if _, err := dev.ReadAt(back, 4096); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, data) {
				t.Fatal("read back differs")
			}
			f, err := os.ReadFile(tg.Path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(f[4096:4096+len(data)], data) || !bytes.Equal(f[len(f)-512:], data[:512]) || !bytes.Equal(f[8<<20:9<<20], data[:1<<20]) {
				t.Fatal("the backing file differs")
			}
			if _, err := dev.WriteAt(data[:100], 0); !errors.Is(err, ErrUnaligned) {
				t.Errorf("unaligned write: %v", err)
			}
			if _, err := dev.ReadAt(back[:1024], dev.Size()-512); err == nil {
				t.Error("a read past the end succeeded")
			}
			if err := dev.Refresh(ctx); err != nil || dev.Size() != 64<<20 {
				t.Errorf("refresh: %v, size %d", err, dev.Size())
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	d := harness.StartTgtd(t)
	tg := d.AddTarget(t, 8<<20, harness.TargetOptions{})
	dev := openT(t, cfgFor(tg, Auth{}), true)
	if _, err := dev.WriteAt(make([]byte, 512), 0); !jobs.IsPermanent(err) {
		t.Fatalf("write to a read-only device: %v, want a permanent error", err)
	}
	if _, err := dev.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCHAP(t *testing.T) {
	d := harness.StartTgtd(t)
	ctx := context.Background()
	one := d.AddTarget(t, 8<<20, harness.TargetOptions{User: "alice", Secret: "alice-secret-1234"})
	mutual := d.AddTarget(t, 8<<20, harness.TargetOptions{User: "bob", Secret: "bob-secret-12345", TargetUser: "tgt", TargetSecret: "target-secret-123"})
	bob := Auth{User: "bob", Secret: "bob-secret-12345", TargetUser: "tgt", TargetSecret: "target-secret-123"}
	wrongTarget := bob
	wrongTarget.TargetSecret = "not-the-target-secret"
	for _, c := range []struct {
		name string
		tg   harness.Target
		auth Auth
		ok   bool
	}{
		{"one-way", one, Auth{User: "alice", Secret: "alice-secret-1234"}, true},
		{"wrong secret", one, Auth{User: "alice", Secret: "wrong-secret-99"}, false},
		{"unknown user", one, Auth{User: "mallory", Secret: "alice-secret-1234"}, false},
		{"no credentials", one, Auth{}, false},
		{"mutual", mutual, bob, true},
		{"mutual, target does not know the target secret", mutual, wrongTarget, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev, err := Open(ctx, cfgFor(c.tg, c.auth), false)
			if c.ok {
				if err != nil {
					t.Fatal(err)
				}
				dev.Close()
				return
			}
			if err == nil {
				dev.Close()
				t.Fatal("login succeeded")
			}
			if !errors.Is(err, ErrAuth) || !jobs.IsPermanent(err) {
				t.Fatalf("%v: want a permanent ErrAuth", err)
			}
			for _, secret := range []string{c.auth.Secret, c.auth.TargetSecret} {
				if secret != "" && strings.Contains(err.Error(), secret) {
					t.Fatalf("the error shows a secret: %v", err)
				}
			}
			t.Log(err)
		})
	}
	// A target without CHAP accepts CHAP offers with AuthMethod=None,
	// unless we insist.
	open := d.AddTarget(t, 8<<20, harness.TargetOptions{})
	cfg := cfgFor(open, Auth{User: "alice", Secret: "alice-secret-1234"})
	dev, err := Open(ctx, cfg, false)
	if err != nil {
		t.Fatalf("CHAP offered to a target without CHAP: %v", err)
	}
	dev.Close()
	cfg.RequireAuth = true
	if _, err := Open(ctx, cfg, false); !errors.Is(err, ErrAuth) {
		t.Fatalf("RequireAuth with a target without CHAP: %v", err)
	}
}

// TestPaths: a dead portal is skipped, an unknown target is reported, a
// redirect is followed to another tgtd.
func TestPaths(t *testing.T) {
	a, b := harness.StartTgtd(t), harness.StartTgtdAt(t, "127.0.0.2")
	ctx := context.Background()
	real := b.AddTarget(t, 8<<20, harness.TargetOptions{})
	dead := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))

	cfg := cfgFor(real, Auth{})
	cfg.Paths = append([]Path{{Portal: dead, Target: real.IQN, LUN: 1}}, cfg.Paths...)
	dev := openT(t, cfg, false)
	if p := dev.Session().Path(); p.Portal != real.Portal {
		t.Errorf("connected through %v", p)
	}

	_, err := Open(ctx, Config{InitiatorName: initiator, Paths: []Path{{Portal: real.Portal, Target: "iqn.2026-11.nowhere:x", LUN: 1}}}, false)
	if !errors.Is(err, ErrNoTarget) || !jobs.IsPermanent(err) {
		t.Fatalf("unknown target: %v", err)
	}

	// tgtd a redirects the target to tgtd b (status 0x0101 with TargetAddress).
	host, port, _ := strings.Cut(b.Portal, ":")
	a.Adm("--mode", "target", "--op", "new", "--tid", "7", "--targetname", real.IQN)
	a.Adm("--mode", "target", "--op", "bind", "--tid", "7", "--initiator-address", "ALL")
	a.Adm("--mode", "target", "--op", "update", "--tid", "7", "--name", "RedirectAddress", "--value", host)
	a.Adm("--mode", "target", "--op", "update", "--tid", "7", "--name", "RedirectPort", "--value", port)
	a.Adm("--mode", "target", "--op", "update", "--tid", "7", "--name", "RedirectReason", "--value", "Temporary")
	cfg = cfgFor(real, Auth{})
	cfg.Paths[0].Portal = a.Portal
	dev = openT(t, cfg, false)
	if p := dev.Session().Path(); p.Portal != b.Portal {
		t.Errorf("after the redirect, connected through %v", p)
	}
	if _, err := dev.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

// TestTargetPings: tgtd pings every second and drops a connection whose
// pings go unanswered three times; an idle session must survive.
func TestTargetPings(t *testing.T) {
	d := harness.StartTgtd(t)
	tg := d.AddTarget(t, 8<<20, harness.TargetOptions{})
	tid := strconv.Itoa(tg.TID)
	d.Adm("--mode", "target", "--op", "update", "--tid", tid, "--name", "nop_interval=1", "--value", "1")
	d.Adm("--mode", "target", "--op", "update", "--tid", tid, "--name", "nop_count=2", "--value", "2")
	cfg := cfgFor(tg, Auth{})
	cfg.NOPInterval = time.Minute // we stay silent: only the target's pings flow
	dev := openT(t, cfg, false)
	time.Sleep(4500 * time.Millisecond)
	if _, err := dev.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if n := dev.Session().Reconnects(); n != 0 {
		t.Fatalf("the session reconnected %d times: target pings went unanswered", n)
	}
}

func TestDiscovery(t *testing.T) {
	d := harness.StartTgtd(t)
	a := d.AddTarget(t, 8<<20, harness.TargetOptions{})
	b := d.AddTarget(t, 8<<20, harness.TargetOptions{})
	got, err := Discover(context.Background(), Config{InitiatorName: initiator}, d.Portal)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string][]string{}
	for _, tg := range got {
		names[tg.Name] = tg.Portals
	}
	for _, tg := range []harness.Target{a, b} {
		if ps := names[tg.IQN]; len(ps) == 0 || ps[0] != d.Portal {
			t.Errorf("target %s: portals %v", tg.IQN, ps)
		}
	}
}

// TestTargetRecreatedMidWrite: Cinder's tgt helper extends an in-use volume
// by deleting its target and creating it again. The initiator retries a
// login that finds no target until the target is back, reissues what was
// in flight, and reports the failure and the recovery to OnEvent.
func TestTargetRecreatedMidWrite(t *testing.T) {
	d := harness.StartTgtd(t)
	const size = 64 << 20
	tg := d.AddTarget(t, size, harness.TargetOptions{})
	ctx := context.Background()
	cfg := cfgFor(tg, Auth{})
	var events sync.Map
	cfg.OnEvent = func(e string) { n, _ := events.LoadOrStore(e, new(atomic.Int32)); n.(*atomic.Int32).Add(1) }
	dev, err := Open(ctx, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	data := randomBuf(size, 17)
	if _, err := dev.WriteAt(data[:size/2], 0); err != nil {
		t.Fatal(err)
	}
	tid := strconv.Itoa(tg.TID)
	d.Adm("--mode", "target", "--op", "delete", "--force", "--tid", tid)
	done := make(chan error, 1)
	go func() {
		_, err := dev.WriteAt(data[size/2:], size/2)
		done <- err
	}()
	time.Sleep(1500 * time.Millisecond) // the initiator keeps finding no target
	d.Adm("--mode", "target", "--op", "new", "--tid", tid, "--targetname", tg.IQN)
	d.Adm("--mode", "logicalunit", "--op", "new", "--tid", tid, "--lun", "1", "--backing-store", tg.Path)
	d.Adm("--mode", "target", "--op", "bind", "--tid", tid, "--initiator-address", "ALL")
	if err := <-done; err != nil {
		t.Fatalf("write across the target's re-creation: %v", err)
	}
	if err := dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, size)
	if _, err := dev.ReadAt(back, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("data differs after the target came back")
	}
	if n, ok := events.Load("reconnect"); !ok || n.(*atomic.Int32).Load() == 0 {
		t.Error("OnEvent heard of no reconnect")
	}
	if _, ok := events.Load("lost"); ok {
		t.Error("OnEvent heard the session was lost, but it recovered")
	}
}
