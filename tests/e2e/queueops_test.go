package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/staging/s3local"
	"github.com/cinderport/cinderport/state"
)

// startNATS runs a nats-server in the test process: shared by several
// worker processes, and alive while one of them is paused.
func startNATS(t *testing.T) string {
	t.Helper()
	s, err := natsembed.Start(natsembed.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// openQueue connects the test to the queue at url.
func openQueue(t *testing.T, url string) (*queue.Queue, *nats.Conn) {
	t.Helper()
	nc, err := queue.Connect(context.Background(), url, queue.ConnectOptions{Name: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	q, err := queue.Open(context.Background(), nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return q, nc
}

// waitFor watches the job's status until cond holds, and returns that
// event; it fails the test after within.
func waitFor(t *testing.T, q *queue.Queue, jobID string, within time.Duration, what string, cond func(jobs.Event) bool) jobs.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var last, hit jobs.Event
	ok := false
	q.Watch(ctx, jobID, func(ev jobs.Event) bool {
		last = ev
		if cond(ev) {
			hit, ok = ev, true
			return false
		}
		return true
	})
	if !ok {
		t.Fatalf("job %s: no %s within %v (last status %+v)", jobID, what, within, last)
	}
	return hit
}

func terminal(ev jobs.Event) bool { return ev.State.Terminal() }

func (w *worker) signal(sig syscall.Signal) {
	w.t.Helper()
	if err := w.Signal(sig); err != nil {
		w.t.Fatalf("signal %v: %v", sig, err)
	}
}

// volumeDir is where the worker's local volumes live.
func (w *worker) volumeDir() string { return filepath.Join(w.DataDir, "volumes") }

// openFiles lists the worker's open files under dir.
func (w *worker) openFiles(dir string) []string {
	var out []string
	fds, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(w.Pid()), "fd", "*"))
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, dir) {
			out = append(out, target)
		}
	}
	return out
}

// putFile stages a local file.
func putFile(t *testing.T, sc *staging.Client, o jobs.Object, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if _, err := sc.Put(context.Background(), o, f, st.Size()); err != nil {
		t.Fatal(err)
	}
}

// journal reads the stopped worker's journal records.
func (w *worker) journal() map[string]jobs.Record {
	w.t.Helper()
	select {
	case <-w.Done():
	default:
		w.t.Fatal("journal: the worker still runs (it holds the journal's lock)")
	}
	j, err := state.Open(filepath.Join(w.DataDir, "journal.db"), state.Options{})
	if err != nil {
		w.t.Fatal(err)
	}
	defer j.Close()
	recs, err := j.List(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[string]jobs.Record{}
	for _, r := range recs {
		out[r.JobID] = r
	}
	return out
}

// sidecars lists the local volumes' metadata files (with their
// attachments).
func (w *worker) sidecars() []string {
	m, _ := filepath.Glob(filepath.Join(w.volumeDir(), "*.json"))
	return m
}

func TestCancelStopsARunningUploadAndDropsAQueuedOne(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB upload: not in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Checkpoints every MiB (a drain, a flush and a journal write each)
	// keep the copy going for a few seconds.
	w := startWorker(t, "", "--concurrency", "1", "--checkpoint-every", "1048576")
	q, _ := openQueue(t, w.Endpoints.NATSURL)
	big := makeImage(t, 1<<30, 11)
	small := makeImage(t, 2<<20, 12)
	if _, stderr, code := w.enqueue(ctx, "upload", "--file", big.path, "--job-id", "cancel-big"); code != 0 {
		t.Fatalf("upload: exit %d: %s", code, stderr)
	}
	watched := make(chan string, 1)
	go func() {
		out, _, _ := w.enqueue(ctx, "watch", "cancel-big")
		watched <- out
	}()
	ev := waitFor(t, q, "cancel-big", 2*time.Minute, "progress", func(ev jobs.Event) bool {
		return ev.State == jobs.StateProgress && ev.Bytes > 0 || ev.State.Terminal()
	})
	if ev.State.Terminal() {
		t.Fatalf("the upload ended (%s) before it could be cancelled", ev.State)
	}
	// Progress is visible in status: bytes, share, rate, step.
	out, _, code := w.enqueue(ctx, "status", "cancel-big")
	if code != 0 || !strings.Contains(out, "progress") || !strings.Contains(out, "step=copying") || !strings.Contains(out, "%)") || !strings.Contains(out, "/s") {
		t.Errorf("status of a running upload: exit %d: %q", code, out)
	}
	// A second job waits behind it (one slot): cancel it while queued.
	if _, stderr, code := w.enqueue(ctx, "upload", "--file", small.path, "--job-id", "cancel-queued"); code != 0 {
		t.Fatalf("upload: exit %d: %s", code, stderr)
	}
	out, stderr, code := w.enqueue(ctx, "cancel", "cancel-queued")
	if code != 0 || !strings.Contains(out, "a worker drops it") {
		t.Errorf("cancel of a queued job: exit %d: %s %s", code, out, stderr)
	}
	start := time.Now()
	out, stderr, code = w.enqueue(ctx, "cancel", "cancel-big")
	took := time.Since(start)
	t.Logf("cancel of a running 1 GiB upload: %v from request to cancelled (%s)", took.Round(time.Millisecond), strings.TrimSpace(out))
	if code != 0 || !strings.Contains(out, "cancelled in") {
		t.Fatalf("cancel: exit %d: %s %s", code, out, stderr)
	}
	if took > 30*time.Second { // the bound is 5 s; this one only catches a cancel that waited for the copy to end
		t.Errorf("cancel took %v", took)
	}
	if ev, _ := q.Status(ctx, "cancel-big"); ev.State != jobs.StateCancelled || ev.Error == "" {
		t.Errorf("status after cancel: %+v", ev)
	}
	// watch followed the job's progress to its end.
	if out := <-watched; !strings.Contains(out, "progress  step=copying") || lineWith(out, "cancelled") == "" {
		t.Errorf("watch of the cancelled upload:\n%s", out)
	}
	if ev := waitFor(t, q, "cancel-queued", time.Minute, "end", terminal); ev.State != jobs.StateCancelled {
		t.Errorf("the job cancelled while queued ended %s", ev.State)
	}
	if files := w.openFiles(w.volumeDir()); len(files) != 0 {
		t.Errorf("the worker still has volume files open: %v", files)
	}
	if v, s := w.VolumeFiles(), w.sidecars(); len(v)+len(s) != 0 {
		t.Errorf("cancelled jobs left volumes %v and sidecars (attachments) %v", v, s)
	}
	for _, l := range strings.Split(w.Logs(), "\n") {
		if strings.Contains(l, `"job_id":"cancel-queued"`) && (strings.Contains(l, "created volume") || strings.Contains(l, "job started")) {
			t.Errorf("the job cancelled while queued ran: %s", l)
		}
	}
	w.Stop()
	recs := w.journal()
	for _, id := range []string{"cancel-big", "cancel-queued"} {
		r := recs[id]
		if r.Outcome != "cancelled" || r.VolumeID != "" || r.AttachmentID != "" || r.Checkpoint != nil {
			t.Errorf("journal record of %s: outcome %q volume %q attachment %q checkpoint %v", id, r.Outcome, r.VolumeID, r.AttachmentID, r.Checkpoint)
		}
	}
}

func TestDeadLettersFromFailuresAndExhaustedDeliveries(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	natsURL := startNATS(t) // outside the worker: it keeps counting while the worker is paused
	w := startWorker(t, "", "--nats-url", natsURL, "--max-deliver", "1", "--ack-wait", "5s", "--concurrency", "1",
		"--checkpoint-every", "1048576")
	q, _ := openQueue(t, natsURL)

	// A job that fails permanently: its object is not staged (yet).
	_, stderr, code := w.enqueue(ctx, "upload", "--object", "cinderport-staging/later/fixme.raw", "--job-id", "perm-1",
		"--image-id", "img-perm", "--wait")
	if code != 1 || !strings.Contains(stderr, "not found") {
		t.Fatalf("upload of a missing object: exit %d: %s", code, stderr)
	}

	// A job whose worker hangs past its ack wait on its last delivery.
	img := makeImage(t, 512<<20, 13)
	if _, stderr, code := w.enqueue(ctx, "upload", "--file", img.path, "--job-id", "hang-1"); code != 0 {
		t.Fatalf("upload: exit %d: %s", code, stderr)
	}
	waitFor(t, q, "hang-1", 2*time.Minute, "copy", func(ev jobs.Event) bool { return ev.Step == jobs.StepCopying })
	w.signal(syscall.SIGSTOP)
	time.Sleep(7 * time.Second) // past the 5 s ack wait: the server announces the exhausted job
	w.signal(syscall.SIGCONT)
	ev := waitFor(t, q, "hang-1", time.Minute, "end", terminal)
	if ev.State != jobs.StateFailed || !strings.Contains(ev.Error, "exhausted 1 deliveries") {
		t.Errorf("the exhausted job ended %+v", ev)
	}

	list, _, code := w.enqueue(ctx, "dead", "list")
	if code != 0 {
		t.Fatalf("dead list: exit %d", code)
	}
	for id, reason := range map[string]string{"perm-1": "not found", "hang-1": "exhausted 1 deliveries"} {
		line := lineWith(list, id)
		if !strings.Contains(line, reason) || !strings.Contains(line, "attempts=1") {
			t.Errorf("dead letter of %s: %q, want its reason %q and attempts\n%s", id, line, reason, list)
		}
	}

	// Fix the first job's cause, replay it: it completes.
	sc, err := staging.New(staging.Config{Endpoint: w.Endpoints.S3Endpoint, AccessKey: w.Endpoints.S3AccessKey, SecretKey: w.Endpoints.S3SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	fixed := makeImage(t, 3<<20, 14)
	putFile(t, sc, jobs.Object{Bucket: "cinderport-staging", Key: "later/fixme.raw"}, fixed.path)
	if out, stderr, code := w.enqueue(ctx, "dead", "replay", "perm-1"); code != 0 || !strings.Contains(out, "replayed") {
		t.Fatalf("dead replay: exit %d: %s %s", code, out, stderr)
	}
	if out, _, code := w.enqueue(ctx, "watch", "perm-1"); code != 0 || !strings.Contains(out, "completed") {
		t.Errorf("the replayed job: exit %d: %s", code, out)
	}
	list, _, _ = w.enqueue(ctx, "dead", "list")
	if lineWith(list, "perm-1") != "" || lineWith(list, "hang-1") == "" {
		t.Errorf("dead letters after the replay:\n%s", list)
	}
	// The hung worker, resumed, gave the job up and removed its volume.
	if !strings.Contains(w.Logs(), "lost the job's lease") {
		t.Error("the resumed worker did not report losing the exhausted job")
	}
	if v := w.VolumeFiles(); len(v) != 1 {
		t.Errorf("%d volumes, want 1 (the replayed job's): %v", len(v), v)
	}
}

func TestAWorkerPausedPastItsLeaseCannotCompleteTheJob(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB upload twice: not in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	natsURL := startNATS(t)
	s3, err := s3local.New(t.TempDir(), "e2e-access", "e2e-secret-key", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s3.Close() })
	shared := []string{"--nats-url", natsURL, "--s3-endpoint", s3.Addr(), "--s3-access-key", "e2e-access",
		"--s3-secret-key", "e2e-secret-key", "--bucket", "stage"}
	workerFlags := append([]string{"--ack-wait", "5s", "--concurrency", "1", "--checkpoint-every", "1048576"}, shared...)
	q, nc := openQueue(t, natsURL)
	completions, err := nc.SubscribeSync("cinderport.events.fence-1.completed")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := staging.New(staging.Config{Endpoint: s3.Addr(), AccessKey: "e2e-access", SecretKey: "e2e-secret-key"})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.EnsureBucket(ctx, "stage"); err != nil {
		t.Fatal(err)
	}

	a := startWorker(t, "", append(workerFlags, "--name", "A")...)
	img := makeImage(t, 1<<30, 15)
	if _, stderr, code := a.enqueue(ctx, append([]string{"upload", "--file", img.path, "--job-id", "fence-1"}, shared...)...); code != 0 {
		t.Fatalf("upload: exit %d: %s", code, stderr)
	}
	waitFor(t, q, "fence-1", 2*time.Minute, "progress on A", func(ev jobs.Event) bool {
		return ev.Worker == "A" && ev.State == jobs.StateProgress && ev.Bytes > 0
	})
	a.signal(syscall.SIGSTOP)
	paused := time.Now()
	b := startWorker(t, "", append(workerFlags, "--name", "B")...)
	waitFor(t, q, "fence-1", time.Minute, "progress on B", func(ev jobs.Event) bool {
		return ev.Worker == "B" && ev.State == jobs.StateProgress
	})
	a.signal(syscall.SIGCONT)
	t.Logf("A paused for %v; B took the job over", time.Since(paused).Round(time.Millisecond))
	ev := waitFor(t, q, "fence-1", 2*time.Minute, "end", terminal)
	if ev.State != jobs.StateCompleted || ev.Worker != "B" || ev.Result == nil {
		t.Fatalf("the job ended %+v, want completed by B", ev)
	}
	if ev.Result.Checksum != img.md5 || ev.Result.OSHashValue != img.sha512 || ev.Result.Size != img.size {
		t.Errorf("result %+v", ev.Result)
	}
	// A had time to act on its resumed run: it must have given up.
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(a.Logs(), "lost the job's lease") && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(a.Logs(), "lost the job's lease") {
		t.Error("A did not report losing the job")
	}
	time.Sleep(2 * time.Second) // anything A would still publish or ack
	va, vb := a.VolumeFiles(), b.VolumeFiles()
	if len(va) != 0 || len(vb) != 1 || !strings.Contains(vb[0], ev.Result.VolumeID) {
		t.Errorf("volumes: A %v, B %v; want exactly B's %s", va, vb, ev.Result.VolumeID)
	}
	if n, _, _ := completions.Pending(); n != 1 {
		t.Errorf("%d completed events, want 1", n)
	}
	if final, _ := q.Status(ctx, "fence-1"); final.State != jobs.StateCompleted || final.Worker != "B" {
		t.Errorf("status after A resumed: %+v", final)
	}
	if strings.Contains(a.Logs(), `"message":"job completed"`) {
		t.Error("A completed the job")
	}
	if dls, _ := q.DeadLetters(ctx); len(dls) != 0 {
		t.Errorf("dead letters: %+v", dls)
	}
}
