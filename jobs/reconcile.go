package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
)

// Statuses reads jobs' latest states across the cluster.
type Statuses interface {
	// Status returns the job's latest event, or an error wrapping
	// ErrNotFound when the job has none (never enqueued, or expired).
	Status(ctx context.Context, jobID string) (Event, error)
}

// Reconciler removes what crashed or failed jobs left behind: attachments
// this worker journaled for jobs it no longer runs, and volumes of this
// store whose job is dead — failed, cancelled, or silent for longer than
// Grace — that never became an image. It runs at start-up and periodically.
type Reconciler struct {
	Volumes  Volumes
	Journal  Journal
	Statuses Statuses
	Log      zerolog.Logger
	// Store is this worker's store tag (MetaStore); only its volumes are
	// touched.
	Store string
	// Running reports whether a job runs on this worker now.
	Running func(jobID string) bool
	// Grace is how long a volume of a dead or silent job is left alone
	// (default 1 hour), so a job retried with backoff, or a failing worker
	// still cleaning up, is never raced.
	Grace time.Duration
	// Retention is how long finished journal records are kept (default 7
	// days).
	Retention time.Duration
	// DryRun only reports what would be done.
	DryRun bool
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// ReconcileReport says what one pass did (or, in a dry run, would do).
type ReconcileReport struct {
	Detached       []string // attachment ids
	DeletedVolumes []string
	DroppedRecords []string // job ids
	Kept           int      // volumes of this store left alone
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reconciler) grace() time.Duration {
	if r.Grace > 0 {
		return r.Grace
	}
	return time.Hour
}

// Run does one pass. It goes on past individual failures and returns them
// joined.
func (r *Reconciler) Run(ctx context.Context) (ReconcileReport, error) {
	var rep ReconcileReport
	errs := []error{r.local(ctx, &rep), r.remote(ctx, &rep)}
	ev := r.Log.Info()
	if len(rep.Detached)+len(rep.DeletedVolumes)+len(rep.DroppedRecords) == 0 {
		ev = r.Log.Debug()
	}
	ev.Bool("dry_run", r.DryRun).Strs("detached", rep.Detached).Strs("deleted_volumes", rep.DeletedVolumes).
		Int("dropped_records", len(rep.DroppedRecords)).Int("kept", rep.Kept).Msg("reconciled")
	return rep, errors.Join(errs...)
}

// local releases the attachments of journaled jobs that no longer run here
// (the worker crashed, or a job was abandoned mid-step), and forgets
// finished records past retention.
func (r *Reconciler) local(ctx context.Context, rep *ReconcileReport) error {
	recs, err := r.Journal.List(ctx)
	if err != nil {
		return fmt.Errorf("reconcile: list journal: %w", err)
	}
	retention := r.Retention
	if retention <= 0 {
		retention = 7 * 24 * time.Hour
	}
	var errs []error
	for _, rec := range recs {
		if r.Running != nil && r.Running(rec.JobID) {
			continue
		}
		if rec.AttachmentID != "" {
			rep.Detached = append(rep.Detached, rec.AttachmentID)
			if !r.DryRun {
				if err := r.Volumes.Detach(ctx, rec.AttachmentID); err != nil {
					errs = append(errs, fmt.Errorf("reconcile: detach %s of job %s: %w", rec.AttachmentID, rec.JobID, err))
					continue
				}
				rec.AttachmentID = ""
				rec.Updated = r.now().UTC()
				if _, err := r.Journal.Save(ctx, rec); err != nil && !errors.Is(err, ErrConflict) {
					errs = append(errs, fmt.Errorf("reconcile: journal job %s: %w", rec.JobID, err))
				}
			}
		}
		if rec.Outcome != "" && r.now().Sub(rec.Updated) > retention {
			rep.DroppedRecords = append(rep.DroppedRecords, rec.JobID)
			if !r.DryRun {
				if err := r.Journal.Delete(ctx, rec.JobID); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// remote deletes this store's volumes that will never become images.
func (r *Reconciler) remote(ctx context.Context, rep *ReconcileReport) error {
	vols, err := r.Volumes.FindVolumes(ctx, map[string]string{MetaStore: r.Store})
	if err != nil {
		return fmt.Errorf("reconcile: list volumes of store %s: %w", r.Store, err)
	}
	var errs []error
	for _, v := range vols {
		reason, err := r.orphaned(ctx, v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if reason == "" {
			rep.Kept++
			continue
		}
		log := r.Log.Warn().Str("volume_id", v.ID).Str("job_id", v.Metadata[MetaJobID]).Str("status", v.Status).Str("reason", reason)
		rep.DeletedVolumes = append(rep.DeletedVolumes, v.ID)
		if r.DryRun {
			log.Msg("would delete a leaked volume (dry run)")
			continue
		}
		log.Msg("deleting a leaked volume")
		if err := r.deleteVolume(ctx, v); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// orphaned returns why v is a leak, or "" when it must stay: it is a
// finished image, its job may still run, or it is within the grace period.
func (r *Reconciler) orphaned(ctx context.Context, v Volume) (string, error) {
	_, finished := v.Metadata[MetaImageSize]
	broken := isErrorStatus(v.Status)
	if finished && !broken {
		return "", nil
	}
	jobID := v.Metadata[MetaJobID]
	if jobID != "" && r.Running != nil && r.Running(jobID) {
		return "", nil
	}
	now := r.now()
	st, err := r.Statuses.Status(ctx, jobID)
	switch {
	case jobID == "" || errors.Is(err, ErrNotFound):
		// No job to ask: go by the volume's age.
		if now.Sub(v.Created) < r.grace() {
			return "", nil
		}
		return "no job status and older than the grace period", nil
	case err != nil:
		return "", fmt.Errorf("reconcile: status of job %s: %w", jobID, err)
	}
	idle := now.Sub(st.Time)
	switch {
	case idle < r.grace():
		return "", nil
	case st.State == StateCompleted && st.VolumeID == v.ID:
		return "", nil // an image whose metadata is being written: never delete a result
	case st.State == StateFailed || st.State == StateCancelled:
		return "its job " + string(st.State), nil
	case broken:
		return "status " + v.Status, nil
	case st.State == StateCompleted:
		return "its job completed with another volume", nil
	default:
		return fmt.Sprintf("its job has been %s for %s", st.State, idle.Round(time.Second)), nil
	}
}

func (r *Reconciler) deleteVolume(ctx context.Context, v Volume) error {
	for _, a := range v.Attachments {
		if err := r.Volumes.Detach(ctx, a.ID); err != nil {
			return fmt.Errorf("reconcile: detach %s from volume %s: %w", a.ID, v.ID, err)
		}
	}
	if len(v.Attachments) > 0 {
		// A volume in error cannot become available: delete it as it is.
		if _, err := r.Volumes.WaitVolume(ctx, v.ID, "available"); err != nil && !IsPermanent(err) {
			return fmt.Errorf("reconcile: volume %s after detaching: %w", v.ID, err)
		}
	}
	if err := r.Volumes.DeleteVolume(ctx, v.ID); err != nil {
		return fmt.Errorf("reconcile: delete volume %s: %w", v.ID, err)
	}
	return nil
}
