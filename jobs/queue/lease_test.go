package queue

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
)

// twoWorkers opens two queues (two "worker processes") on one server.
func twoWorkers(t *testing.T, cfg Config) (*Queue, *Queue) {
	t.Helper()
	s, err := natsembed.Start(natsembed.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	open := func(name string) *Queue {
		nc, err := Connect(context.Background(), s.ClientURL(), ConnectOptions{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		c := cfg
		c.Worker = name
		q, err := Open(context.Background(), nc, c)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	return open("w1"), open("w2")
}

// claim is what a handler saw of its claim.
type claim struct {
	d     jobs.Delivery
	lease jobs.Lease
	prior *jobs.Result
	err   error
	ctx   context.Context
}

// claimer consumes jobs on q with slots, claims each, and hands the claim
// to the test; the handler heartbeats every beat (0: never, as a paused
// worker) and returns when its job stops or the claimer is stopped.
func claimer(t *testing.T, q *Queue, slots int, beat time.Duration) (<-chan claim, func()) {
	t.Helper()
	ch := make(chan claim, 8)
	quit := make(chan struct{})
	var once sync.Once
	stop := consume(t, q, slots, func(ctx context.Context, d jobs.Delivery) {
		jobCtx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		l, prior, err := d.(jobs.Fenced).Claim(ctx, "J", cancel)
		if l != nil {
			defer l.Close()
		}
		ch <- claim{d: d, lease: l, prior: prior, err: err, ctx: jobCtx}
		if err != nil || prior != nil {
			return
		}
		var tick <-chan time.Time
		if beat > 0 {
			tk := time.NewTicker(beat)
			defer tk.Stop()
			tick = tk.C
		}
		for {
			select {
			case <-quit:
				return
			case <-jobCtx.Done():
				return
			case <-tick:
				d.InProgress(ctx)
			}
		}
	})
	return ch, func() { once.Do(func() { close(quit); stop() }) }
}

func job(id string) jobs.Job { return deleteJob(id) }

func recv(t *testing.T, ch <-chan claim, within time.Duration) claim {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(within):
		t.Fatalf("no delivery within %v", within)
		return claim{}
	}
}

func TestAStaleDeliveryCannotFinishTheJobAnotherTookOver(t *testing.T) {
	ctx := context.Background()
	q1, q2 := twoWorkers(t, Config{AckWait: 2 * time.Second})
	if _, err := q1.Enqueue(ctx, job("J")); err != nil {
		t.Fatal(err)
	}
	ch1, stop1 := claimer(t, q1, 1, 0)
	defer stop1()
	first := recv(t, ch1, 5*time.Second)
	if first.err != nil || first.lease == nil || !first.lease.Valid() {
		t.Fatalf("first claim: %+v", first)
	}
	if err := first.lease.Hold(ctx); err != nil {
		t.Fatalf("hold while healthy: %v", err)
	}
	// The first worker goes silent (a paused process): the queue redelivers
	// the job to the second after AckWait.
	ch2, stop2 := claimer(t, q2, 2, 0)
	defer stop2()
	second := recv(t, ch2, 10*time.Second)
	if second.err != nil || second.d.Attempt() != 2 {
		t.Fatalf("second claim: err %v attempt %d", second.err, second.d.Attempt())
	}
	if first.lease.Valid() {
		t.Error("the silent delivery's lease is still valid past its ack wait")
	}
	if err := first.lease.Hold(ctx); !errors.Is(err, jobs.ErrLeaseLost) {
		t.Errorf("stale Hold: %v, want ErrLeaseLost", err)
	}
	if err := first.lease.Finish(ctx, &jobs.Result{VolumeID: "stale"}); !errors.Is(err, jobs.ErrLeaseLost) {
		t.Errorf("stale Finish: %v, want ErrLeaseLost", err)
	}
	if !errors.Is(context.Cause(first.ctx), jobs.ErrLeaseLost) {
		t.Errorf("the stale job's context: %v, want stopped with ErrLeaseLost", context.Cause(first.ctx))
	}
	// The new owner finishes; its result is what a later delivery reports.
	if err := second.lease.Finish(ctx, &jobs.Result{VolumeID: "v-2"}); err != nil {
		t.Fatalf("owner's Finish: %v", err)
	}
	if err := second.d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	second.lease.Close() // as the worker does when it is done with the delivery
	if _, err := q1.EnqueueRaw(ctx, Subject(jobs.KindDelete, "default"), mustEncode(t, job("J")), "J-again"); err != nil {
		t.Fatal(err)
	}
	third := recv(t, ch2, 5*time.Second)
	if third.err != nil || third.prior == nil || third.prior.VolumeID != "v-2" {
		t.Fatalf("a delivery of a completed job: %+v, want the result of v-2", third)
	}
}

func TestAnotherMessageOfARunningJobConflicts(t *testing.T) {
	ctx := context.Background()
	q1, q2 := twoWorkers(t, Config{AckWait: 10 * time.Second})
	q1.Enqueue(ctx, job("J"))
	ch1, stop1 := claimer(t, q1, 1, time.Second)
	defer stop1()
	first := recv(t, ch1, 5*time.Second)
	if first.err != nil {
		t.Fatal(first.err)
	}
	// Another worker: its claim finds the live lease. (The first worker's
	// only slot is busy: the second gets the message.)
	ch2, stop2 := claimer(t, q2, 1, 0)
	if _, err := q2.EnqueueRaw(ctx, Subject(jobs.KindDelete, "default"), mustEncode(t, job("J")), "J-dup"); err != nil {
		t.Fatal(err)
	}
	remote := recv(t, ch2, 5*time.Second)
	if !errors.Is(remote.err, jobs.ErrConflict) {
		t.Errorf("second message on another worker: %v, want ErrConflict", remote.err)
	}
	stop2()
	// The same worker, in another slot: its registry refuses before the
	// lease is even read.
	ch3, stop3 := claimer(t, q1, 1, 0)
	defer stop3()
	if _, err := q2.EnqueueRaw(ctx, Subject(jobs.KindDelete, "default"), mustEncode(t, job("J")), "J-dup2"); err != nil {
		t.Fatal(err)
	}
	local := recv(t, ch3, 5*time.Second)
	if !errors.Is(local.err, jobs.ErrConflict) {
		t.Errorf("second message on the same worker: %v, want ErrConflict", local.err)
	}
	if err := first.lease.Hold(ctx); err != nil {
		t.Errorf("the holder lost its lease to a conflicting message: %v", err)
	}
}

func TestCancelStopsARunningJobAndDropsAQueuedOne(t *testing.T) {
	ctx := context.Background()
	q, _ := startQueue(t, Config{AckWait: 5 * time.Second})
	q.Enqueue(ctx, job("J"))
	ch, stop := claimer(t, q, 1, 0)
	defer stop()
	running := recv(t, ch, 5*time.Second)
	if running.err != nil {
		t.Fatal(running.err)
	}
	if _, err := q.Cancel(ctx, "J", "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-running.ctx.Done():
		if !errors.Is(context.Cause(running.ctx), jobs.ErrCancelled) {
			t.Errorf("cause %v, want ErrCancelled", context.Cause(running.ctx))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancel request did not stop the running job")
	}
	if _, err := q.Cancel(ctx, "unknown", ""); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("cancel of an unknown job: %v", err)
	}
	// A job cancelled while queued is reported cancelled when claimed.
	running.lease.Finish(ctx, nil)
	running.d.Ack(ctx)
	stop()
	if _, err := q.Enqueue(ctx, job("Q")); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Cancel(ctx, "Q", ""); err != nil {
		t.Fatal(err)
	}
	ch2 := make(chan error, 1)
	stop2 := consume(t, q, 1, func(ctx context.Context, d jobs.Delivery) {
		l, _, err := d.(jobs.Fenced).Claim(ctx, "Q", func(error) {})
		if l != nil {
			l.Close()
		}
		d.Ack(ctx)
		ch2 <- err
	})
	defer stop2()
	select {
	case err := <-ch2:
		if !errors.Is(err, jobs.ErrCancelled) {
			t.Errorf("claim of a job cancelled while queued: %v, want ErrCancelled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued job not delivered")
	}
}

func TestEnqueueOfAJobThatRanIsADuplicateAfterTheWindow(t *testing.T) {
	ctx := context.Background()
	q, _ := startQueue(t, Config{Duplicates: time.Second})
	if r, err := q.Enqueue(ctx, job("D")); err != nil || r.Duplicate {
		t.Fatalf("first enqueue: %+v %v", r, err)
	}
	// Still queued: enqueueing again is harmless within the window...
	if r, err := q.Enqueue(ctx, job("D")); err != nil || !r.Duplicate {
		t.Fatalf("enqueue of a queued job within the window: %+v %v", r, err)
	}
	q.Publish(ctx, jobs.Event{JobID: "D", State: jobs.StateCompleted})
	time.Sleep(1500 * time.Millisecond) // past the window
	r, err := q.Enqueue(ctx, job("D"))
	if err != nil || !r.Duplicate || r.Status == nil || r.Status.State != jobs.StateCompleted {
		t.Fatalf("enqueue of a completed job after the window: %+v %v", r, err)
	}
	info, _ := q.jobs.Info(ctx)
	if info.State.Msgs != 1 {
		t.Errorf("%d messages on the stream, want 1", info.State.Msgs)
	}
	// With its own message id (the notification bridge's).
	r1, _ := q.Enqueue(ctx, job("E"), WithMsgID("bucket/key@etag"))
	r2, _ := q.Enqueue(ctx, job("E2"), WithMsgID("bucket/key@etag"))
	if r1.Duplicate || !r2.Duplicate {
		t.Errorf("message-id de-duplication: %+v %+v", r1, r2)
	}
}

func TestExhaustedJobsAreDeadLetteredEvenWithNoWatcherRunning(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q, _ := startQueue(t, Config{AckWait: time.Second, MaxDeliver: 1})
	q.Enqueue(ctx, job("J"))
	held := make(chan jobs.Lease, 1)
	stop := consume(t, q, 1, func(ctx context.Context, d jobs.Delivery) {
		l, _, err := d.(jobs.Fenced).Claim(ctx, "J", func(error) {})
		if err != nil {
			t.Error(err)
			return
		}
		held <- l // and hang: never ack, never heartbeat
	})
	lease := <-held
	defer lease.Close()
	time.Sleep(2500 * time.Millisecond) // the server announces the exhaustion to nobody
	stop()
	if dls, _ := q.DeadLetters(ctx); len(dls) != 0 {
		t.Fatalf("dead letters before any watcher ran: %+v", dls)
	}
	done := make(chan error, 1)
	go func() { done <- q.WatchMaxDeliveries(ctx) }()
	var dls []DeadLetter
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if dls, _ = q.DeadLetters(ctx); len(dls) > 0 {
			break
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(dls) != 1 || dls[0].JobID != "J" || !strings.Contains(dls[0].Reason, "exhausted 1 deliveries") {
		t.Fatalf("dead letters: %+v", dls)
	}
	if _, err := q.leases.Get(context.Background(), "J"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the exhausted job's lease is still there: %v", err)
	}
	if err := lease.Finish(context.Background(), &jobs.Result{}); !errors.Is(err, jobs.ErrLeaseLost) {
		t.Errorf("the hung worker could still finish the dead-lettered job: %v", err)
	}
}

func TestReplayByJobIDClearsLeaseAndCancel(t *testing.T) {
	ctx := context.Background()
	q, _ := startQueue(t, Config{})
	q.Enqueue(ctx, job("R"))
	var once sync.Once
	stop := consume(t, q, 1, func(ctx context.Context, d jobs.Delivery) {
		once.Do(func() {
			l, _, err := d.(jobs.Fenced).Claim(ctx, "R", func(error) {})
			if err != nil {
				t.Error(err)
				return
			}
			defer l.Close()
			d.DeadLetter(ctx, "missing object")
		})
	})
	var dls []DeadLetter
	for deadline := time.Now().Add(5 * time.Second); len(dls) == 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		dls, _ = q.DeadLetters(ctx)
	}
	stop()
	if len(dls) != 1 {
		t.Fatalf("dead letters: %+v", dls)
	}
	q.cancels.Put(ctx, "R", []byte(`{}`))
	if _, err := q.ReplayJob(ctx, "nope"); !errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("replay of a job with no dead letter: %v", err)
	}
	seq, err := q.ReplayJob(ctx, "R")
	if err != nil || seq != dls[0].Seq {
		t.Fatalf("replay: %d %v", seq, err)
	}
	if _, err := q.leases.Get(ctx, "R"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("lease after replay: %v", err)
	}
	got := make(chan error, 1)
	stop = consume(t, q, 1, func(ctx context.Context, d jobs.Delivery) {
		l, _, err := d.(jobs.Fenced).Claim(ctx, "R", func(error) {})
		if l != nil {
			l.Finish(ctx, &jobs.Result{})
			l.Close()
		}
		d.Ack(ctx)
		got <- err
	})
	defer stop()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("claim of the replayed job: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("replayed job not delivered")
	}
	if ev, _ := q.Status(ctx, "R"); ev.State != jobs.StateQueued {
		t.Errorf("status after replay: %s", ev.State)
	}
}

func mustEncode(t *testing.T, j jobs.Job) []byte {
	t.Helper()
	b, err := jobs.Encode(j)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
