package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
)

// Buckets of job ownership and cancellation.
const (
	// LeaseBucket holds one entry per job being run (key: the job id): the
	// lease of the delivery that runs it. A delivery creates the entry, or
	// takes it over at the revision it read, and from then on renews it
	// with every heartbeat by an update at the revision it holds; a
	// conditional update that fails means another delivery took the job.
	// A completed job's entry keeps its result ("done"), so that a later
	// delivery of the same job reports it instead of running the job again;
	// a failed or cancelled job's entry is deleted, so that a replay starts
	// afresh. Entries expire with the status TTL.
	LeaseBucket = "cinderport_leases"
	// CancelBucket holds the operators' cancel requests (key: the job id).
	// Workers watch it to stop running jobs, and check it before they run
	// one, so that a cancel also reaches a job still queued. Requests expire
	// with the status TTL.
	CancelBucket = "cinderport_cancels"
)

// Lease states.
const (
	leaseHeld = "held"
	leaseDone = "done"
)

// leaseValue is a lease entry.
type leaseValue struct {
	State  string       `json:"state"`
	Token  string       `json:"token"`
	Worker string       `json:"worker,omitempty"`
	Seq    uint64       `json:"seq"` // the job message's stream sequence
	Time   time.Time    `json:"time"`
	Result *jobs.Result `json:"result,omitempty"`
}

// CancelRequest is the value of a cancel request.
type CancelRequest struct {
	Time   time.Time `json:"time"`
	Reason string    `json:"reason,omitempty"`
}

// registry knows the jobs this process runs, for cancel requests and local
// takeovers.
type registry struct {
	mu   sync.Mutex
	runs map[string]*delivery
}

func (r *registry) get(jobID string) *delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[jobID]
}

// put registers d for its job and returns the run of an earlier delivery
// of the same message it replaced; another message of the job running here
// is a conflict.
func (r *registry) put(d *delivery) (*delivery, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runs == nil {
		r.runs = map[string]*delivery{}
	}
	old := r.runs[d.jobID]
	if old != nil && old.seq != d.seq {
		return nil, fmt.Errorf("job %s is running on this worker under another message: %w", d.jobID, jobs.ErrConflict)
	}
	r.runs[d.jobID] = d
	return old, nil
}

func (r *registry) remove(d *delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runs[d.jobID] == d {
		delete(r.runs, d.jobID)
	}
}

// Running reports whether a delivery of the job is running in this process
// (it claimed the job's lease and has not finished).
func (q *Queue) Running(jobID string) bool { return q.runs.get(jobID) != nil }

// newToken returns a lease token: who holds the job, under which delivery.
func (d *delivery) newToken() string {
	var b [6]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s/%d.%d/%s", truncate(d.q.cfg.Worker, 64), d.seq, d.Attempt(), hex.EncodeToString(b[:]))
}

// Claim implements jobs.Fenced.
func (d *delivery) Claim(ctx context.Context, jobID string, stop context.CancelCauseFunc) (jobs.Lease, *jobs.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d.jobID, d.stop, d.token = jobID, stop, d.newToken()
	// One run of a job per process. A redelivery of the message another
	// run here holds takes the job over once that run has handed it over;
	// another message of the same job waits for its turn.
	old, err := d.q.runs.put(d)
	if err != nil {
		return nil, nil, err
	}
	if old != nil {
		old.lose(fmt.Errorf("%w: the job was delivered again", jobs.ErrLeaseLost))
		select {
		case <-old.closed:
		case <-ctx.Done():
		}
	}
	prior, err := d.acquire(ctx)
	if err != nil {
		d.q.runs.remove(d)
		return nil, nil, err
	}
	if prior != nil {
		return d, prior, nil
	}
	if _, err := d.q.cancels.Get(ctx, jobID); err == nil {
		return d, nil, fmt.Errorf("job %s: %w by an operator", jobID, jobs.ErrCancelled)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		d.q.runs.remove(d)
		return nil, nil, fmt.Errorf("check for a cancel of job %s: %w", jobID, err)
	}
	return d, nil, nil
}

// acquire creates the lease entry, or takes it over when it is this
// message's (a redelivery: the queue gave up on the previous delivery) or
// stale (its holder stopped renewing it long ago). It returns the result of
// a job already done.
func (d *delivery) acquire(ctx context.Context) (*jobs.Result, error) {
	for range 8 {
		t0 := time.Now()
		d.msg.InProgress() // the claim counts as a heartbeat
		val := d.value(leaseHeld, nil)
		e, err := d.q.leases.Get(ctx, d.jobID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			rev, err := d.q.leases.Create(ctx, d.jobID, val)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("create the lease of job %s: %w", d.jobID, err)
			}
			d.held(rev, t0)
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the lease of job %s: %w", d.jobID, err)
		}
		var cur leaseValue
		if err := json.Unmarshal(e.Value(), &cur); err != nil {
			cur = leaseValue{} // unreadable: take it over
		}
		switch {
		case cur.State == leaseDone && cur.Result != nil:
			d.held(e.Revision(), t0)
			return cur.Result, nil
		case cur.State == leaseHeld && cur.Seq != d.seq && time.Since(cur.Time) < 2*d.q.cfg.AckWait:
			return nil, fmt.Errorf("job %s is held by %s: %w", d.jobID, cur.Worker, jobs.ErrConflict)
		}
		rev, err := d.q.leases.Update(ctx, d.jobID, val, e.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("take over the lease of job %s: %w", d.jobID, err)
		}
		d.held(rev, t0)
		return nil, nil
	}
	return nil, fmt.Errorf("job %s: its lease keeps changing: %w", d.jobID, jobs.ErrConflict)
}

func (d *delivery) value(state string, res *jobs.Result) []byte {
	return d.q.mustJSON(leaseValue{State: state, Token: d.token, Worker: d.q.cfg.Worker, Seq: d.seq, Time: time.Now().UTC(), Result: res})
}

// held records a successful write of the lease at rev, started at t0: the
// queue will not redeliver the job before t0 + AckWait, since a heartbeat
// went out just before the write.
func (d *delivery) held(rev uint64, t0 time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rev, d.validUntil = rev, t0.Add(d.q.cfg.AckWait)
}

// Token implements jobs.Lease.
func (d *delivery) Token() string { return d.token }

// Valid implements jobs.Lease. The margin leaves room for the step about to
// be taken: past it, the queue may redeliver the job any moment.
func (d *delivery) Valid() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.lost && time.Until(d.validUntil) > d.q.cfg.AckWait/4
}

// Hold implements jobs.Lease: a heartbeat, then an update of the lease at
// the revision this delivery holds. A delivery that went without a
// successful renewal for most of the ack wait (a paused process, a long
// network partition) gives the job up even if nobody took it yet: the queue
// redelivers it, and the next delivery must not race this one.
func (d *delivery) Hold(ctx context.Context) error {
	if !d.Valid() {
		return d.lose(fmt.Errorf("%w: no renewal of the lease of job %s within its ack wait", jobs.ErrLeaseLost, d.jobID))
	}
	ctx, cancel := context.WithTimeout(ctx, d.q.cfg.AckWait/4)
	defer cancel()
	t0 := time.Now()
	if err := d.msg.InProgress(); err != nil {
		return fmt.Errorf("heartbeat of job %s: %w", d.jobID, err)
	}
	d.mu.Lock()
	rev := d.rev
	d.mu.Unlock()
	rev, err := d.q.leases.Update(ctx, d.jobID, d.value(leaseHeld, nil), rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return d.lose(fmt.Errorf("%w: job %s was taken over or dead-lettered", jobs.ErrLeaseLost, d.jobID))
	}
	if err != nil {
		return fmt.Errorf("renew the lease of job %s: %w", d.jobID, err)
	}
	d.held(rev, t0)
	return nil
}

// lose marks the lease lost and stops the job; it returns err.
func (d *delivery) lose(err error) error {
	d.mu.Lock()
	first := !d.lost
	d.lost = true
	d.mu.Unlock()
	if first && d.stop != nil {
		d.stop(err)
	}
	return err
}

// cancel stops the job for an operator.
func (d *delivery) cancel() {
	if d.stop != nil {
		d.stop(fmt.Errorf("job %s: %w by an operator", d.jobID, jobs.ErrCancelled))
	}
}

// Finish implements jobs.Lease.
func (d *delivery) Finish(ctx context.Context, res *jobs.Result) error {
	if !d.Valid() {
		return d.lose(fmt.Errorf("%w: no renewal of the lease of job %s within its ack wait", jobs.ErrLeaseLost, d.jobID))
	}
	ctx, cancel := context.WithTimeout(ctx, d.q.cfg.AckWait/4)
	defer cancel()
	d.mu.Lock()
	rev := d.rev
	d.mu.Unlock()
	var err error
	if res != nil {
		_, err = d.q.leases.Update(ctx, d.jobID, d.value(leaseDone, res), rev)
	} else {
		err = d.q.leases.Delete(ctx, d.jobID, jetstream.LastRevision(rev))
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return d.lose(fmt.Errorf("%w: job %s was taken over or dead-lettered", jobs.ErrLeaseLost, d.jobID))
	}
	if err != nil {
		return fmt.Errorf("finish the lease of job %s: %w", d.jobID, err)
	}
	return nil
}

// Close implements jobs.Lease.
func (d *delivery) Close() {
	d.q.runs.remove(d)
	d.closeOnce.Do(func() { close(d.closed) })
}

// Cancel asks the workers to cancel a job: a running one stops within
// moments and is cleaned up, a queued one is dropped when a worker picks it
// up. It returns the job's status at the time of the request, or an error
// wrapping jobs.ErrNotFound for an unknown job.
func (q *Queue) Cancel(ctx context.Context, jobID string, reason string) (jobs.Event, error) {
	ev, err := q.Status(ctx, jobID)
	if err != nil {
		return ev, err
	}
	if ev.State.Terminal() {
		return ev, nil
	}
	if _, err := q.cancels.Put(ctx, jobID, q.mustJSON(CancelRequest{Time: time.Now().UTC(), Reason: reason})); err != nil {
		return ev, fmt.Errorf("request the cancel of job %s: %w", jobID, err)
	}
	return ev, nil
}

// dispatchCancels stops the runs of this process whose job an operator
// cancels, until ctx ends.
func (q *Queue) dispatchCancels(ctx context.Context, w jetstream.KeyWatcher) {
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				continue
			}
			if d := q.runs.get(e.Key()); d != nil {
				d.cancel()
			}
		}
	}
}

// dropLease deletes a job's lease if it still belongs to the message at
// stream sequence seq (or is unreadable), fencing off whoever holds it.
func (q *Queue) dropLease(ctx context.Context, jobID string, seq uint64) bool {
	e, err := q.leases.Get(ctx, jobID)
	if err != nil {
		return errors.Is(err, jetstream.ErrKeyNotFound)
	}
	var cur leaseValue
	if json.Unmarshal(e.Value(), &cur) == nil && seq != 0 && cur.Seq != seq {
		return false
	}
	return q.leases.Delete(ctx, jobID, jetstream.LastRevision(e.Revision())) == nil
}
