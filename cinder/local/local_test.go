package local

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/jobs"
)

func TestLifecycleAndRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v, err := Open(dir, Options{MaxGiB: 3})
	if err != nil {
		t.Fatal(err)
	}
	vol, err := v.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-x", SizeGiB: 1, Metadata: map[string]string{"k": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitVolume(ctx, vol.ID, "available"); err != nil {
		t.Fatal(err)
	}
	att, err := v.Attach(ctx, vol.ID, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Attach(ctx, vol.ID, jobs.ReadOnly); err == nil || jobs.IsPermanent(err) {
		t.Errorf("second attachment of a non-multiattach volume: %v, want a retryable refusal", err)
	}
	if err := v.DeleteVolume(ctx, vol.ID); err == nil {
		t.Error("deleted an attached volume")
	}
	dev, err := blockio.FileConnector{}.Connect(ctx, att.Connection, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.CompleteAttachment(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := v.GetVolume(ctx, vol.ID); got.Status != "in-use" {
		t.Errorf("status %s, want in-use", got.Status)
	}
	if _, err := dev.WriteAt(bytes.Repeat([]byte{7}, 4096), jobs.GiB-4096); err != nil {
		t.Fatal(err)
	}
	if err := v.ExtendVolume(ctx, vol.ID, 2); err != nil {
		t.Fatal(err)
	}
	dev.(jobs.Refresher).Refresh(ctx)
	if dev.Size() != 2*jobs.GiB {
		t.Errorf("size after online extend: %d", dev.Size())
	}
	dev.Close()
	if err := v.Detach(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if err := v.Detach(ctx, att.ID); err != nil {
		t.Errorf("detaching twice: %v", err)
	}
	v.SetMetadata(ctx, vol.ID, map[string]string{"j": "2"})
	v.SetReadOnly(ctx, vol.ID, true)
	if _, err := v.Attach(ctx, vol.ID, jobs.ReadWrite); !jobs.IsPermanent(err) {
		t.Errorf("rw attachment of a read-only volume: %v", err)
	}
	// Quota: 2 GiB used of 3.
	if _, err := v.CreateVolume(ctx, jobs.VolumeSpec{SizeGiB: 2}); !jobs.IsPermanent(err) {
		t.Errorf("over quota: %v, want permanent", err)
	}
	// State survives a restart.
	v2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := v2.GetVolume(ctx, vol.ID)
	if err != nil || got.Metadata["k"] != "1" || got.Metadata["j"] != "2" || !got.ReadOnly || got.SizeGiB != 2 || got.Status != "available" {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	found, _ := v2.FindVolumes(ctx, map[string]string{"k": "1"})
	if len(found) != 1 {
		t.Errorf("find: %d", len(found))
	}
	if err := v2.DeleteVolume(ctx, vol.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := v2.GetVolume(ctx, vol.ID); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("after delete: %v", err)
	}
	if err := v2.DeleteVolume(ctx, vol.ID); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
}

// TestSidecarsAreRewrittenInPlace: updates overwrite a volume's sidecar in
// the same inode (a rename per update allocated an inode each time, which
// ext4 without a journal makes slow), a record that shrinks leaves only
// padding behind, one larger than a page still goes through a rename, and
// every state survives a reopen.
func TestSidecarsAreRewrittenInPlace(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	v, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	vol, err := v.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-x", SizeGiB: 1, Metadata: map[string]string{"job": "a", "long": strings.Repeat("x", 300)}})
	if err != nil {
		t.Fatal(err)
	}
	sidecar := filepath.Join(dir, vol.ID+".json")
	inode := func() uint64 {
		t.Helper()
		fi, err := os.Stat(sidecar)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	first := inode()
	// Each update is checked: the old file still exists when a temporary
	// one is created, so a rename always brings another inode.
	same := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if got := inode(); got != first {
			t.Errorf("%s: sidecar inode changed from %d to %d, want it rewritten in place", what, first, got)
		}
	}
	att, err := v.Attach(ctx, vol.ID, jobs.ReadWrite)
	same("attach", err)
	same("complete attachment", v.CompleteAttachment(ctx, att.ID))
	same("detach", v.Detach(ctx, att.ID))
	same("shrinking metadata", v.SetMetadata(ctx, vol.ID, map[string]string{"long": "short"}))
	reopen := func() jobs.Volume {
		t.Helper()
		w, err := Open(dir, Options{})
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		got, err := w.GetVolume(ctx, vol.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := reopen(); got.Metadata["long"] != "short" || got.Status != "available" || len(got.Attachments) != 0 {
		t.Errorf("after reopen: %+v, want the shrunk metadata, available, no attachments", got)
	}
	if err := v.SetMetadata(ctx, vol.ID, map[string]string{"long": strings.Repeat("y", 5000)}); err != nil {
		t.Fatal(err)
	}
	if got := reopen(); len(got.Metadata["long"]) != 5000 {
		t.Errorf("a record larger than a page: metadata of %d bytes after reopen, want 5000", len(got.Metadata["long"]))
	}
	if err := v.SetReadOnly(ctx, vol.ID, true); err != nil {
		t.Fatal(err)
	}
	if got := reopen(); !got.ReadOnly {
		t.Error("read-only flag lost after reopen")
	}
}

// TestFindVolumesFollowsMetadata: the metadata index follows changes and
// deletions.
func TestFindVolumesFollowsMetadata(t *testing.T) {
	ctx := context.Background()
	v, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, job := range []string{"a", "b", "c"} {
		vol, err := v.CreateVolume(ctx, jobs.VolumeSpec{Name: job, SizeGiB: 1, Metadata: map[string]string{"job": job, "store": "s"}})
		if err != nil {
			t.Fatal(err)
		}
		ids[job] = vol.ID
	}
	find := func(md map[string]string) int {
		t.Helper()
		got, err := v.FindVolumes(ctx, md)
		if err != nil {
			t.Fatal(err)
		}
		return len(got)
	}
	if n := find(map[string]string{"job": "a"}); n != 1 {
		t.Errorf("job=a: %d volumes, want 1", n)
	}
	if n := find(map[string]string{"store": "s"}); n != 3 {
		t.Errorf("store=s: %d volumes, want 3", n)
	}
	if n := find(nil); n != 3 {
		t.Errorf("no filter: %d volumes, want 3", n)
	}
	if err := v.SetMetadata(ctx, ids["a"], map[string]string{"job": "z"}); err != nil {
		t.Fatal(err)
	}
	if n := find(map[string]string{"job": "a"}); n != 0 {
		t.Errorf("job=a after it became z: %d volumes, want 0", n)
	}
	if n := find(map[string]string{"job": "z", "store": "s"}); n != 1 {
		t.Errorf("job=z,store=s: %d volumes, want 1", n)
	}
	if err := v.DeleteVolume(ctx, ids["b"]); err != nil {
		t.Fatal(err)
	}
	if n := find(map[string]string{"store": "s"}); n != 2 {
		t.Errorf("store=s after a delete: %d volumes, want 2", n)
	}
	if n := find(map[string]string{"job": "b"}); n != 0 {
		t.Errorf("job=b after its delete: %d volumes, want 0", n)
	}
}
