package jobs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/cinder/local"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/staging/s3local"
	"github.com/cinderport/cinderport/state"
)

// rig is a runner on the embedded default's adapters: local volumes, the
// in-process S3 endpoint, a bbolt journal.
type rig struct {
	vols    *local.Volumes
	staging *staging.Client
	job     jobs.Job
}

func newRig(t *testing.T) *rig {
	t.Helper()
	srv, err := s3local.New(t.TempDir(), "access", "secret-key-of-the-test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	sc, err := staging.New(staging.Config{Endpoint: srv.Addr(), AccessKey: "access", SecretKey: "secret-key-of-the-test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := sc.EnsureBucket(ctx, "stage"); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 3<<20+512)
	rand.NewChaCha8([32]byte{7}).Read(data)
	src := jobs.Object{Bucket: "stage", Key: "img"}
	if _, err := sc.Put(ctx, src, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	vols, err := local.Open(t.TempDir(), local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{vols: vols, staging: sc,
		job: jobs.Job{Version: 1, ID: "job-1", Kind: jobs.KindUpload, ImageID: "img-1", Source: &src, Size: int64(len(data))}}
}

// runner is one worker's runner over the rig's shared volume service, with
// its own journal.
func (r *rig) runner(t *testing.T, events jobs.Events) *jobs.Runner {
	t.Helper()
	j, err := state.Open(filepath.Join(t.TempDir(), "journal.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return &jobs.Runner{Volumes: r.vols, Connector: blockio.Router{"local": blockio.FileConnector{}}, Staging: r.staging,
		Journal: j, Copier: &blockio.Copier{}, Events: events, Log: zerolog.Nop()}
}

// lease is a hand-made jobs.Lease: onHold decides what a renewal finds.
type lease struct {
	token  string
	onHold func() error
}

func (l *lease) Token() string { return l.token }
func (l *lease) Valid() bool   { return true }
func (l *lease) Hold(ctx context.Context) error {
	if l.onHold != nil {
		return l.onHold()
	}
	return nil
}
func (l *lease) Finish(ctx context.Context, res *jobs.Result) error { return nil }
func (l *lease) Close()                                             {}

func TestALostLeaseDeletesOnlyAVolumeNobodyAdopted(t *testing.T) {
	for _, adopted := range []bool{false, true} {
		t.Run(fmt.Sprintf("adopted=%v", adopted), func(t *testing.T) {
			r := newRig(t)
			ctx := context.Background()
			l := &lease{token: "w1/1.1/aa"}
			l.onHold = func() error {
				if adopted { // another worker stamped the volume meanwhile
					vs, _ := r.vols.FindVolumes(ctx, map[string]string{jobs.MetaJobID: r.job.ID})
					r.vols.SetMetadata(ctx, vs[0].ID, map[string]string{jobs.MetaLease: "w2/1.2/bb"})
				}
				return fmt.Errorf("%w: taken over", jobs.ErrLeaseLost)
			}
			_, err := r.runner(t, nil).Run(jobs.WithLease(ctx, l), r.job, 1)
			if !errors.Is(err, jobs.ErrLeaseLost) {
				t.Fatalf("Run: %v, want ErrLeaseLost", err)
			}
			vs, _ := r.vols.FindVolumes(ctx, map[string]string{jobs.MetaJobID: r.job.ID})
			if want := map[bool]int{false: 0, true: 1}[adopted]; len(vs) != want {
				t.Fatalf("%d volumes left, want %d", len(vs), want)
			}
			if r.vols.Attachments() != 0 {
				t.Error("the lost run left its attachment")
			}
			if adopted && (vs[0].ReadOnly || vs[0].Metadata[jobs.MetaImageSize] != "") {
				t.Errorf("the lost run finished the adopted volume: %+v", vs[0])
			}
		})
	}
}

func TestAFinishedVolumeIsReportedByTheNextWorker(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	first, err := r.runner(t, nil).Run(jobs.WithLease(ctx, &lease{token: "w1"}), r.job, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Its ack was lost, and the job goes to another worker (another
	// journal) on the same volume service: it must report the image, not
	// attach the read-only volume read-write and fail.
	second, err := r.runner(t, nil).Run(jobs.WithLease(ctx, &lease{token: "w2"}), r.job, 2)
	if err != nil || second != first {
		t.Fatalf("second worker: %+v %v, want %+v", second, err, first)
	}
	if vs, _ := r.vols.FindVolumes(ctx, map[string]string{jobs.MetaJobID: r.job.ID}); len(vs) != 1 {
		t.Errorf("%d volumes", len(vs))
	}
}

// cancelOnCopy cancels the job with ErrCancelled when it starts copying.
type cancelOnCopy struct {
	once   sync.Once
	cancel context.CancelCauseFunc
}

func (c *cancelOnCopy) Publish(ctx context.Context, ev jobs.Event) error {
	if ev.Step == jobs.StepCopying {
		c.once.Do(func() { c.cancel(fmt.Errorf("%w by a test", jobs.ErrCancelled)) })
	}
	return nil
}

func TestACancelledUploadIsCleanedUp(t *testing.T) {
	r := newRig(t)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	_, err := r.runner(t, &cancelOnCopy{cancel: cancel}).Run(ctx, r.job, 1)
	if !errors.Is(err, jobs.ErrCancelled) || jobs.IsPermanent(err) {
		t.Fatalf("Run: %v, want ErrCancelled", err)
	}
	if vs, _ := r.vols.FindVolumes(context.Background(), map[string]string{jobs.MetaJobID: r.job.ID}); len(vs) != 0 || r.vols.Attachments() != 0 {
		t.Errorf("left %d volumes, %d attachments", len(vs), r.vols.Attachments())
	}
}
