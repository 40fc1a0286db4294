package jobs_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
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

// TestJobsLeaveOtherVolumesAlone: export and delete jobs, and downloads,
// touch only volumes of their own store — not a stock Glance image volume
// (no cinderport_store), not another store's.
func TestJobsLeaveOtherVolumesAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newRig(t)
	r := g.runner(t, nil)
	for name, md := range map[string]map[string]string{
		"a stock Glance volume": {jobs.MetaImageID: "img", jobs.MetaImageSize: "10"},
		"another store's":       {jobs.MetaImageID: "img", jobs.MetaImageSize: "10", jobs.MetaStore: "fast"},
	} {
		v, err := g.vols.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-img", SizeGiB: 1, Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
		del := jobs.Job{Version: 1, ID: "del-" + v.ID[:8], Kind: jobs.KindDelete, VolumeID: v.ID}
		if _, err := r.Run(ctx, del, 1); !jobs.IsPermanent(err) {
			t.Errorf("delete of %s volume: %v, want a permanent refusal", name, err)
		}
		exp := jobs.Job{Version: 1, ID: "exp-" + v.ID[:8], Kind: jobs.KindExport, VolumeID: v.ID, Target: &jobs.Object{Bucket: "stage", Key: "out"}}
		if _, err := r.Run(ctx, exp, 1); !jobs.IsPermanent(err) {
			t.Errorf("export of %s volume: %v, want a permanent refusal", name, err)
		}
		if _, err := g.vols.GetVolume(ctx, v.ID); err != nil {
			t.Errorf("%s volume is gone: %v", name, err)
		}
		d := &jobs.Downloads{Volumes: g.vols}
		if _, err := d.Stat(ctx, v.ID); !errors.Is(err, jobs.ErrNotFound) {
			t.Errorf("download of %s volume: %v, want not found", name, err)
		}
	}
}

// uploaded runs the rig's upload job and returns the rig, its runner and
// the result.
func uploaded(ctx context.Context, t *testing.T) (*rig, *jobs.Runner, jobs.Result) {
	t.Helper()
	g := newRig(t)
	r := g.runner(t, nil)
	up, err := r.Run(ctx, g.job, 1)
	if err != nil {
		t.Fatal(err)
	}
	return g, r, up
}

// TestExportEvictsAnIdleDownloadAttachment: a download left the volume
// attached (lingering for the next reader); an export on the same worker
// releases that attachment instead of waiting for it, since the volume
// takes one attachment at a time.
func TestExportEvictsAnIdleDownloadAttachment(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, r, up := uploaded(ctx, t)
	d := &jobs.Downloads{Volumes: g.vols, Connector: r.Connector, Copier: r.Copier, Linger: time.Hour}
	defer d.Close()
	info, err := d.Stat(ctx, up.VolumeID)
	if err != nil {
		t.Fatal(err)
	}
	img, err := d.Open(ctx, info)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := img.WriteRange(ctx, io.Discard, 0, img.Size); err != nil {
		t.Fatal(err)
	}
	img.Close()
	if d.Attached() != 1 {
		t.Fatalf("%d download attachments lingering, want 1", d.Attached())
	}
	r.Evict = d.Evict
	exp := jobs.Job{Version: 1, ID: "export-1", Kind: jobs.KindExport, VolumeID: up.VolumeID,
		Target: &jobs.Object{Bucket: "stage", Key: "exported"}}
	res, err := r.Run(ctx, exp, 1)
	if err != nil {
		t.Fatalf("export with a download attachment lingering: %v", err)
	}
	if res.Checksum != up.Checksum || d.Attached() != 0 || g.vols.Attachments() != 0 {
		t.Errorf("export %+v (upload %s); %d download and %d volume attachments left", res, up.Checksum, d.Attached(), g.vols.Attachments())
	}
}

// failFinish fails the first write of an image's metadata (a Cinder outage
// after the copy), as a retryable error.
type failFinish struct {
	jobs.Volumes
	failed bool
}

func (f *failFinish) SetMetadata(ctx context.Context, id string, md map[string]string) error {
	if _, final := md[jobs.MetaChecksum]; final && !f.failed {
		f.failed = true
		return errors.New("cinder-api is away")
	}
	return f.Volumes.SetMetadata(ctx, id, md)
}

// TestUploadRetriedAfterItsCopy: an attempt copies the whole image, then
// fails on the volume service before the image is finished. The retry
// resumes from the checkpoint at the end of the image — which must hold the
// hash states — and completes with the image's hashes.
func TestUploadRetriedAfterItsCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newRig(t)
	r := g.runner(t, nil)
	want, err := g.runner(t, nil).Run(ctx, jobs.Job{Version: 1, ID: "reference", Kind: jobs.KindUpload, ImageID: "ref",
		Source: g.job.Source, Size: g.job.Size}, 1)
	if err != nil {
		t.Fatal(err)
	}
	f := &failFinish{Volumes: g.vols}
	r.Volumes = f
	if _, err := r.Run(ctx, g.job, 1); err == nil || jobs.IsPermanent(err) || !f.failed {
		t.Fatalf("first attempt: %v, want a retryable failure while finishing", err)
	}
	res, err := r.Run(ctx, g.job, 2)
	if err != nil {
		t.Fatalf("retry after the copy: %v", err)
	}
	if res.Size != want.Size || res.Checksum != want.Checksum || res.OSHashValue != want.OSHashValue {
		t.Errorf("retry after the copy: %+v, want the image's size and hashes %+v", res, want)
	}
}

// countingJournal counts the journal's commits.
type countingJournal struct {
	jobs.Journal
	saves int
}

func (c *countingJournal) Save(ctx context.Context, rec jobs.Record) (jobs.Record, error) {
	c.saves++
	return c.Journal.Save(ctx, rec)
}

// TestSmallUploadCommitsThreeTimes: an upload smaller than the checkpoint
// interval journals what recovery needs — the volume's id, the attachment's
// id, the outcome — and nothing else: steps are not journaled, nor a
// checkpoint no retry would use. Each commit is two fsyncs, and small jobs
// are bound by them.
func TestSmallUploadCommitsThreeTimes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newRig(t)
	r := g.runner(t, nil)
	cj := &countingJournal{Journal: r.Journal}
	r.Journal = cj
	if _, err := r.Run(ctx, g.job, 1); err != nil {
		t.Fatal(err)
	}
	if cj.saves != 3 {
		t.Errorf("%d journal commits for a small upload, want 3 (volume, attachment, outcome)", cj.saves)
	}
	rec, err := cj.Load(ctx, g.job.ID)
	if err != nil || rec.Outcome != "completed" || rec.AttachmentID != "" || rec.Step != jobs.StepDone {
		t.Errorf("journal record %+v, %v: want completed, detached, done", rec, err)
	}
}

// slowCompletion holds every attachment completion until released, and
// records the order of completions and detaches.
type slowCompletion struct {
	jobs.Volumes
	release chan struct{}
	mu      sync.Mutex
	calls   []string
}

func (s *slowCompletion) CompleteAttachment(ctx context.Context, id string) error {
	<-s.release
	s.mu.Lock()
	s.calls = append(s.calls, "complete "+id)
	s.mu.Unlock()
	return s.Volumes.CompleteAttachment(ctx, id)
}

func (s *slowCompletion) Detach(ctx context.Context, id string) error {
	s.mu.Lock()
	s.calls = append(s.calls, "detach "+id)
	s.mu.Unlock()
	return s.Volumes.Detach(ctx, id)
}

// TestDownloadReadsBeforeTheAttachmentCompletes: a download's first bytes
// do not wait for Cinder to record the attachment as complete, and its
// detach waits for that completion, not the other way round.
func TestDownloadReadsBeforeTheAttachmentCompletes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, r, up := uploaded(ctx, t)
	vols := &slowCompletion{Volumes: g.vols, release: make(chan struct{})}
	d := &jobs.Downloads{Volumes: vols, Connector: r.Connector, Copier: r.Copier, Linger: time.Millisecond}
	info, err := d.Stat(ctx, up.VolumeID)
	if err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	var img *jobs.Image
	go func() {
		var err error
		img, err = d.Open(ctx, info)
		opened <- err
	}()
	select {
	case err := <-opened:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(vols.release) // let it go, then fail
		<-opened
		t.Fatal("Open waited for the attachment's completion")
	}
	var got bytes.Buffer
	if _, err := img.WriteRange(ctx, &got, 0, img.Size); err != nil {
		t.Fatal(err)
	}
	if sum := fmt.Sprintf("%x", md5.Sum(got.Bytes())); sum != up.Checksum {
		t.Errorf("read back md5 %s, want %s", sum, up.Checksum)
	}
	img.Close()
	time.Sleep(50 * time.Millisecond) // the linger ends; the detach waits for the completion
	vols.mu.Lock()
	early := slices.Clone(vols.calls)
	vols.mu.Unlock()
	if len(early) != 0 {
		t.Errorf("before the completion returned: %v, want nothing", early)
	}
	close(vols.release)
	d.Close()
	deadline := time.Now().Add(10 * time.Second)
	for d.Attached() > 0 || len(vols.snapshot()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after the completion: %v, %d attached", vols.snapshot(), d.Attached())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := vols.snapshot(); !strings.HasPrefix(c[0], "complete ") || !strings.HasPrefix(c[1], "detach ") {
		t.Errorf("calls %v, want the completion, then the detach", c)
	}
}

func (s *slowCompletion) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}
