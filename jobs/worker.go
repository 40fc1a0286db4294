package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// WorkerConfig tunes how a worker treats deliveries.
type WorkerConfig struct {
	// Name identifies this worker in events.
	Name string
	// MaxAttempts is the delivery on which a retryable failure is final: the
	// job is cleaned up and dead-lettered instead of retried. It should
	// equal the queue's MaxDeliver. Default 5.
	MaxAttempts int
	// Heartbeat is how often a running job tells the queue it is alive
	// (AckWait/3). Default 20 s.
	Heartbeat time.Duration
	// Backoff returns the delay before attempt n+1 after attempt n failed.
	// Default: 5 s doubling, capped at 5 minutes.
	Backoff func(attempt int) time.Duration
}

func (c WorkerConfig) withDefaults() WorkerConfig {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 20 * time.Second
	}
	if c.Backoff == nil {
		c.Backoff = DefaultBackoff
	}
	return c
}

// DefaultBackoff is 5 s doubling per attempt, capped at 5 minutes.
func DefaultBackoff(attempt int) time.Duration {
	d := 5 * time.Second
	for i := 1; i < attempt && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

// Worker turns queue deliveries into runner executions and decides, from
// the error's type, whether a job is acked, retried, handed back or
// dead-lettered.
type Worker struct {
	Runner *Runner
	Events Events
	Log    zerolog.Logger
	Config WorkerConfig
}

// Handle processes one delivery to its end: it never returns before the
// message was acked, handed back or dead-lettered — or, for a delivery
// whose job lost its lease, left to the job's new owner. When ctx is
// cancelled (shutdown past its grace period), the running job is
// interrupted and handed back without spending an attempt. A job an
// operator cancels stops at once, is cleaned up, and is recorded as
// cancelled.
func (w *Worker) Handle(ctx context.Context, d Delivery) {
	cfg := w.Config.withDefaults()
	ack := context.WithoutCancel(ctx)
	job, err := Decode(d.Data())
	if err != nil {
		id := looseID(d.Data())
		w.Log.Warn().Err(err).Str("job_id", id).Msg("rejecting malformed job")
		w.deadLetter(ack, d, Job{ID: id}, err)
		return
	}
	job.Normalize()
	log := w.Log.With().Str("job_id", job.ID).Str("kind", string(job.Kind)).Int("attempt", d.Attempt()).Logger()

	// The job runs under its own context, which the delivery stops with
	// the cause when an operator cancels the job or its lease is lost.
	jobCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var lease Lease
	if f, ok := d.(Fenced); ok {
		l, prior, err := f.Claim(ack, job.ID, stop)
		if l != nil {
			defer l.Close()
		}
		switch {
		case errors.Is(err, ErrConflict):
			// The message that holds the live lease is still queued: it
			// is finished, retried or dead-lettered on its own, so this
			// copy of the job is redundant.
			log.Info().Err(err).Msg("another message of the job is running: dropping this duplicate")
			if err := d.Ack(ack); err != nil {
				log.Error().Err(err).Msg("ack duplicate job")
			}
			return
		case errors.Is(err, ErrCancelled):
			log.Info().Msg("job was cancelled before it ran")
			if cerr := w.Runner.Abandon(ack, job, err); cerr != nil {
				log.Error().Err(cerr).Msg("clean up cancelled job: will retry")
				w.retry(ack, d, l, job, cerr, cfg, log)
				return
			}
			w.cancelled(ack, d, l, job, err, log)
			return
		case err != nil:
			log.Warn().Err(err).Msg("claim job: will retry")
			w.retry(ack, d, nil, job, err, cfg, log)
			return
		case prior != nil:
			log.Info().Msg("job completed under an earlier delivery: reporting its result")
			w.complete(ack, d, l, job, *prior, log)
			return
		}
		lease = l
		jobCtx = WithLease(jobCtx, l)
	}
	log.Info().Msg("job started")

	hbCtx, stopHeartbeat := context.WithCancel(ack)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(cfg.Heartbeat)
		defer t.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-t.C:
				// A fenced delivery renews its lease here too, and stops
				// the job at once when the renewal finds it lost.
				if err := d.InProgress(hbCtx); err != nil {
					log.Warn().Err(err).Msg("heartbeat")
				}
			}
		}
	}()
	res, err := w.Runner.Run(jobCtx, job, d.Attempt())
	stopHeartbeat()
	wg.Wait()

	switch {
	case errors.Is(err, ErrLeaseLost):
		log.Warn().Err(err).Msg("job lost to another delivery: leaving it")
	case err == nil:
		w.complete(ack, d, lease, job, res, log)
	case ctx.Err() != nil && !IsPermanent(err):
		if !held(ack, lease, log) {
			return
		}
		log.Info().Err(err).Msg("job interrupted by shutdown: handing it back")
		w.publish(ack, Event{JobID: job.ID, Kind: job.Kind, State: StateQueued, ImageID: job.ImageID, Error: "worker shut down"})
		if err := d.Release(ack); err != nil {
			log.Error().Err(err).Msg("hand back job")
		}
	case errors.Is(err, ErrCancelled):
		w.cancelled(ack, d, lease, job, err, log)
	case IsPermanent(err):
		if !held(ack, lease, log) {
			return
		}
		log.Warn().Err(err).Msg("job failed permanently")
		w.deadLetter(ack, d, job, err)
		finishLease(ack, lease, log)
	case d.Attempt() >= cfg.MaxAttempts:
		if !held(ack, lease, log) {
			return
		}
		err = fmt.Errorf("gave up after %d attempts: %w", d.Attempt(), err)
		log.Warn().Err(err).Msg("job failed")
		if cerr := w.Runner.Abandon(ack, job, err); cerr != nil {
			log.Error().Err(cerr).Msg("clean up abandoned job")
		}
		w.deadLetter(ack, d, job, err)
		finishLease(ack, lease, log)
	default:
		w.retry(ack, d, lease, job, err, cfg, log)
	}
}

// complete records the result under the lease first — so that a delivery
// that takes the job over from here reports it instead of running the job
// again — then publishes it and acks.
func (w *Worker) complete(ctx context.Context, d Delivery, l Lease, job Job, res Result, log zerolog.Logger) {
	if l != nil {
		if err := l.Finish(ctx, &res); err != nil {
			log.Warn().Err(err).Msg("job finished, but its lease could not be confirmed: leaving it to its next delivery")
			return
		}
	}
	w.publish(ctx, Event{JobID: job.ID, Kind: job.Kind, State: StateCompleted, Step: StepDone, ImageID: job.ImageID,
		VolumeID: res.VolumeID, Bytes: res.Size, Total: res.Size, Result: &res})
	if err := d.Ack(ctx); err != nil {
		log.Error().Err(err).Msg("ack completed job")
	}
	log.Info().Str("location", res.Location).Int64("bytes", res.Size).Msg("job completed")
}

// cancelled records a cancelled job (already cleaned up) and acks it.
func (w *Worker) cancelled(ctx context.Context, d Delivery, l Lease, job Job, err error, log zerolog.Logger) {
	if !held(ctx, l, log) {
		return
	}
	w.publish(ctx, Event{JobID: job.ID, Kind: job.Kind, State: StateCancelled, ImageID: job.ImageID, Error: err.Error()})
	if err := d.Ack(ctx); err != nil {
		log.Error().Err(err).Msg("ack cancelled job")
	}
	finishLease(ctx, l, log)
	log.Info().Msg("job cancelled")
}

// retry hands the job back for another attempt after a backoff.
func (w *Worker) retry(ctx context.Context, d Delivery, l Lease, job Job, err error, cfg WorkerConfig, log zerolog.Logger) {
	if !held(ctx, l, log) {
		return
	}
	delay := max(cfg.Backoff(d.Attempt()), RetryDelay(err))
	log.Warn().Err(err).Dur("retry_in", delay).Msg("job failed: will retry")
	w.publish(ctx, Event{JobID: job.ID, Kind: job.Kind, State: StateRetrying, ImageID: job.ImageID, Error: err.Error()})
	if err := d.Retry(ctx, delay); err != nil {
		log.Error().Err(err).Msg("schedule retry")
	}
}

// held confirms the lease, when there is one, before the delivery is acted
// on: a stale worker must not ack, hand back or dead-letter a job that
// another worker now runs.
func held(ctx context.Context, l Lease, log zerolog.Logger) bool {
	if l == nil {
		return true
	}
	if err := l.Hold(ctx); err != nil {
		log.Warn().Err(err).Msg("the job's lease could not be confirmed: leaving the job to its next delivery")
		return false
	}
	return true
}

// finishLease ends the lease of a job that failed or was cancelled.
func finishLease(ctx context.Context, l Lease, log zerolog.Logger) {
	if l == nil {
		return
	}
	if err := l.Finish(ctx, nil); err != nil {
		log.Warn().Err(err).Msg("end the job's lease")
	}
}

func (w *Worker) deadLetter(ctx context.Context, d Delivery, job Job, err error) {
	reason := err.Error()
	if err := d.DeadLetter(ctx, reason); err != nil {
		w.Log.Error().Err(err).Str("job_id", job.ID).Msg("dead-letter job")
		return
	}
	if job.ID != "" {
		w.publish(ctx, Event{JobID: job.ID, Kind: job.Kind, State: StateFailed, ImageID: job.ImageID, Error: reason})
	}
}

func (w *Worker) publish(ctx context.Context, ev Event) {
	if w.Events == nil || !idPattern.MatchString(ev.JobID) {
		return
	}
	ev.Worker = w.Config.Name
	ev.Time = time.Now().UTC()
	if err := w.Events.Publish(ctx, ev); err != nil {
		w.Log.Warn().Err(err).Str("job_id", ev.JobID).Msg("publish event")
	}
}

// looseID digs a job id out of a message that failed validation, so that
// its status can still say why.
func looseID(data []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	if len(data) > MaxMessageBytes || json.Unmarshal(data, &v) != nil || !idPattern.MatchString(v.ID) {
		return ""
	}
	return v.ID
}
