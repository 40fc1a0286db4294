package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/tests/harness"
)

var (
	queueJobs        = flag.Int("bench.queue-jobs", 200, "tiny jobs per throughput round")
	queueProbes      = flag.Int("bench.queue-probes", 100, "jobs enqueued one at a time to an idle queue, for enqueue-to-start latency")
	queueConcurrency = flag.Int("bench.queue-concurrency", 1, "--concurrency of each worker in the queue benchmark")
)

// jobClock records when each job's events arrived.
type jobClock struct {
	mu      sync.Mutex
	started map[string]time.Time
	ended   map[string]time.Time
	failed  map[string]string
	notify  chan struct{}
}

func watchEvents(b *testing.B, nc *nats.Conn) *jobClock {
	c := &jobClock{started: map[string]time.Time{}, ended: map[string]time.Time{}, failed: map[string]string{}, notify: make(chan struct{}, 1)}
	sub, err := nc.Subscribe("cinderport.events.>", func(m *nats.Msg) {
		now := time.Now()
		var ev jobs.Event
		if json.Unmarshal(m.Data, &ev) != nil {
			return
		}
		c.mu.Lock()
		switch {
		case ev.State == jobs.StateRunning:
			if _, ok := c.started[ev.JobID]; !ok {
				c.started[ev.JobID] = now
			}
		case ev.State.Terminal():
			c.ended[ev.JobID] = now
			if ev.State != jobs.StateCompleted {
				c.failed[ev.JobID] = ev.Error
			}
		}
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default:
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sub.Unsubscribe() })
	return c
}

// waitEnded waits until every id has ended, and fails on a failed job.
func (c *jobClock) waitEnded(ctx context.Context, b *testing.B, ids []string) {
	for {
		c.mu.Lock()
		n := 0
		for _, id := range ids {
			if _, ok := c.ended[id]; ok {
				n++
			}
			if msg, bad := c.failed[id]; bad {
				c.mu.Unlock()
				b.Fatalf("job %s failed: %s", id, msg)
			}
		}
		c.mu.Unlock()
		if n == len(ids) {
			return
		}
		select {
		case <-c.notify:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			b.Fatalf("%d of %d jobs ended before the deadline", n, len(ids))
		}
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkQueue measures enqueue-to-start latency on an idle queue and the
// throughput of tiny upload jobs (local volumes) with 1, 2 and 4 workers
// sharing one zone's consumer.
func BenchmarkQueue(b *testing.B) {
	if b.N > 1 {
		b.Skip("runs once: use -benchtime 1x")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	slots := strconv.Itoa(*queueConcurrency)
	first := harness.StartWorker(b, harness.WorkerOptions{BinDir: binDir, Args: []string{"--concurrency", slots}})
	ep := first.Endpoints
	nc, err := queue.Connect(ctx, ep.NATSURL, queue.ConnectOptions{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	q, err := queue.Open(ctx, nc, queue.Config{Existing: true})
	if err != nil {
		b.Fatal(err)
	}
	st, err := staging.New(staging.Config{Endpoint: ep.S3Endpoint, AccessKey: ep.S3AccessKey, SecretKey: ep.S3SecretKey})
	if err != nil {
		b.Fatal(err)
	}
	src := jobs.Object{Bucket: ep.Bucket, Key: "bench/tiny"}
	if _, err := st.Put(ctx, src, bytes.NewReader(bytes.Repeat([]byte{0xa5}, 4096)), 4096); err != nil {
		b.Fatal(err)
	}
	clock := watchEvents(b, nc)
	run := strconv.FormatUint(rand.Uint64()%1e9, 36)
	job := func(id string) jobs.Job {
		return jobs.Job{Version: jobs.Version, ID: id, Kind: jobs.KindUpload, ImageID: id, Source: &src, Size: 4096}
	}

	// Latency: one job at a time into an idle queue.
	var lat []time.Duration
	for i := range *queueProbes {
		id := fmt.Sprintf("lat-%s-%d", run, i)
		t0 := time.Now()
		if _, err := q.Enqueue(ctx, job(id)); err != nil {
			b.Fatal(err)
		}
		clock.waitEnded(ctx, b, []string{id})
		clock.mu.Lock()
		lat = append(lat, clock.started[id].Sub(t0))
		clock.mu.Unlock()
	}
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	ls := report.section(30, "Queue: enqueue-to-start latency, idle queue (one job at a time, "+strconv.Itoa(len(lat))+" jobs)",
		"p50 ms", "p90 ms", "p99 ms", "max ms")
	ls.add(ms(p50), ms(percentile(lat, 0.90)), ms(p99), ms(percentile(lat, 1)))
	ls.note("From the publish of the job to the worker's first `running` event, as seen by a subscriber on the same host.")
	report.target("enqueue-to-start p99 on loopback", "≤ 50 ms", fmt.Sprintf("%.1f ms", ms(p99)), p99 <= 50*time.Millisecond)

	// Throughput: a burst of tiny jobs, 1, 2 and 4 workers.
	ts := report.section(31, fmt.Sprintf("Queue: throughput of %d tiny upload jobs (4 KiB, local volumes), --concurrency %s per worker", *queueJobs, slots),
		"workers", "seconds", "jobs/s", "× 1 worker", "start p50 ms", "start p99 ms")
	workers := []*harness.Worker{first}
	var base float64
	var twoX float64
	for _, n := range []int{1, 2, 4} {
		for len(workers) < n {
			workers = append(workers, harness.StartWorker(b, harness.WorkerOptions{BinDir: binDir, Args: []string{
				"--concurrency", slots, "--name", fmt.Sprintf("bench-%d", len(workers)+1),
				"--nats-url", ep.NATSURL, "--s3-endpoint", ep.S3Endpoint, "--s3-access-key", ep.S3AccessKey,
				"--s3-secret-key", ep.S3SecretKey, "--bucket", ep.Bucket}}))
		}
		ids := make([]string, *queueJobs)
		enq := make(map[string]time.Time, len(ids))
		t0 := time.Now()
		for i := range ids {
			ids[i] = fmt.Sprintf("tp%d-%s-%d", n, run, i)
			enq[ids[i]] = time.Now()
			if _, err := q.Enqueue(ctx, job(ids[i])); err != nil {
				b.Fatal(err)
			}
		}
		clock.waitEnded(ctx, b, ids)
		clock.mu.Lock()
		var last time.Time
		var starts []time.Duration
		for _, id := range ids {
			if e := clock.ended[id]; e.After(last) {
				last = e
			}
			starts = append(starts, clock.started[id].Sub(enq[id]))
		}
		clock.mu.Unlock()
		secs := last.Sub(t0).Seconds()
		rate := float64(len(ids)) / secs
		if n == 1 {
			base = rate
		}
		if n == 2 {
			twoX = rate / base
		}
		ts.add(n, secs, rate, rate/base, ms(percentile(starts, 0.5)), ms(percentile(starts, 0.99)))
	}
	ts.note("Workers are separate processes sharing one zone's durable consumer; each has its own journal and local volumes. " +
		"Start latencies in a burst include the time a job waits behind the others.")
	report.target("tiny-job throughput, 2 workers vs 1", "≥ 1.7×", fmt.Sprintf("%.2f×", twoX), twoX >= 1.7)
	b.ReportMetric(ms(p99), "p99-start-ms")
	b.ReportMetric(twoX, "2w/1w")
}
