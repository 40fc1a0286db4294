package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// TestUploadClearsStaleAttachments: an earlier attempt created the volume
// and attached it, then died before journaling the attachment. The retry
// adopts the volume, deletes the stale attachment and completes.
func TestUploadClearsStaleAttachments(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // without the cleanup, the wait for "available" hangs
	defer cancel()
	g := newRig(t)
	job := g.job
	job.ID = "stale-1"
	job.Normalize()
	v, err := g.vols.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-" + job.ImageID, SizeGiB: 1,
		Metadata: map[string]string{jobs.MetaJobID: job.ID, jobs.MetaImageID: job.ImageID, jobs.MetaStore: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.vols.Attach(ctx, v.ID, jobs.ReadWrite); err != nil {
		t.Fatal(err)
	}
	res, err := g.runner(t, nil).Run(ctx, job, 2)
	if err != nil {
		t.Fatalf("retry over a stale attachment: %v", err)
	}
	if res.VolumeID != v.ID || res.Size != job.Size {
		t.Errorf("result %+v: want the adopted volume %s and %d bytes", res, v.ID, job.Size)
	}
	if n := g.vols.Attachments(); n != 0 {
		t.Errorf("%d attachments left", n)
	}
	if all, _ := g.vols.FindVolumes(ctx, map[string]string{jobs.MetaJobID: job.ID}); len(all) != 1 {
		t.Errorf("%d volumes for the job, want 1", len(all))
	}
}
