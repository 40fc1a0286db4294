package local

import (
	"bytes"
	"context"
	"errors"
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
