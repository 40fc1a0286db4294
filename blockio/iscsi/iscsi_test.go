package iscsi

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

const initiator = "iqn.2026-11.io.cinderport:test-initiator"

func cfgFor(tg harness.Target, auth Auth) Config {
	return Config{InitiatorName: initiator, Portals: []string{tg.Portal}, Target: tg.IQN, LUN: tg.LUN, Auth: auth,
		Log: zerolog.New(zerolog.NewTestWriter(nil)).Level(zerolog.Disabled)}
}

func randomBuf(n int, seed uint64) []byte {
	b := make([]byte, n)
	var k [32]byte
	k[0], k[1] = byte(seed), byte(seed>>8)
	rand.NewChaCha8(k).Read(b)
	return b
}

func TestWriteReadBackNoAuth(t *testing.T) {
	d := harness.StartTgtd(t)
	tg := d.AddTarget(t, 64<<20, harness.TargetOptions{})
	ctx := context.Background()
	dev, err := Open(ctx, cfgFor(tg, Auth{}), false)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if dev.Size() != 64<<20 || dev.BlockSize() != 512 {
		t.Fatalf("size %d block %d", dev.Size(), dev.BlockSize())
	}
	data := randomBuf(3<<20+512, 1)
	if _, err := dev.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(data))
	if _, err := dev.ReadAt(back, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("read back differs")
	}
	f, _ := os.ReadFile(tg.Path)
	if !bytes.Equal(f[4096:4096+len(data)], data) {
		t.Fatal("backing file differs")
	}
	if _, err := dev.WriteAt(data[:100], 0); !errors.Is(err, errUnaligned) {
		t.Errorf("unaligned write: %v", err)
	}
}

func TestCHAP(t *testing.T) {
	d := harness.StartTgtd(t)
	ctx := context.Background()
	tg := d.AddTarget(t, 8<<20, harness.TargetOptions{User: "alice", Secret: "alice-secret-1234"})
	dev, err := Open(ctx, cfgFor(tg, Auth{User: "alice", Secret: "alice-secret-1234"}), false)
	if err != nil {
		t.Fatalf("good CHAP: %v", err)
	}
	dev.Close()
	_, err = Open(ctx, cfgFor(tg, Auth{User: "alice", Secret: "wrong-secret-99"}), false)
	if !errors.Is(err, ErrAuth) || !jobs.IsPermanent(err) {
		t.Fatalf("wrong secret: %v, want a permanent ErrAuth", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte("wrong-secret")) {
		t.Error("the error shows the secret")
	}
	_, err = Open(ctx, cfgFor(tg, Auth{}), false)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("no credentials on a CHAP target: %v", err)
	}
	// Mutual CHAP.
	tm := d.AddTarget(t, 8<<20, harness.TargetOptions{User: "bob", Secret: "bob-secret-12345", TargetUser: "tgt", TargetSecret: "target-secret-123"})
	dev, err = Open(ctx, cfgFor(tm, Auth{User: "bob", Secret: "bob-secret-12345", TargetUser: "tgt", TargetSecret: "target-secret-123"}), false)
	if err != nil {
		t.Fatalf("mutual CHAP: %v", err)
	}
	dev.Close()
	_, err = Open(ctx, cfgFor(tm, Auth{User: "bob", Secret: "bob-secret-12345", TargetUser: "tgt", TargetSecret: "not-the-target-secret"}), false)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("mutual CHAP with a target that does not know our secret: %v", err)
	}
}

func TestReconnectsMidWrite(t *testing.T) {
	d := harness.StartTgtd(t)
	const size = 256 << 20
	tg := d.AddTarget(t, size, harness.TargetOptions{})
	ctx := context.Background()
	cfg := cfgFor(tg, Auth{})
	dev, err := Open(ctx, cfg, false)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	data := randomBuf(size, 7)
	done := make(chan error, 1)
	go func() {
		var err error
		for off := 0; off < size && err == nil; off += 8 << 20 {
			_, err = dev.WriteAt(data[off:off+8<<20], int64(off))
		}
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if n := d.CutConnections(tg.TID); n == 0 {
		t.Log("no connection to cut (write already finished?)")
	}
	if err := <-done; err != nil {
		t.Fatalf("write across a cut connection: %v", err)
	}
	dev.Flush(ctx)
	if dev.Session().Reconnects() == 0 {
		t.Error("the session never reconnected")
	}
	f, _ := os.ReadFile(tg.Path)
	if !bytes.Equal(f, data) {
		t.Fatal("data differs after the reconnect")
	}
}
