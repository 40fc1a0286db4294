package jobs_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/cinder/local"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/state"
)

type statuses map[string]jobs.Event

func (s statuses) Status(ctx context.Context, id string) (jobs.Event, error) {
	ev, ok := s[id]
	if !ok {
		return jobs.Event{}, fmt.Errorf("job %s: %w", id, jobs.ErrNotFound)
	}
	return ev, nil
}

func TestReconciler(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	vols, err := local.Open(filepath.Join(dir, "volumes"), local.Options{Host: "this-host"})
	if err != nil {
		t.Fatal(err)
	}
	journal, err := state.Open(filepath.Join(dir, "journal.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer journal.Close()

	now := time.Now()
	later := now.Add(2 * time.Hour) // past the default one-hour grace
	mk := func(job, store string, finished bool, attach bool) string {
		t.Helper()
		md := map[string]string{jobs.MetaStore: store, jobs.MetaImageID: "img-" + job}
		if job != "" {
			md[jobs.MetaJobID] = job
		}
		v, err := vols.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-" + job, SizeGiB: 1, Metadata: md})
		if err != nil {
			t.Fatal(err)
		}
		if finished {
			vols.SetMetadata(ctx, v.ID, map[string]string{jobs.MetaImageSize: "10"})
		}
		if attach {
			if _, err := vols.Attach(ctx, v.ID, jobs.ReadWrite); err != nil {
				t.Fatal(err)
			}
		}
		return v.ID
	}
	st := statuses{
		"failed-old":  {State: jobs.StateFailed, Time: now.Add(-3 * time.Hour)},
		"failed-new":  {State: jobs.StateFailed, Time: later.Add(-time.Minute)},
		"running-now": {State: jobs.StateProgress, Time: later.Add(-time.Second)},
		"stuck":       {State: jobs.StateRunning, Time: now.Add(-5 * time.Hour)},
		"cancelled":   {State: jobs.StateCancelled, Time: now.Add(-2 * time.Hour)},
	}
	failedOld := mk("failed-old", "default", false, true) // leaked with a stale attachment
	failedNew := mk("failed-new", "default", false, false)
	runningNow := mk("running-now", "default", false, false)
	runningHere := mk("running-here", "default", false, false)
	stuck := mk("stuck", "default", false, false)
	cancelled := mk("cancelled", "default", false, false)
	image := mk("done", "default", true, false)
	noStatus := mk("forgotten", "default", false, false)
	otherStore := mk("failed-old", "other", false, false)

	// Journal: a crashed job's attachment, a running job's, an old finished record.
	attCrashed, _ := vols.Attach(ctx, image, jobs.ReadOnly)
	attRunning, _ := vols.Attach(ctx, runningHere, jobs.ReadWrite)
	for _, rec := range []jobs.Record{
		{JobID: "crashed", Step: jobs.StepCopying, VolumeID: image, AttachmentID: attCrashed.ID, Updated: now},
		{JobID: "running-here", Step: jobs.StepCopying, VolumeID: runningHere, AttachmentID: attRunning.ID, Updated: now},
		{JobID: "ancient", Outcome: "completed", Updated: now.Add(-30 * 24 * time.Hour)},
		{JobID: "recent", Outcome: "completed", Updated: now},
	} {
		if _, err := journal.Save(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	r := &jobs.Reconciler{Volumes: vols, Journal: journal, Statuses: st, Log: zerolog.Nop(), Store: "default",
		Running: func(id string) bool { return id == "running-here" }, Now: func() time.Time { return later }}

	r.DryRun = true
	dry, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := vols.Attachments(); n != 3 {
		t.Fatalf("a dry run changed attachments: %d left, want 3", n)
	}
	r.DryRun = false
	rep, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rep.DeletedVolumes)
	slices.Sort(dry.DeletedVolumes)
	want := []string{failedOld, stuck, cancelled, noStatus}
	slices.Sort(want)
	if !slices.Equal(rep.DeletedVolumes, want) || !slices.Equal(dry.DeletedVolumes, want) {
		t.Errorf("deleted %v (dry run: %v), want %v", rep.DeletedVolumes, dry.DeletedVolumes, want)
	}
	for _, id := range want {
		if _, err := vols.GetVolume(ctx, id); err == nil {
			t.Errorf("volume %s is still there", id)
		}
	}
	for name, id := range map[string]string{"failed within grace": failedNew, "running elsewhere": runningNow,
		"running here": runningHere, "a finished image": image, "another store's": otherStore} {
		if _, err := vols.GetVolume(ctx, id); err != nil {
			t.Errorf("%s volume was deleted: %v", name, err)
		}
	}
	if !slices.Equal(rep.Detached, []string{attCrashed.ID}) {
		t.Errorf("detached %v, want only the crashed job's %s", rep.Detached, attCrashed.ID)
	}
	if rec, _ := journal.Load(ctx, "crashed"); rec.AttachmentID != "" {
		t.Error("the crashed job's record still names its attachment")
	}
	if !slices.Equal(rep.DroppedRecords, []string{"ancient"}) {
		t.Errorf("dropped records %v, want [ancient]", rep.DroppedRecords)
	}
	if n := vols.Attachments(); n != 1 {
		t.Errorf("%d attachments left, want 1 (the running job's)", n)
	}
	// A second pass finds nothing more to do.
	again, err := r.Run(ctx)
	if err != nil || len(again.DeletedVolumes)+len(again.Detached)+len(again.DroppedRecords) != 0 {
		t.Errorf("second pass: %+v, %v", again, err)
	}
}
