package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

type plainDelivery struct{}

func (plainDelivery) Data() []byte                               { return []byte(`{}`) }
func (plainDelivery) Attempt() int                               { return 1 }
func (plainDelivery) InProgress(context.Context) error           { return nil }
func (plainDelivery) Ack(context.Context) error                  { return nil }
func (plainDelivery) Retry(context.Context, time.Duration) error { return nil }
func (plainDelivery) Release(context.Context) error              { return nil }
func (plainDelivery) DeadLetter(context.Context, string) error   { return nil }

type fenced struct {
	plainDelivery
	claimed *bool
}

func (f fenced) Claim(context.Context, string, context.CancelCauseFunc) (jobs.Lease, *jobs.Result, error) {
	*f.claimed = true
	return nil, nil, nil
}

// TestDeliveryKeepsFencing: the worker finds a queue's fencing by asserting
// jobs.Fenced on the delivery, so the metrics wrapper must not hide it (nor
// invent it).
func TestDeliveryKeepsFencing(t *testing.T) {
	m := New()
	var claimed bool
	d, done := m.Delivery(fenced{claimed: &claimed})
	f, ok := d.(jobs.Fenced)
	if !ok {
		t.Fatal("the wrapped delivery of a fenced queue is not jobs.Fenced")
	}
	f.Claim(context.Background(), "j", nil)
	done()
	if !claimed {
		t.Error("Claim did not reach the queue's delivery")
	}
	d, done = m.Delivery(plainDelivery{})
	defer done()
	if _, ok := d.(jobs.Fenced); ok {
		t.Error("a plain delivery became jobs.Fenced")
	}
}
