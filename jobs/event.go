package jobs

import (
	"context"
	"time"
)

// State is a job's externally visible state, as published in events and in
// the status bucket.
type State string

// Job states.
const (
	StateQueued    State = "queued"
	StateRunning   State = "running"
	StateProgress  State = "progress"
	StateRetrying  State = "retrying"
	StateCompleted State = "completed"
	StateFailed    State = "failed" // permanently: the job is on the dead-letter subject
	StateCancelled State = "cancelled"
)

// Terminal reports whether no further event follows s.
func (s State) Terminal() bool {
	return s == StateCompleted || s == StateFailed || s == StateCancelled
}

// Event reports a job's progress or outcome. It never carries credentials.
type Event struct {
	JobID    string    `json:"job_id"`
	Kind     Kind      `json:"kind,omitempty"`
	State    State     `json:"state"`
	Step     Step      `json:"step,omitempty"`
	Attempt  int       `json:"attempt,omitempty"`
	Worker   string    `json:"worker,omitempty"`
	ImageID  string    `json:"image_id,omitempty"`
	VolumeID string    `json:"volume_id,omitempty"`
	Bytes    int64     `json:"bytes,omitempty"`
	Total    int64     `json:"total,omitempty"`
	Rate     float64   `json:"rate,omitempty"` // bytes per second over the last interval
	Error    string    `json:"error,omitempty"`
	Result   *Result   `json:"result,omitempty"`
	Time     time.Time `json:"time"`
}

// Events publishes job events (and keeps the latest per job as its status).
type Events interface {
	Publish(ctx context.Context, ev Event) error
}

// Delivery is one job message handed to a worker by the queue.
type Delivery interface {
	// Data is the raw message.
	Data() []byte
	// Attempt is the 1-based delivery count.
	Attempt() int
	// InProgress tells the queue the job is alive, resetting its ack timer.
	InProgress(ctx context.Context) error
	// Ack removes the job from the queue: it is done.
	Ack(ctx context.Context) error
	// Retry hands the job back for redelivery after delay.
	Retry(ctx context.Context, delay time.Duration) error
	// Release hands the job back at once without spending an attempt where
	// the queue allows it (graceful shutdown).
	Release(ctx context.Context) error
	// DeadLetter copies the message to the dead-letter subject with the
	// reason, then removes it from the queue.
	DeadLetter(ctx context.Context, reason string) error
}
