package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// GiB is the unit Cinder sizes volumes in.
const GiB = int64(1) << 30

// Volume metadata keys. The first three are the ones Glance's stock cinder
// store writes and reads, so either side can use the other's volumes.
const (
	MetaImageID    = "glance_image_id"
	MetaImageSize  = "image_size"
	MetaImageOwner = "image_owner"
	MetaJobID      = "cinderport_job_id"
	MetaStore      = "cinderport_store"
	MetaChecksum   = "cinderport_checksum"
	MetaHashAlgo   = "cinderport_os_hash_algo"
	MetaHashValue  = "cinderport_os_hash_value"
	// MetaLease holds the token of the lease under which the volume was
	// last created or adopted (see Lease.Token).
	MetaLease = "cinderport_lease"
)

// RunnerConfig tunes the runner.
type RunnerConfig struct {
	// Worker names this worker in events.
	Worker string
	// Store is the default store name: locations are cinder://<store>/<id>
	// when a job or this field names one. Its volumes carry it in metadata.
	Store string
	// CheckpointEvery is how many bytes an upload copies between durable
	// checkpoints (default 64 MiB).
	CheckpointEvery int64
	// ProgressEvery is the minimum time between progress events (default 1 s).
	ProgressEvery time.Duration
	// TrustStagedSize makes an upload of unknown size (size 0) take the
	// staged object's size to size its volume (default true). Otherwise the
	// volume starts at 1 GiB and grows as data arrives.
	TrustStagedSize *bool
	// MaxGrowStep caps one growth step of a volume of unknown size (default
	// 64 GiB); steps double the volume up to that cap.
	MaxGrowStep int64
	// MaxImageSize refuses uploads of larger images (0: MaxImageSize of the
	// job format).
	MaxImageSize int64
}

func (c RunnerConfig) withDefaults() RunnerConfig {
	if c.CheckpointEvery == 0 {
		c.CheckpointEvery = 64 << 20
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = time.Second
	}
	if c.MaxGrowStep == 0 {
		c.MaxGrowStep = 64 * GiB
	}
	if c.MaxImageSize == 0 {
		c.MaxImageSize = MaxImageSize
	}
	return c
}

// Runner executes jobs: the upload, export and delete state machines. It
// holds no per-job state; every step is journaled so a crashed or retried
// job resumes where it stopped.
type Runner struct {
	Volumes   Volumes
	Connector Connector
	Staging   Staging
	Journal   Journal
	Copier    Copier
	Events    Events
	Log       zerolog.Logger
	Config    RunnerConfig
	// Evict, when set, releases this worker's idle download attachment of a
	// volume about to be deleted or exported: a non-multiattach volume takes
	// one attachment at a time, and the export's would wait for the idle one
	// to linger out.
	Evict func(ctx context.Context, volumeID string)
}

// run is one execution of one job.
type run struct {
	*Runner
	cfg     RunnerConfig
	job     Job
	rec     Record
	attempt int
	log     zerolog.Logger
	dev     Device
	// mu guards rec while a copy runs: checkpoints are saved from the
	// copier's goroutine while progress events read the record.
	mu      sync.Mutex
	lastEv  time.Time
	lastB   int64
	started time.Time
}

// Run executes job (already validated) as attempt number attempt. It returns
// the result, or an error that is permanent (the runner has cleaned up: no
// volume, attachment or session is left) or retryable (the journal keeps
// what the next attempt needs).
func (r *Runner) Run(ctx context.Context, job Job, attempt int) (Result, error) {
	job.Normalize()
	x := &run{Runner: r, cfg: r.Config.withDefaults(), job: job, attempt: attempt, started: time.Now()}
	x.log = r.Log.With().Str("job_id", job.ID).Str("kind", string(job.Kind)).Int("attempt", attempt).Logger()
	if job.ImageID != "" {
		x.log = x.log.With().Str("image_id", job.ImageID).Logger()
	}
	if err := x.load(ctx); err != nil {
		return Result{}, err
	}
	x.event(ctx, StateRunning, 0, true) // the job started: enqueue-to-start latency ends here
	if x.rec.Outcome == "completed" && x.rec.Result != nil {
		// Finished before, but the ack was lost: report the same result.
		return *x.rec.Result, nil
	}
	var res Result
	var err error
	switch job.Kind {
	case KindUpload:
		res, err = x.upload(ctx)
	case KindExport:
		res, err = x.export(ctx)
	case KindDelete:
		res, err = x.delete(ctx)
	default:
		err = Permanentf("unknown job kind %q", job.Kind)
	}
	return res, x.finish(ctx, res, stopCause(ctx, err))
}

// Abandon cleans up after a job that will not be retried (attempts
// exhausted, or cancelled): it detaches and deletes what the job created,
// and records the outcome. It returns an error only when the cleanup
// failed.
// An upload this worker never ran may still have left a volume behind on
// another worker's attempt: it is found by the job id in its metadata.
func (r *Runner) Abandon(ctx context.Context, job Job, reason error) error {
	job.Normalize()
	x := &run{Runner: r, cfg: r.Config.withDefaults(), job: job}
	x.log = r.Log.With().Str("job_id", job.ID).Logger()
	if err := x.load(ctx); err != nil {
		return err
	}
	if job.Kind == KindUpload && x.rec.VolumeID == "" {
		if err := x.adoptLeftovers(ctx); err != nil {
			return err
		}
	}
	if !errors.Is(reason, ErrCancelled) {
		reason = Permanent(reason)
	}
	// finish returns the reason itself; only an upload volume that is
	// still there is Abandon's failure.
	if err := x.finish(ctx, Result{}, reason); x.job.Kind == KindUpload && x.rec.VolumeID != "" {
		return err
	}
	return nil
}

// adoptLeftovers takes over the unfinished volumes other attempts of the
// job left, so that finish deletes them; a finished (read-only) one is an
// image and stays.
func (x *run) adoptLeftovers(ctx context.Context) error {
	found, err := x.Volumes.FindVolumes(ctx, map[string]string{MetaJobID: x.job.ID})
	if err != nil {
		return fmt.Errorf("find volumes of job %s: %w", x.job.ID, err)
	}
	for _, v := range found {
		switch {
		case v.ReadOnly:
		case x.rec.VolumeID == "":
			x.rec.VolumeID = v.ID
		default:
			if err := x.Volumes.DeleteVolume(ctx, v.ID); err != nil {
				return fmt.Errorf("delete volume %s of abandoned job %s: %w", v.ID, x.job.ID, err)
			}
		}
	}
	return nil
}

func (x *run) load(ctx context.Context) error {
	rec, err := x.Journal.Load(ctx, x.job.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		rec = Record{JobID: x.job.ID, Job: x.job, Step: StepAccepted}
	case err != nil:
		return fmt.Errorf("load journal record: %w", err)
	}
	rec.Attempts = max(rec.Attempts, x.attempt)
	x.rec = rec
	if rec.Rev == 0 {
		// A new record is journaled with the first thing worth keeping (the
		// volume's id): until then a crash leaves nothing to recover, and a
		// second run of the job here still conflicts at that first save.
		return nil
	}
	return x.save(ctx)
}

// save journals the record. A conflict means another goroutine of this
// worker owns the job: stop.
func (x *run) save(ctx context.Context) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.rec.Updated = time.Now().UTC()
	rec, err := x.Journal.Save(context.WithoutCancel(ctx), x.rec)
	if err != nil {
		return fmt.Errorf("journal job %s at step %s: %w", x.job.ID, x.rec.Step, err)
	}
	x.rec = rec
	return nil
}

// step moves the job to step s: the record in memory and an event for
// watchers. The step is not journaled by itself: recovery never depends on
// it (only on the volume and attachment ids and the checkpoint, each
// journaled before it matters), so the next save carries it. A commit per
// step would double the journal's fsyncs on small jobs.
func (x *run) step(ctx context.Context, s Step) error {
	x.mu.Lock()
	x.rec.Step = s
	x.mu.Unlock()
	// The time since the run started: the logs' timestamps have whole
	// seconds, too coarse to see where a job spends its time.
	x.log.Debug().Str("step", string(s)).Dur("elapsed", time.Since(x.started)).Msg("step")
	x.event(ctx, StateRunning, 0, true)
	return nil
}

// event publishes a running/progress event; progress events are throttled.
func (x *run) event(ctx context.Context, st State, bytes int64, force bool) {
	if x.Events == nil || !x.owned(ctx) {
		return
	}
	now := time.Now()
	if !force && now.Sub(x.lastEv) < x.cfg.ProgressEvery {
		return
	}
	x.mu.Lock()
	step, volumeID := x.rec.Step, x.rec.VolumeID
	x.mu.Unlock()
	ev := Event{JobID: x.job.ID, Kind: x.job.Kind, State: st, Step: step, Attempt: x.attempt,
		Worker: x.cfg.Worker, ImageID: x.job.ImageID, VolumeID: volumeID, Bytes: bytes, Total: x.job.Size, Time: now.UTC()}
	if st == StateProgress && !x.lastEv.IsZero() {
		ev.Rate = float64(bytes-x.lastB) / now.Sub(x.lastEv).Seconds()
	}
	x.lastEv, x.lastB = now, bytes
	if err := x.Events.Publish(context.WithoutCancel(ctx), ev); err != nil {
		x.log.Warn().Err(err).Msg("publish event")
	}
}

// owned reports whether this run may still speak for its job: a run that
// lost its lease publishes nothing, since the job's status belongs to the
// new owner.
func (x *run) owned(ctx context.Context) bool {
	if errors.Is(context.Cause(ctx), ErrLeaseLost) {
		return false
	}
	l := leaseFrom(ctx)
	return l == nil || l.Valid()
}

// finish records the outcome. On a permanent error it first cleans up
// everything the job made; on a retryable one it releases the attachment
// (the next attempt attaches again) but keeps the volume and checkpoint.
func (x *run) finish(ctx context.Context, res Result, err error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	x.closeDevice()
	if derr := x.detach(cctx); derr != nil {
		if err == nil {
			err = derr
		} else {
			x.log.Error().Err(derr).Msg("detach")
		}
	}
	switch {
	case errors.Is(err, ErrLeaseLost):
		x.handOver(cctx, leaseFrom(ctx))
	case err == nil:
		x.rec.Step, x.rec.Outcome, x.rec.Result, x.rec.Error = StepDone, "completed", &res, ""
	case IsPermanent(err) || errors.Is(err, ErrCancelled):
		outcome := "failed"
		if errors.Is(err, ErrCancelled) {
			outcome = "cancelled"
		}
		x.rec.Step = StepCleanup
		if x.job.Kind == KindUpload && x.rec.VolumeID != "" {
			if derr := x.Volumes.DeleteVolume(cctx, x.rec.VolumeID); derr != nil {
				x.log.Error().Err(derr).Str("volume_id", x.rec.VolumeID).Msg("delete volume of failed upload")
				x.rec.Error = err.Error()
				if serr := x.save(cctx); serr != nil {
					x.log.Error().Err(serr).Msg("journal")
				}
				// The volume is still there: retry the cleanup later.
				return fmt.Errorf("%w (and cleanup failed: %v)", err, derr)
			}
			x.log.Info().Str("volume_id", x.rec.VolumeID).Msg("deleted the volume of a failed upload")
			x.rec.VolumeID = ""
		}
		x.rec.Outcome, x.rec.Error, x.rec.Checkpoint = outcome, err.Error(), nil
	default:
		x.rec.Error = err.Error()
	}
	if serr := x.save(cctx); serr != nil && err == nil {
		err = serr
	}
	return err
}

// handOver leaves the job to the delivery that took it over. By now this
// run wrote nothing irreversible: every such step (metadata, read-only flag,
// result, ack) waits for a successful Hold, and the loss stopped the copy.
// What it may have done between resuming and noticing is harmless: its
// writes went through its own attachment, which a non-multiattach volume
// allows only one of, so a new owner that adopted the volume either still
// waited to attach (and then rewrites every byte from offset 0 and flushes
// after its last write) or works on a volume of its own; its events were
// dropped (owned). The attachment is gone (finish detached it first).
//
// The volume is deleted only while it still carries this run's lease token
// and is not read-only: an adopter stamps its own token before using a
// volume, and a finished image is made read-only under the lease, so such a
// volume is nobody's work and nobody's result — on a volume service private
// to this worker (the local files of the embedded default) the new owner
// made its own and this one would leak. An adopter racing this check finds
// the volume gone and creates a new one: wasted work, never a lost image.
func (x *run) handOver(ctx context.Context, l Lease) {
	x.log.Warn().Str("volume_id", x.rec.VolumeID).Msg("lost the job's lease: leaving it to its new owner")
	if id := x.rec.VolumeID; id != "" && l != nil && x.job.Kind == KindUpload {
		v, err := x.Volumes.GetVolume(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			x.log.Error().Err(err).Str("volume_id", id).Msg("look up the volume of a lost job")
		case v.Metadata[MetaLease] == l.Token() && !v.ReadOnly:
			if err := x.Volumes.DeleteVolume(ctx, id); err != nil {
				x.log.Error().Err(err).Str("volume_id", id).Msg("delete the volume of a lost job")
			} else {
				x.log.Info().Str("volume_id", id).Msg("deleted the volume nobody adopted")
			}
		default:
			x.log.Info().Str("volume_id", id).Msg("the volume was adopted: leaving it")
		}
	}
	x.rec.VolumeID, x.rec.Checkpoint, x.rec.Outcome, x.rec.Error = "", nil, "lost", ErrLeaseLost.Error()
}

func (x *run) closeDevice() {
	if x.dev != nil {
		if err := x.dev.Close(); err != nil {
			x.log.Warn().Err(err).Msg("disconnect device")
		}
		x.dev = nil
	}
}

func (x *run) detach(ctx context.Context) error {
	if x.rec.AttachmentID == "" {
		return nil
	}
	if err := x.Volumes.Detach(ctx, x.rec.AttachmentID); err != nil {
		return fmt.Errorf("detach volume %s (attachment %s): %w", x.rec.VolumeID, x.rec.AttachmentID, err)
	}
	// Not journaled here: every caller saves soon after (attach with the
	// new attachment, finish with the outcome). A crash before that leaves
	// the old id in the journal, and detaching a gone attachment again is a
	// no-op for both volume services.
	x.mu.Lock()
	x.rec.AttachmentID = ""
	x.mu.Unlock()
	return nil
}

// attach attaches the volume in mode and connects to it. The attachment id
// is journaled before connecting, so a crash leaves nothing unknown.
func (x *run) attach(ctx context.Context, volumeID string, mode AttachMode) error {
	if err := x.detach(ctx); err != nil { // a stale attachment of an earlier attempt
		return err
	}
	att, err := x.Volumes.Attach(ctx, volumeID, mode)
	if err != nil {
		return fmt.Errorf("attach volume %s: %w", volumeID, err)
	}
	x.rec.AttachmentID = att.ID
	if err := x.save(ctx); err != nil {
		return err
	}
	dev, err := x.Connector.Connect(ctx, att.Connection, mode)
	if err != nil {
		return fmt.Errorf("connect to volume %s: %w", volumeID, err)
	}
	x.dev = dev
	if err := x.Volumes.CompleteAttachment(ctx, att.ID); err != nil {
		return fmt.Errorf("complete attachment of volume %s: %w", volumeID, err)
	}
	return nil
}

func (x *run) location(volumeID string) string {
	store := x.job.Store
	if store == "" {
		store = x.cfg.Store
	}
	if store == "" {
		return "cinder://" + volumeID
	}
	return "cinder://" + store + "/" + volumeID
}

func sizeGiB(n int64) int {
	return int(max(1, (n+GiB-1)/GiB))
}

func (x *run) upload(ctx context.Context) (Result, error) {
	src := *x.job.Source
	info, err := x.Staging.Stat(ctx, src)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Result{}, Permanentf("staged object %s: %w", src, err)
		}
		return Result{}, fmt.Errorf("stat staged object %s: %w", src, err)
	}
	if x.job.Size > 0 && info.Size != x.job.Size {
		return Result{}, Permanentf("staged object %s is %d bytes, the job says %d", src, info.Size, x.job.Size)
	}
	if info.Size > x.cfg.MaxImageSize {
		return Result{}, Permanentf("staged object %s is %d bytes, larger than this worker's limit of %d", src, info.Size, x.cfg.MaxImageSize)
	}
	want := x.job.Size
	if want == 0 && (x.cfg.TrustStagedSize == nil || *x.cfg.TrustStagedSize) {
		want = info.Size
	}
	prior, err := x.ensureVolume(ctx, want)
	if err != nil {
		return Result{}, err
	}
	if prior != nil {
		x.log.Info().Str("volume_id", prior.VolumeID).Msg("an earlier attempt finished the image: reporting its result")
		return *prior, nil
	}
	log := x.log.With().Str("volume_id", x.rec.VolumeID).Logger()
	if err := x.step(ctx, StepAttaching); err != nil {
		return Result{}, err
	}
	if err := x.volumeReady(ctx); err != nil {
		return Result{}, err
	}
	if err := x.attach(ctx, x.rec.VolumeID, ReadWrite); err != nil {
		return Result{}, err
	}
	if err := x.step(ctx, StepCopying); err != nil {
		return Result{}, err
	}
	resume := x.rec.Checkpoint
	// A checkpoint at the object's end (the copy finished, a later step
	// failed) may be unaligned: the copy resumes there and reads nothing.
	if resume != nil && (resume.Offset > info.Size || resume.Offset%int64(x.dev.BlockSize()) != 0 && resume.Offset != info.Size) {
		log.Warn().Int64("offset", resume.Offset).Msg("checkpoint does not fit the staged object: starting over")
		resume = nil
	}
	var from int64
	if resume != nil {
		from = resume.Offset
		log.Info().Int64("offset", from).Msg("resuming from checkpoint")
	}
	body, err := x.Staging.Open(ctx, src, from)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Result{}, Permanentf("open staged object %s: %w", src, err)
		}
		return Result{}, fmt.Errorf("open staged object %s: %w", src, err)
	}
	defer body.Close()
	var done atomic.Int64
	dg, err := x.Copier.Fill(ctx, x.dev, body, FillRequest{
		HashAlgo:        x.job.OSHashAlgo,
		SizeHint:        info.Size,
		Resume:          resume,
		CheckpointEvery: x.cfg.CheckpointEvery,
		Checkpoint: func(ctx context.Context, cp Checkpoint) error {
			cp.At = time.Now().UTC()
			x.mu.Lock()
			x.rec.Checkpoint = &cp
			x.mu.Unlock()
			return x.save(ctx)
		},
		Progress: func(n int64) {
			done.Store(n)
			x.event(ctx, StateProgress, n, false)
		},
		Grow: x.grow,
	})
	if err != nil {
		return Result{}, fmt.Errorf("copy %s to volume %s: %w", src, x.rec.VolumeID, err)
	}
	if err := x.step(ctx, StepFlushing); err != nil {
		return Result{}, err
	}
	if err := x.dev.Flush(ctx); err != nil {
		return Result{}, fmt.Errorf("flush volume %s: %w", x.rec.VolumeID, err)
	}
	if err := x.verify(dg); err != nil {
		return Result{}, err
	}
	if err := x.step(ctx, StepDetaching); err != nil {
		return Result{}, err
	}
	x.closeDevice()
	if err := x.detach(ctx); err != nil {
		return Result{}, err
	}
	if err := x.step(ctx, StepFinishing); err != nil {
		return Result{}, err
	}
	md := map[string]string{
		MetaImageSize: strconv.FormatInt(dg.Bytes, 10),
		MetaChecksum:  dg.MD5,
		MetaHashAlgo:  dg.HashAlgo,
		MetaHashValue: dg.HashValue,
	}
	// From here on every step is visible to others and cannot be undone:
	// each waits until the lease is confirmed still ours.
	if err := hold(ctx); err != nil {
		return Result{}, err
	}
	if err := x.Volumes.SetMetadata(ctx, x.rec.VolumeID, md); err != nil {
		return Result{}, fmt.Errorf("set metadata of volume %s: %w", x.rec.VolumeID, err)
	}
	if err := hold(ctx); err != nil {
		return Result{}, err
	}
	if err := x.Volumes.SetReadOnly(ctx, x.rec.VolumeID, true); err != nil {
		return Result{}, fmt.Errorf("set volume %s read-only: %w", x.rec.VolumeID, err)
	}
	if x.job.DeleteSource {
		if err := hold(ctx); err != nil {
			return Result{}, err
		}
		if err := x.Staging.Delete(ctx, src); err != nil {
			log.Warn().Err(err).Msg("delete staged object")
		}
	}
	secs := time.Since(x.started).Seconds()
	log.Info().Int64("bytes", dg.Bytes).Float64("seconds", secs).Msg("upload complete")
	return Result{
		Location: x.location(x.rec.VolumeID), VolumeID: x.rec.VolumeID, Size: dg.Bytes,
		Checksum: dg.MD5, OSHashAlgo: dg.HashAlgo, OSHashValue: dg.HashValue,
	}, nil
}

func (x *run) verify(dg Digest) error {
	switch {
	case x.job.Size > 0 && dg.Bytes != x.job.Size:
		return Permanentf("size mismatch: copied %d bytes, the job says %d", dg.Bytes, x.job.Size)
	case x.job.Checksum != "" && dg.MD5 != x.job.Checksum:
		return Permanentf("checksum mismatch: md5 of the image is %s, the job expects %s", dg.MD5, x.job.Checksum)
	case x.job.OSHashValue != "" && dg.HashValue != x.job.OSHashValue:
		return Permanentf("os_hash mismatch: %s of the image is %s, the job expects %s", dg.HashAlgo, dg.HashValue, x.job.OSHashValue)
	}
	return nil
}

// ensureVolume finds the volume this job already made — in the journal, or
// by its metadata in the volume service (a redelivery to another worker) —
// or creates it, journaling its id before anything else happens to it. A
// volume an earlier attempt finished (read-only, with the image's size and
// hashes) means the job is done: its result is returned instead.
func (x *run) ensureVolume(ctx context.Context, size int64) (*Result, error) {
	if x.rec.VolumeID != "" {
		v, err := x.Volumes.GetVolume(ctx, x.rec.VolumeID)
		switch {
		case err == nil && !isErrorStatus(v.Status):
			if res, ok := x.finished(v); ok {
				return &res, nil
			}
			return nil, x.stamp(ctx, v)
		case err == nil:
			return nil, x.replaceBroken(ctx, v)
		case errors.Is(err, ErrNotFound):
			x.log.Warn().Str("volume_id", x.rec.VolumeID).Msg("journaled volume is gone: creating a new one")
			x.rec.VolumeID, x.rec.Checkpoint = "", nil
		default:
			return nil, fmt.Errorf("look up volume %s: %w", x.rec.VolumeID, err)
		}
	}
	found, err := x.Volumes.FindVolumes(ctx, map[string]string{MetaJobID: x.job.ID})
	if err != nil {
		return nil, fmt.Errorf("find volumes of job %s: %w", x.job.ID, err)
	}
	for _, v := range found {
		if res, ok := x.finished(v); ok {
			return &res, nil
		}
	}
	var adopted Volume
	for _, v := range found {
		if isErrorStatus(v.Status) {
			if err := x.Volumes.DeleteVolume(ctx, v.ID); err != nil {
				return nil, fmt.Errorf("delete broken volume %s: %w", v.ID, err)
			}
			continue
		}
		if x.rec.VolumeID == "" {
			x.log.Info().Str("volume_id", v.ID).Msg("adopting the volume an earlier attempt created")
			x.rec.VolumeID, x.rec.SizeGiB, x.rec.Checkpoint = v.ID, v.SizeGiB, nil
			adopted = v
			continue
		}
		// More than one healthy volume for one job cannot happen through
		// this runner; keep the first and remove the rest.
		if err := x.Volumes.DeleteVolume(ctx, v.ID); err != nil {
			return nil, fmt.Errorf("delete duplicate volume %s: %w", v.ID, err)
		}
	}
	if x.rec.VolumeID != "" {
		if err := x.save(ctx); err != nil {
			return nil, err
		}
		return nil, x.stamp(ctx, adopted)
	}
	if err := x.step(ctx, StepCreating); err != nil {
		return nil, err
	}
	md := map[string]string{MetaJobID: x.job.ID, MetaImageID: x.job.ImageID, MetaStore: x.storeTag()}
	if x.job.Owner != "" {
		md[MetaImageOwner] = x.job.Owner
	}
	if l := leaseFrom(ctx); l != nil {
		md[MetaLease] = l.Token()
	}
	v, err := x.Volumes.CreateVolume(ctx, VolumeSpec{
		Name: "image-" + x.job.ImageID, SizeGiB: sizeGiB(size), VolumeType: x.job.VolumeType, Zone: x.volumeZone(), Metadata: md,
	})
	if err != nil {
		return nil, fmt.Errorf("create volume for image %s: %w", x.job.ImageID, err)
	}
	x.rec.VolumeID, x.rec.SizeGiB, x.rec.Checkpoint = v.ID, v.SizeGiB, nil
	x.log.Info().Str("volume_id", v.ID).Int("size_gib", v.SizeGiB).Msg("created volume")
	return nil, x.save(ctx)
}

// stamp marks v as worked on under this run's lease, before anything is
// written to it: a worker that held the job before and lost it then knows
// that the volume was adopted and is not its to delete.
func (x *run) stamp(ctx context.Context, v Volume) error {
	l := leaseFrom(ctx)
	if l == nil || v.Metadata[MetaLease] == l.Token() {
		return nil
	}
	if err := x.Volumes.SetMetadata(ctx, v.ID, map[string]string{MetaLease: l.Token()}); err != nil {
		return fmt.Errorf("stamp volume %s with this attempt's lease: %w", v.ID, err)
	}
	return nil
}

// finished returns the result an earlier attempt left on v when it got as
// far as making v read-only, which it does only after a verified copy and
// after recording the image's size and hashes: the job is done, and only
// its acknowledgement was lost.
func (x *run) finished(v Volume) (Result, bool) {
	md := v.Metadata
	size, err := strconv.ParseInt(md[MetaImageSize], 10, 64)
	if !v.ReadOnly || isErrorStatus(v.Status) || err != nil || md[MetaChecksum] == "" || md[MetaHashValue] == "" {
		return Result{}, false
	}
	return Result{Location: x.location(v.ID), VolumeID: v.ID, Size: size,
		Checksum: md[MetaChecksum], OSHashAlgo: md[MetaHashAlgo], OSHashValue: md[MetaHashValue]}, true
}

// volumeZone is the availability zone for the volume: the job's zone names
// a queue partition, and doubles as the availability zone unless it is the
// default one.
func (x *run) volumeZone() string {
	if x.job.Zone == DefaultZone {
		return ""
	}
	return x.job.Zone
}

func (x *run) storeTag() string {
	if s := x.job.Store; s != "" {
		return s
	}
	if x.cfg.Store != "" {
		return x.cfg.Store
	}
	return "default"
}

func (x *run) replaceBroken(ctx context.Context, v Volume) error {
	x.log.Warn().Str("volume_id", v.ID).Str("status", v.Status).Msg("volume is in error: replacing it")
	if err := x.Volumes.DeleteVolume(ctx, v.ID); err != nil {
		return fmt.Errorf("delete volume %s in status %s: %w", v.ID, v.Status, err)
	}
	x.rec.VolumeID, x.rec.Checkpoint = "", nil
	if err := x.save(ctx); err != nil {
		return err
	}
	return fmt.Errorf("volume %s went to status %s", v.ID, v.Status)
}

func isErrorStatus(s string) bool {
	return s == "error" || len(s) > 6 && s[:6] == "error_"
}

// volumeReady waits until the upload's volume is available. Attachments
// found on it are stale — an earlier attempt crashed between attaching and
// journaling the attachment, or a worker that lost the job still holds it —
// because the volume belongs to this job alone until the upload finishes:
// they are deleted, which also cuts a stale writer off.
func (x *run) volumeReady(ctx context.Context) error {
	id := x.rec.VolumeID
	v, err := x.Volumes.WaitVolume(ctx, id, "available", "reserved", "in-use")
	if err != nil {
		return fmt.Errorf("wait for volume %s: %w", id, err)
	}
	if len(v.Attachments) == 0 && v.Status == "available" {
		return nil
	}
	for _, a := range v.Attachments {
		x.log.Warn().Str("volume_id", id).Str("attachment_id", a.ID).Str("host", a.Host).Msg("deleting a stale attachment of this job's volume")
		if err := x.Volumes.Detach(ctx, a.ID); err != nil {
			return fmt.Errorf("delete stale attachment %s of volume %s: %w", a.ID, id, err)
		}
	}
	if _, err := x.Volumes.WaitVolume(ctx, id, "available"); err != nil {
		return fmt.Errorf("wait for volume %s: %w", id, err)
	}
	return nil
}

// grow extends the volume of an upload of unknown size: double it, capped
// at MaxGrowStep per step, and at least to need.
func (x *run) grow(ctx context.Context, dev Device, need int64) (Device, error) {
	caps, err := x.Volumes.Capabilities(ctx)
	if err != nil {
		return nil, err
	}
	cur := dev.Size()
	target := max(need, cur+min(cur, x.cfg.MaxGrowStep))
	newGiB := sizeGiB(target)
	x.log.Info().Int("from_gib", int(cur/GiB)).Int("to_gib", newGiB).Bool("online", caps.OnlineExtend).Msg("growing volume")
	if caps.OnlineExtend {
		if err := x.Volumes.ExtendVolume(ctx, x.rec.VolumeID, newGiB); err != nil {
			return nil, err
		}
		x.rec.SizeGiB = newGiB
		if rf, ok := dev.(Refresher); ok {
			if err := rf.Refresh(ctx); err != nil {
				return nil, fmt.Errorf("re-read capacity of volume %s: %w", x.rec.VolumeID, err)
			}
		}
		return dev, x.save(ctx)
	}
	// Offline: flush, detach, extend, attach again.
	if err := dev.Flush(ctx); err != nil {
		return nil, err
	}
	x.closeDevice()
	if err := x.detach(ctx); err != nil {
		return nil, err
	}
	if err := x.volumeReady(ctx); err != nil {
		return nil, err
	}
	if err := x.Volumes.ExtendVolume(ctx, x.rec.VolumeID, newGiB); err != nil {
		return nil, err
	}
	x.rec.SizeGiB = newGiB
	if err := x.attach(ctx, x.rec.VolumeID, ReadWrite); err != nil {
		return nil, err
	}
	return x.dev, nil
}

// ownVolume returns the volume if it carries this store's metadata.
func (x *run) ownVolume(ctx context.Context, id string) (Volume, int64, error) {
	v, err := x.Volumes.GetVolume(ctx, id)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Volume{}, 0, Permanentf("volume %s: %w", id, err)
		}
		return Volume{}, 0, fmt.Errorf("look up volume %s: %w", id, err)
	}
	if v.Metadata[MetaImageID] == "" || v.Metadata[MetaStore] != x.storeTag() {
		return Volume{}, 0, Permanentf("volume %s is not an image volume of store %s: left alone", id, x.storeTag())
	}
	size, err := ImageSize(v)
	if err != nil {
		return Volume{}, 0, err
	}
	return v, size, nil
}

// ImageSize is the image's byte count on v: image_size from its metadata,
// else (as Glance does) the whole volume.
func ImageSize(v Volume) (int64, error) {
	s, ok := v.Metadata[MetaImageSize]
	if !ok {
		return int64(v.SizeGiB) * GiB, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > int64(v.SizeGiB)*GiB {
		return 0, Permanentf("volume %s has an invalid image_size %q", v.ID, s)
	}
	return n, nil
}

func (x *run) export(ctx context.Context) (Result, error) {
	v, size, err := x.ownVolume(ctx, x.job.VolumeID)
	if err != nil {
		return Result{}, err
	}
	x.rec.VolumeID = v.ID
	if err := x.step(ctx, StepAttaching); err != nil {
		return Result{}, err
	}
	if x.Evict != nil {
		x.Evict(ctx, v.ID)
	}
	if err := x.attach(ctx, v.ID, ReadOnly); err != nil {
		return Result{}, err
	}
	if err := x.step(ctx, StepCopying); err != nil {
		return Result{}, err
	}
	algo := v.Metadata[MetaHashAlgo]
	if _, ok := HashSizes[algo]; !ok {
		algo = DefaultHashAlgo
	}
	pr, pw := io.Pipe()
	type put struct {
		info ObjectInfo
		err  error
	}
	putDone := make(chan put, 1)
	go func() {
		info, err := x.Staging.Put(ctx, *x.job.Target, pr, size)
		pr.CloseWithError(err)
		putDone <- put{info, err}
	}()
	dg, err := x.Copier.Drain(ctx, x.dev, pw, DrainRequest{Length: size, HashAlgo: algo,
		Progress: func(n int64) { x.event(ctx, StateProgress, n, false) }})
	pw.CloseWithError(err)
	p := <-putDone
	if err == nil {
		err = p.err
	}
	if err != nil {
		return Result{}, fmt.Errorf("export volume %s to %s: %w", v.ID, x.job.Target, err)
	}
	if want := v.Metadata[MetaChecksum]; want != "" && want != dg.MD5 {
		return Result{}, Permanentf("volume %s reads back with md5 %s, but was written with %s", v.ID, dg.MD5, want)
	}
	x.closeDevice()
	if err := x.detach(ctx); err != nil {
		return Result{}, err
	}
	t := *x.job.Target
	return Result{VolumeID: v.ID, Size: dg.Bytes, Checksum: dg.MD5, OSHashAlgo: dg.HashAlgo, OSHashValue: dg.HashValue,
		Target: &t, Location: x.location(v.ID)}, nil
}

func (x *run) delete(ctx context.Context) (Result, error) {
	_, _, err := x.ownVolume(ctx, x.job.VolumeID)
	if errors.Is(err, ErrNotFound) {
		return Result{VolumeID: x.job.VolumeID}, nil // already gone: deleting is idempotent
	}
	if err != nil {
		return Result{}, err
	}
	if err := x.step(ctx, StepCleanup); err != nil {
		return Result{}, err
	}
	if err := hold(ctx); err != nil {
		return Result{}, err
	}
	if x.Evict != nil {
		x.Evict(ctx, x.job.VolumeID)
	}
	if err := x.Volumes.DeleteVolume(ctx, x.job.VolumeID); err != nil {
		return Result{}, err
	}
	return Result{VolumeID: x.job.VolumeID}, nil
}
