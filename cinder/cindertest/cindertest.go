// Package cindertest is the conformance suite of jobs.Volumes: the
// behaviour the runner relies on, run against the real Cinder adapter
// (tests/cinder) and the local look-alike (cinder/local) alike, so the
// look-alike cannot drift from Cinder.
package cindertest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// UnknownID is a well-formed volume and attachment id that does not exist.
const UnknownID = "00000000-0000-4000-8000-000000000000"

// Run checks v against the jobs.Volumes contract. It needs room for two
// volumes of 2 GiB and deletes what it creates. An adapter that retries
// refused attachments should be configured with short delays: one
// attachment is refused while another holds the volume.
func Run(t *testing.T, v jobs.Volumes) {
	t.Run("unknown", func(t *testing.T) { unknown(t, v) })
	t.Run("lifecycle", func(t *testing.T) { lifecycle(t, v) })
	t.Run("attachments", func(t *testing.T) { attachments(t, v) })
}

func context5m(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func unknown(t *testing.T, v jobs.Volumes) {
	ctx := context5m(t)
	for name, call := range map[string]func() error{
		"get":                 func() error { _, err := v.GetVolume(ctx, UnknownID); return err },
		"wait":                func() error { _, err := v.WaitVolume(ctx, UnknownID, "available"); return err },
		"extend":              func() error { return v.ExtendVolume(ctx, UnknownID, 2) },
		"set metadata":        func() error { return v.SetMetadata(ctx, UnknownID, map[string]string{"a": "b"}) },
		"set read-only":       func() error { return v.SetReadOnly(ctx, UnknownID, true) },
		"attach ro":           func() error { _, err := v.Attach(ctx, UnknownID, jobs.ReadOnly); return err },
		"attach rw":           func() error { _, err := v.Attach(ctx, UnknownID, jobs.ReadWrite); return err },
		"complete attachment": func() error { return v.CompleteAttachment(ctx, UnknownID) },
	} {
		if err := call(); !errors.Is(err, jobs.ErrNotFound) || !strings.Contains(err.Error(), UnknownID) {
			t.Errorf("%s: %v, want an error wrapping jobs.ErrNotFound that names it", name, err)
		}
	}
	if err := v.DeleteVolume(ctx, UnknownID); err != nil {
		t.Errorf("delete an unknown volume: %v", err)
	}
	if err := v.Detach(ctx, UnknownID); err != nil {
		t.Errorf("detach an unknown attachment: %v", err)
	}
	if found, err := v.FindVolumes(ctx, map[string]string{jobs.MetaJobID: "no-such-job"}); err != nil || len(found) != 0 {
		t.Errorf("find by an unknown job id: %v, %v", found, err)
	}
}

// create makes an available volume that is deleted at cleanup.
func create(t *testing.T, v jobs.Volumes, spec jobs.VolumeSpec) jobs.Volume {
	t.Helper()
	ctx := context5m(t)
	vol, err := v.CreateVolume(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.DeleteVolume(context.WithoutCancel(ctx), vol.ID) })
	got, err := v.WaitVolume(ctx, vol.ID, "available")
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// gone waits until a deleted volume has disappeared.
func gone(t *testing.T, v jobs.Volumes, id string) {
	t.Helper()
	if _, err := v.WaitVolume(context5m(t), id, "deleted"); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("volume %s after its deletion: %v, want not found", id, err)
	}
}

func lifecycle(t *testing.T, v jobs.Volumes) {
	ctx := context5m(t)
	job := fmt.Sprintf("conformance-%d", rand.Uint64())
	if _, err := v.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-empty", SizeGiB: 0}); !jobs.IsPermanent(err) {
		t.Errorf("a 0 GiB volume: %v, want a permanent refusal", err)
	}
	vol := create(t, v, jobs.VolumeSpec{Name: "image-" + job, SizeGiB: 1,
		Metadata: map[string]string{jobs.MetaJobID: job, "glance_image_id": job}})
	if vol.Name != "image-"+job || vol.SizeGiB != 1 || vol.ReadOnly || vol.Status != "available" ||
		vol.Metadata[jobs.MetaJobID] != job || len(vol.Metadata) != 2 || vol.Created.IsZero() || len(vol.Attachments) != 0 {
		t.Fatalf("new volume: %+v", vol)
	}
	found, err := v.FindVolumes(ctx, map[string]string{jobs.MetaJobID: job})
	if err != nil || len(found) != 1 || found[0].ID != vol.ID {
		t.Fatalf("find by job id: %+v, %v", found, err)
	}
	if found, err := v.FindVolumes(ctx, map[string]string{jobs.MetaJobID: job, "glance_image_id": "other"}); err != nil || len(found) != 0 {
		t.Fatalf("find with a pair that does not match: %+v, %v", found, err)
	}
	if err := v.SetMetadata(ctx, vol.ID, map[string]string{"image_size": "42", "glance_image_id": job + "-2"}); err != nil {
		t.Fatal(err)
	}
	if err := v.SetReadOnly(ctx, vol.ID, true); err != nil {
		t.Fatal(err)
	}
	got, err := v.GetVolume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.ReadOnly || got.Metadata["image_size"] != "42" || got.Metadata["glance_image_id"] != job+"-2" ||
		got.Metadata[jobs.MetaJobID] != job || len(got.Metadata) != 3 {
		t.Fatalf("after set metadata (merged) and read-only: %+v", got)
	}
	if _, err := v.Attach(ctx, vol.ID, jobs.ReadWrite); !jobs.IsPermanent(err) {
		t.Errorf("read-write attachment of a read-only volume: %v, want a permanent refusal", err)
	}
	if _, err := v.Attach(ctx, vol.ID, "wx"); !jobs.IsPermanent(err) {
		t.Errorf("an invalid mode: %v, want a permanent refusal", err)
	}
	if err := v.SetReadOnly(ctx, vol.ID, false); err != nil {
		t.Fatal(err)
	}
	if err := v.ExtendVolume(ctx, vol.ID, 2); err != nil {
		t.Fatal(err)
	}
	if err := v.ExtendVolume(ctx, vol.ID, 2); err != nil {
		t.Errorf("extend to the size it has: %v", err)
	}
	if got, err := v.GetVolume(ctx, vol.ID); err != nil || got.SizeGiB != 2 || got.ReadOnly || got.Status != "available" {
		t.Fatalf("after extend: %+v, %v", got, err)
	}
	if err := v.DeleteVolume(ctx, vol.ID); err != nil {
		t.Fatal(err)
	}
	if err := v.DeleteVolume(ctx, vol.ID); err != nil {
		t.Errorf("delete twice: %v", err)
	}
	gone(t, v, vol.ID)
}

func attachments(t *testing.T, v jobs.Volumes) {
	ctx := context5m(t)
	vol := create(t, v, jobs.VolumeSpec{Name: "image-attachments", SizeGiB: 1})
	att, err := v.Attach(ctx, vol.ID, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Detach(context.WithoutCancel(ctx), att.ID) })
	if att.ID == "" || att.VolumeID != vol.ID || att.Mode != jobs.ReadWrite || att.Connection.Driver == "" {
		t.Fatalf("attachment %+v", att)
	}
	// An attachment shows on its volume before it is complete: a worker
	// that crashed then must find it to clean it up.
	hasAttachment(t, v, vol.ID, att.ID)
	for k, x := range att.Connection.Data {
		if s, ok := x.(string); ok && len(s) > 3 && strings.Contains(att.Connection.String(), s) {
			t.Errorf("the connection's string form shows %s", k)
		}
	}
	_, err = v.Attach(ctx, vol.ID, jobs.ReadOnly)
	if err == nil || jobs.IsPermanent(err) || jobs.RetryDelay(err) <= 0 || !strings.Contains(err.Error(), vol.ID) {
		t.Errorf("a second attachment of a non-multiattach volume: %v, want a retryable refusal with a delay", err)
	}
	if err := v.DeleteVolume(ctx, vol.ID); err == nil || jobs.IsPermanent(err) {
		t.Errorf("delete an attached volume: %v, want a retryable refusal", err)
	}
	if err := v.CompleteAttachment(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := v.GetVolume(ctx, vol.ID); err != nil || got.Status != "in-use" {
		t.Fatalf("after complete: %+v, %v", got, err)
	}
	hasAttachment(t, v, vol.ID, att.ID)
	caps, err := v.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.OnlineExtend {
		if err := v.ExtendVolume(ctx, vol.ID, 2); err != nil {
			t.Fatalf("online extend: %v", err)
		}
		if got, err := v.GetVolume(ctx, vol.ID); err != nil || got.SizeGiB != 2 || got.Status != "in-use" {
			t.Fatalf("after online extend: %+v, %v", got, err)
		}
	}
	if err := v.Detach(ctx, att.ID); err != nil {
		t.Fatal(err)
	}
	if err := v.Detach(ctx, att.ID); err != nil {
		t.Errorf("detach twice: %v", err)
	}
	if got, err := v.WaitVolume(ctx, vol.ID, "available"); err != nil || len(got.Attachments) != 0 {
		t.Fatalf("after detach: %+v, %v", got, err)
	}
	ro, err := v.Attach(ctx, vol.ID, jobs.ReadOnly)
	if err != nil {
		t.Fatalf("attach again, read-only: %v", err)
	}
	if ro.Mode != jobs.ReadOnly {
		t.Errorf("mode %s, want ro", ro.Mode)
	}
	if err := v.Detach(ctx, ro.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := v.WaitVolume(ctx, vol.ID, "available"); err != nil {
		t.Fatal(err)
	}
	if err := v.DeleteVolume(ctx, vol.ID); err != nil {
		t.Fatal(err)
	}
	gone(t, v, vol.ID)
}

// hasAttachment checks that the volume lists exactly the attachment, through
// GetVolume and FindVolumes.
func hasAttachment(t *testing.T, v jobs.Volumes, volumeID, attachmentID string) {
	t.Helper()
	ctx := context5m(t)
	got, err := v.GetVolume(ctx, volumeID)
	if err != nil || len(got.Attachments) != 1 || got.Attachments[0].ID != attachmentID {
		t.Fatalf("volume %s: attachments %+v (%v), want just %s", volumeID, got.Attachments, err, attachmentID)
	}
	all, err := v.FindVolumes(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range all {
		if f.ID == volumeID && (len(f.Attachments) != 1 || f.Attachments[0].ID != attachmentID) {
			t.Fatalf("listed volume %s: attachments %+v, want just %s", volumeID, f.Attachments, attachmentID)
		}
	}
}
