package queue

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
)

func startQueue(t *testing.T, cfg Config) (*Queue, *nats.Conn) {
	t.Helper()
	s, err := natsembed.Start(natsembed.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	nc, err := Connect(context.Background(), s.ClientURL(), ConnectOptions{Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	q, err := Open(context.Background(), nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return q, nc
}

func deleteJob(id string) jobs.Job {
	return jobs.Job{Version: 1, ID: id, Kind: jobs.KindDelete, VolumeID: "v-" + id}
}

// consume runs Consume until the returned stop is called.
func consume(t *testing.T, q *Queue, slots int, h func(context.Context, jobs.Delivery)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Consume(ctx, "default", slots, h) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("consume: %v", err)
		}
	}
}

func TestEnqueueConsumeAckAndDuplicates(t *testing.T) {
	ctx := context.Background()
	q, _ := startQueue(t, Config{})
	r1, err := q.Enqueue(ctx, deleteJob("a1"))
	if err != nil || r1.Duplicate {
		t.Fatalf("first enqueue: %+v %v", r1, err)
	}
	r2, err := q.Enqueue(ctx, deleteJob("a1"))
	if err != nil || !r2.Duplicate {
		t.Fatalf("second enqueue of the same id: %+v %v, want Duplicate", r2, err)
	}
	if ev, err := q.Status(ctx, "a1"); err != nil || ev.State != jobs.StateQueued {
		t.Fatalf("status: %+v %v", ev, err)
	}
	var got atomic.Int32
	stop := consume(t, q, 2, func(ctx context.Context, d jobs.Delivery) {
		got.Add(1)
		if d.Attempt() != 1 {
			t.Errorf("attempt %d", d.Attempt())
		}
		d.Ack(ctx)
	})
	time.Sleep(1500 * time.Millisecond)
	stop()
	if got.Load() != 1 {
		t.Fatalf("%d deliveries, want 1", got.Load())
	}
	info, _ := q.jobs.Info(ctx)
	if info.State.Msgs != 0 {
		t.Errorf("%d messages left after ack", info.State.Msgs)
	}
}

func TestHeartbeatKeepsJobPastAckWait(t *testing.T) {
	q, _ := startQueue(t, Config{AckWait: time.Second})
	ctx := context.Background()
	q.Enqueue(ctx, deleteJob("long"))
	var deliveries atomic.Int32
	stop := consume(t, q, 2, func(ctx context.Context, d jobs.Delivery) {
		deliveries.Add(1)
		for range 8 { // 3.2 s of work, heartbeating every third of AckWait
			time.Sleep(330 * time.Millisecond)
			d.InProgress(ctx)
		}
		d.Ack(ctx)
	})
	time.Sleep(4500 * time.Millisecond)
	stop()
	if n := deliveries.Load(); n != 1 {
		t.Errorf("%d deliveries of a heartbeating job, want 1", n)
	}
}

func TestRetryDeadLetterAndReplay(t *testing.T) {
	ctx := context.Background()
	q, _ := startQueue(t, Config{})
	q.Enqueue(ctx, deleteJob("retry-me"))
	q.Enqueue(ctx, deleteJob("kill-me"))
	var mu sync.Mutex
	attempts := map[string][]time.Time{}
	stop := consume(t, q, 2, func(ctx context.Context, d jobs.Delivery) {
		j, _ := jobs.Decode(d.Data())
		mu.Lock()
		attempts[j.ID] = append(attempts[j.ID], time.Now())
		n := len(attempts[j.ID])
		mu.Unlock()
		switch {
		case j.ID == "kill-me":
			d.DeadLetter(ctx, "checksum mismatch: test")
		case n == 1:
			d.Retry(ctx, 700*time.Millisecond)
		default:
			d.Ack(ctx)
		}
	})
	time.Sleep(2500 * time.Millisecond)
	stop()
	mu.Lock()
	r := attempts["retry-me"]
	mu.Unlock()
	if len(r) != 2 || r[1].Sub(r[0]) < 600*time.Millisecond {
		t.Errorf("retry: %d attempts %v, want 2 at least 700 ms apart", len(r), r)
	}
	dls, err := q.DeadLetters(ctx)
	if err != nil || len(dls) != 1 || dls[0].JobID != "kill-me" || !strings.Contains(dls[0].Reason, "checksum mismatch") || dls[0].Attempts != 1 {
		t.Fatalf("dead letters: %+v %v", dls, err)
	}
	info, _ := q.jobs.Info(ctx)
	if info.State.Msgs != 0 {
		t.Errorf("%d jobs left", info.State.Msgs)
	}
	// Replay it: the same job id comes back despite the duplicate window.
	if err := q.Replay(ctx, dls[0].Seq); err != nil {
		t.Fatal(err)
	}
	var replayed atomic.Int32
	stop = consume(t, q, 1, func(ctx context.Context, d jobs.Delivery) { replayed.Add(1); d.Ack(ctx) })
	time.Sleep(1500 * time.Millisecond)
	stop()
	if replayed.Load() != 1 {
		t.Errorf("replayed job delivered %d times", replayed.Load())
	}
	if dls, _ := q.DeadLetters(ctx); len(dls) != 0 {
		t.Errorf("dead letter still there after replay: %+v", dls)
	}
}

func TestExhaustedDeliveriesAreDeadLettered(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q, _ := startQueue(t, Config{AckWait: time.Second, MaxDeliver: 2})
	go q.WatchMaxDeliveries(ctx)
	time.Sleep(100 * time.Millisecond)
	q.Enqueue(ctx, deleteJob("hang"))
	var n atomic.Int32
	stop := consume(t, q, 1, func(ctx context.Context, d jobs.Delivery) { n.Add(1) }) // never acks: a hung worker
	deadline := time.Now().Add(10 * time.Second)
	var dls []DeadLetter
	for time.Now().Before(deadline) {
		dls, _ = q.DeadLetters(ctx)
		if len(dls) > 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	stop()
	if len(dls) != 1 || dls[0].JobID != "hang" || !strings.Contains(dls[0].Reason, "exhausted 2 deliveries") {
		t.Fatalf("dead letters: %+v", dls)
	}
	if ev, _ := q.Status(ctx, "hang"); ev.State != jobs.StateFailed {
		t.Errorf("status %s, want failed", ev.State)
	}
	info, _ := q.jobs.Info(ctx)
	if info.State.Msgs != 0 {
		t.Errorf("exhausted job still on the jobs stream")
	}
}

func TestWatchAndTwoWorkersShareAZone(t *testing.T) {
	ctx := context.Background()
	q, _ := startQueue(t, Config{})
	const n = 20
	for i := range n {
		q.Enqueue(ctx, deleteJob("w"+string(rune('a'+i))))
	}
	var mu sync.Mutex
	seen := map[string]int{}
	h := func(ctx context.Context, d jobs.Delivery) {
		j, _ := jobs.Decode(d.Data())
		mu.Lock()
		seen[j.ID]++
		mu.Unlock()
		q.Publish(ctx, jobs.Event{JobID: j.ID, State: jobs.StateProgress, Bytes: 5})
		q.Publish(ctx, jobs.Event{JobID: j.ID, State: jobs.StateCompleted})
		d.Ack(ctx)
	}
	stop1, stop2 := consume(t, q, 2, h), consume(t, q, 2, h)
	var last jobs.Event
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := q.Watch(wctx, "wa", func(ev jobs.Event) bool { last = ev; return !ev.State.Terminal() }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	stop1()
	stop2()
	if last.State != jobs.StateCompleted {
		t.Errorf("watch ended on %s", last.State)
	}
	if len(seen) != n {
		t.Errorf("%d of %d jobs delivered", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("job %s delivered %d times", id, c)
		}
	}
}

func TestClusterSurvivesANode(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster")
	}
	c, err := natsembed.StartCluster(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown()
	ctx := context.Background()
	nc, err := Connect(ctx, c.URLs(), ConnectOptions{Name: "cluster-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	q, err := Open(ctx, nc, Config{Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	// A client (the enqueue CLI) opening the queue must not scale the
	// workers' replicated streams and buckets down to its defaults.
	if _, err := Open(ctx, nc, Config{Existing: true}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{JobsStream, DeadStream, AdvisoryStream, "KV_" + StatusBucket, "KV_" + LeaseBucket, "KV_" + CancelBucket} {
		s, err := q.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := s.Info(ctx); err != nil || info.Config.Replicas != 3 {
			t.Fatalf("%s after a client opened the queue: %v replicas (%v), want 3", name, info.Config.Replicas, err)
		}
	}
	q.Enqueue(ctx, deleteJob("before"))
	c.Servers[0].Shutdown()
	c.Servers[0] = nil
	var got atomic.Int32
	// Generous: on a loaded machine, re-electing the leaders of every
	// replicated stream and bucket after a node loss takes a while.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := q.Enqueue(ctx, deleteJob("after")); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("enqueue with a node down: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	stop := consume(t, q, 2, func(ctx context.Context, d jobs.Delivery) { got.Add(1); d.Ack(ctx) })
	for got.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	if got.Load() != 2 {
		t.Errorf("%d of 2 jobs consumed with a node down", got.Load())
	}
}

// TestStatusWritesKeepTheirOrder: running and progress statuses are not
// waited for, yet a job's terminal status, written right after a burst of
// them, is the one that stays; Flush waits for those not waited for.
func TestStatusWritesKeepTheirOrder(t *testing.T) {
	ctx := context.Background()
	var asyncErrs atomic.Int64
	q, _ := startQueue(t, Config{AsyncError: func(string, error) { asyncErrs.Add(1) }})
	for j := range 20 {
		id := "order-" + string(rune('a'+j))
		for i := range 50 {
			if err := q.Publish(ctx, jobs.Event{JobID: id, State: jobs.StateProgress, Bytes: int64(i)}); err != nil {
				t.Fatal(err)
			}
		}
		if j%2 == 0 {
			if err := q.Publish(ctx, jobs.Event{JobID: id, State: jobs.StateCompleted}); err != nil {
				t.Fatal(err)
			}
			if ev, err := q.Status(ctx, id); err != nil || ev.State != jobs.StateCompleted {
				t.Fatalf("status of %s right after its terminal event: %+v, %v; want completed", id, ev, err)
			}
		}
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := q.Flush(fctx); err != nil {
		t.Fatal(err)
	}
	if ev, err := q.Status(ctx, "order-b"); err != nil || ev.State != jobs.StateProgress || ev.Bytes != 49 {
		t.Errorf("status of a running job after Flush: %+v, %v; want its last progress (49 bytes)", ev, err)
	}
	if n := asyncErrs.Load(); n != 0 {
		t.Errorf("%d status writes failed", n)
	}
}
