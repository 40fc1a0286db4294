package jobs

import (
	"context"
	"errors"
	"fmt"
)

// ErrLeaseLost is returned (wrapped) when a worker no longer owns the job it
// is running: no heartbeat of its delivery reached the queue within the ack
// wait (the queue may have handed the job to another worker), or another
// delivery of the job took it over, or the job was dead-lettered meanwhile.
// A job that lost its lease is left to its new owner: nothing is published,
// acked, retried or dead-lettered for it.
var ErrLeaseLost = errors.New("lease lost")

// Fenced is implemented by deliveries whose queue fences job ownership: at
// any time one delivery holds the job's lease, and only the holder may
// finish the job. A late acknowledgement from a stale worker would still be
// accepted by the queue, so the Worker checks the lease before every step
// that cannot be undone.
type Fenced interface {
	Delivery
	// Claim takes the job's lease for this delivery. From then on the
	// delivery calls stop with ErrCancelled (wrapped) when an operator
	// cancels the job, and with ErrLeaseLost (wrapped) when the lease is
	// lost. It returns:
	//   - the lease and, when the job already completed under an earlier
	//     delivery (whose ack was lost), that result: report it, do not run;
	//   - the lease and an error wrapping ErrCancelled when the job was
	//     cancelled before it ran: clean up, then finish the lease;
	//   - an error wrapping ErrConflict (and no lease) when another message
	//     of the same job holds a live lease: that one speaks for the job,
	//     this one is a redundant copy;
	//   - any other error when the queue could not be reached.
	// A non-nil lease must be closed.
	Claim(ctx context.Context, jobID string, stop context.CancelCauseFunc) (Lease, *Result, error)
}

// Lease is a delivery's hold on its job.
type Lease interface {
	// Token names this hold. The runner stamps it on the volume it creates
	// or adopts, so that after losing the lease it removes only a volume
	// that nobody adopted since.
	Token() string
	// Valid reports, without a round trip, whether the lease may still be
	// held: it lapses when no renewal succeeded within the ack wait.
	Valid() bool
	// Hold renews the lease, proving it is still this delivery's. It
	// returns an error wrapping ErrLeaseLost (and stops the job) once it is
	// not, or another error when the queue cannot be reached.
	Hold(ctx context.Context) error
	// Finish ends the lease, as the last step before the delivery is acked
	// or dead-lettered: with the result of a completed job (later
	// deliveries of the job then report it instead of running it), or nil
	// for a job that failed or was cancelled (so that a replay starts
	// afresh). It returns an error wrapping ErrLeaseLost when the lease was
	// lost: the caller must then leave the delivery alone.
	Finish(ctx context.Context, res *Result) error
	// Close releases what the lease holds in this process.
	Close()
}

type leaseKey struct{}

// WithLease returns ctx carrying the lease of the job run under it: the
// runner checks it before the steps that cannot be undone.
func WithLease(ctx context.Context, l Lease) context.Context {
	return context.WithValue(ctx, leaseKey{}, l)
}

// leaseFrom returns the lease ctx carries, or nil.
func leaseFrom(ctx context.Context) Lease {
	l, _ := ctx.Value(leaseKey{}).(Lease)
	return l
}

// hold renews the lease ctx carries, if any.
func hold(ctx context.Context) error {
	if l := leaseFrom(ctx); l != nil {
		return l.Hold(context.WithoutCancel(ctx))
	}
	return nil
}

// stopCause returns err annotated with why ctx was stopped, when it was
// stopped by an operator's cancel or the loss of the lease: the operations
// that noticed report only context.Canceled.
func stopCause(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	cause := context.Cause(ctx)
	if !errors.Is(cause, ErrCancelled) && !errors.Is(cause, ErrLeaseLost) {
		return err
	}
	if errors.Is(err, ErrCancelled) || errors.Is(err, ErrLeaseLost) {
		return err
	}
	return fmt.Errorf("%w (%v)", cause, err)
}
