package cinder_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/cinderport/cinderport/blockio/iscsi"
	"github.com/cinderport/cinderport/jobs"
)

// connect attaches Cinder's iSCSI connection info with the userspace
// initiator, as the worker does, checking first that it carries CHAP
// credentials. secret, when set, replaces the CHAP secret Cinder gave.
func connect(ctx context.Context, t *testing.T, initiator string, conn jobs.Connection, secret string) (jobs.Device, error) {
	t.Helper()
	if conn.Driver != "iscsi" {
		t.Fatalf("driver %q, want iscsi", conn.Driver)
	}
	if m, _ := conn.Data["auth_method"].(string); m != "CHAP" {
		t.Fatalf("auth_method %q, want CHAP", m)
	}
	if u, _ := conn.Data["auth_username"].(string); u == "" {
		t.Fatal("connection info has no auth_username")
	}
	if secret != "" {
		data := make(map[string]any, len(conn.Data))
		for k, v := range conn.Data {
			data[k] = v
		}
		data["auth_password"] = secret
		conn.Data = data
	}
	c, err := iscsi.NewConnector(iscsi.Config{InitiatorName: initiator})
	if err != nil {
		t.Fatal(err)
	}
	return c.Connect(ctx, conn, jobs.ReadWrite)
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	var k [32]byte
	k[0] = seed
	rand.NewChaCha8(k).Read(b)
	return b
}

// TestVolumeLifecycle walks a volume through everything the runner does
// with it, against the real Cinder, and checks that nothing is left.
func TestVolumeLifecycle(t *testing.T) {
	l := labFor(t)
	ctx := ctxFor(t)
	c := newClient(t, labConfig(l))
	var _ jobs.Volumes = c

	caps, err := c.Capabilities(ctx)
	if err != nil || !caps.OnlineExtend {
		t.Fatalf("capabilities %+v, %v: Zed's Cinder (3.70) extends online", caps, err)
	}
	jobID := fmt.Sprintf("job-%d", rand.Uint64())
	created, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-lifecycle", SizeGiB: 1,
		Metadata: map[string]string{jobs.MetaJobID: jobID, "glance_image_id": "lifecycle"}})
	if err != nil {
		t.Fatal(err)
	}
	id := created.ID
	t.Cleanup(func() { c.DeleteVolume(context.WithoutCancel(ctx), id) })
	v, err := c.WaitVolume(ctx, id, "available")
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeGiB != 1 || v.Name != "image-lifecycle" || v.Metadata[jobs.MetaJobID] != jobID || v.ReadOnly {
		t.Fatalf("volume %+v", v)
	}

	// Attach read-write with this host's connector: Cinder exports the
	// volume through tgtd with CHAP.
	att, err := c.Attach(ctx, id, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	if att.VolumeID != id || att.Mode != jobs.ReadWrite || att.ID == "" {
		t.Fatalf("attachment %+v", att)
	}
	if s := att.Connection.String(); bytes.Contains([]byte(s), []byte(att.Connection.Data["auth_password"].(string))) {
		t.Fatal("the connection's string form shows the CHAP secret")
	}
	if n := l.Targets(); n != 1 {
		t.Fatalf("tgtd exports %d targets after attach, want 1", n)
	}

	// An independent proof: the userspace initiator logs in with the CHAP
	// credentials and writes; the bytes land in the file behind the LUN.
	initiator := c.Connector().InitiatorName
	if dev, err := connect(ctx, t, initiator, att.Connection, "not-the-secret-cinder-gave"); err == nil {
		dev.Close()
		t.Fatal("Cinder's target let in a wrong CHAP secret")
	}
	dev, err := connect(ctx, t, initiator, att.Connection, "")
	if err != nil {
		t.Fatalf("log into Cinder's target: %v", err)
	}
	if dev.Size() != 1<<30 {
		t.Errorf("device size %d, want 1 GiB", dev.Size())
	}
	head, tail := pattern(64<<10, 1), pattern(8<<10, 2)
	tailAt := int64(1<<30 - len(tail))
	for _, w := range []struct {
		p   []byte
		off int64
	}{{head, 0}, {tail, tailAt}} {
		if _, err := dev.WriteAt(w.p, w.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(head))
	if _, err := dev.ReadAt(back, 0); err != nil || !bytes.Equal(back, head) {
		t.Fatalf("read back through iSCSI: %v, equal %t", err, bytes.Equal(back, head))
	}
	if err := c.CompleteAttachment(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	v, err = c.GetVolume(ctx, id)
	if err != nil || v.Status != "in-use" || len(v.Attachments) != 1 || v.Attachments[0].Host != c.Connector().Host {
		t.Errorf("after complete: %+v, %v; want in-use, attached to %s", v, err, c.Connector().Host)
	}
	if err := dev.Close(); err != nil {
		t.Error(err)
	}
	f, err := os.ReadFile(l.VolumeFile(id))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f[:len(head)], head) || !bytes.Equal(f[tailAt:], tail) {
		t.Fatal("the volume's backing file does not hold what was written")
	}

	if err := c.Detach(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(ctx, att.ID); err != nil {
		t.Errorf("detaching twice: %v", err)
	}
	if _, err := c.WaitVolume(ctx, id, "available"); err != nil {
		t.Fatal(err)
	}
	if n := l.Targets(); n != 0 {
		t.Errorf("tgtd still exports %d targets after detach", n)
	}

	// Extend (offline), metadata, read-only flag, adoption lookup.
	if err := c.ExtendVolume(ctx, id, 2); err != nil {
		t.Fatal(err)
	}
	if err := c.ExtendVolume(ctx, id, 2); err != nil {
		t.Errorf("extending to the same size again: %v", err)
	}
	md := map[string]string{"image_size": "1073741824", "cinderport_os_hash_algo": "sha512"}
	if err := c.SetMetadata(ctx, id, md); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadOnly(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	v, err = c.GetVolume(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeGiB != 2 || !v.ReadOnly || v.Metadata["image_size"] != "1073741824" ||
		v.Metadata[jobs.MetaJobID] != jobID || v.Metadata["glance_image_id"] != "lifecycle" {
		t.Fatalf("after extend, metadata and read-only: %+v", v)
	}
	if _, ok := v.Metadata["readonly"]; ok {
		t.Error("the read-only flag shows as metadata")
	}
	found, err := c.FindVolumes(ctx, map[string]string{jobs.MetaJobID: jobID})
	if err != nil || len(found) != 1 || found[0].ID != id {
		t.Fatalf("find by job id: %+v, %v", found, err)
	}
	if found, err := c.FindVolumes(ctx, map[string]string{jobs.MetaJobID: jobID + "-other"}); err != nil || len(found) != 0 {
		t.Fatalf("find by another job id: %+v, %v", found, err)
	}
	if att, err := c.Attach(ctx, id, jobs.ReadWrite); !jobs.IsPermanent(err) {
		if err == nil {
			c.Detach(ctx, att.ID)
		}
		t.Errorf("read-write attachment of a read-only volume: %v, want a permanent error", err)
	}

	if err := c.DeleteVolume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, id); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
	l.WaitNoLeaks(t)
}

// TestOnlineExtend grows an attached (in-use) volume. Cinder's tgt helper
// re-creates the target to show the new size ("this will cause IO
// disruption", says Cinder), which drops the sessions open at that moment:
// a new session sees the new capacity.
func TestOnlineExtend(t *testing.T) {
	l := labFor(t)
	ctx := ctxFor(t)
	c := newClient(t, labConfig(l))
	v, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-online-extend", SizeGiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.DeleteVolume(context.WithoutCancel(ctx), v.ID) })
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	att, err := c.Attach(ctx, v.ID, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Detach(context.WithoutCancel(ctx), att.ID) })
	initiator := c.Connector().InitiatorName
	dev, err := connect(ctx, t, initiator, att.Connection, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CompleteAttachment(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.ExtendVolume(ctx, v.ID, 3); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.GetVolume(ctx, v.ID); got.SizeGiB != 3 || got.Status != "in-use" {
		t.Fatalf("after online extend: %+v", got)
	}
	if err := dev.(jobs.Refresher).Refresh(ctx); err != nil {
		t.Logf("the session open during the extend did not survive the target's re-creation: %v", err)
	}
	dev.Close()
	dev, err = connect(ctx, t, initiator, att.Connection, "")
	if err != nil {
		t.Fatalf("log in after the extend: %v", err)
	}
	defer dev.Close()
	if dev.Size() != 3<<30 {
		t.Fatalf("the device shows %d bytes after an online extend to 3 GiB", dev.Size())
	}
	end := pattern(4096, 3)
	if _, err := dev.WriteAt(end, 3<<30-4096); err != nil {
		t.Fatalf("write at the new end: %v", err)
	}
	if err := dev.Close(); err != nil {
		t.Error(err)
	}
	if err := c.Detach(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	l.WaitNoLeaks(t)
}
