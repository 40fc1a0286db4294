package e2e

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs/queue"
)

func TestUploadDownloadRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorker(t, "")
	img := makeImage(t, 64<<20+12345, 1) // not a multiple of the block size
	stdout, stderr, code := w.enqueue(ctx, "upload", "--file", img.path, "--job-id", "roundtrip-1", "--image-id", "img-roundtrip", "--wait", "--output", "json")
	if code != 0 {
		t.Fatalf("upload exited %d: %s", code, stderr)
	}
	r := parseResult(t, stdout)
	if r.Location != "cinder://"+r.VolumeID || r.VolumeID == "" {
		t.Errorf("location %q for volume %q", r.Location, r.VolumeID)
	}
	if r.Size != img.size || r.Checksum != img.md5 || r.OSHashAlgo != "sha512" || r.OSHashValue != img.sha512 {
		t.Errorf("result %+v, want size %d md5 %s", r, img.size, img.md5)
	}
	out := filepath.Join(t.TempDir(), "back.raw")
	if _, stderr, code := w.enqueue(ctx, "download", r.VolumeID, "-o", out); code != 0 {
		t.Fatalf("download exited %d: %s", code, stderr)
	}
	if got := fileMD5(t, out); got != img.md5 {
		t.Errorf("downloaded md5 %s, want %s", got, img.md5)
	}
	stdout, _, code = w.enqueue(ctx, "status", "roundtrip-1")
	if code != 0 || !strings.Contains(stdout, "completed") || !strings.Contains(stdout, r.Location) {
		t.Errorf("status exited %d: %s", code, stdout)
	}
	if n := len(w.VolumeFiles()); n != 1 {
		t.Errorf("%d volumes, want 1", n)
	}
}

func TestDuplicateJobIDYieldsOneVolume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorker(t, "")
	img := makeImage(t, 3<<20, 2)
	_, stderr, code := w.enqueue(ctx, "upload", "--file", img.path, "--job-id", "dup-1", "--image-id", "img-dup", "--wait")
	if code != 0 {
		t.Fatalf("first upload exited %d: %s", code, stderr)
	}
	_, stderr, code = w.enqueue(ctx, "upload", "--object", "cinderport-staging/uploads/img-dup", "--image-id", "img-dup", "--job-id", "dup-1")
	if code != 3 || !strings.Contains(stderr, "duplicate") {
		t.Errorf("second enqueue exited %d (want 3): %s", code, stderr)
	}
	time.Sleep(500 * time.Millisecond) // a wrongly queued duplicate would be picked up by now
	if n := len(w.VolumeFiles()); n != 1 {
		t.Errorf("%d volumes after enqueueing one job id twice, want 1", n)
	}
}

func TestBadJobsAreDeadLetteredAndTheWorkerGoesOn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorker(t, "")

	// A malformed job, published raw.
	nc, err := queue.Connect(ctx, w.Endpoints.NATSURL, queue.ConnectOptions{Name: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	q, err := queue.Open(ctx, nc, queue.Config{Existing: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.EnqueueRaw(ctx, "cinderport.jobs.upload.default", []byte(`{"version":1,"id":"bad-json","kind":"upl`), "bad-json"); err != nil {
		t.Fatal(err)
	}
	// A job naming a missing object.
	_, stderr, code := w.enqueue(ctx, "upload", "--object", "cinderport-staging/no/such/object", "--job-id", "missing-1", "--wait")
	if code != 1 || !strings.Contains(stderr, "not found") {
		t.Errorf("missing object: exit %d: %s", code, stderr)
	}
	// A job whose expected hash does not match.
	img := makeImage(t, 5<<20, 3)
	_, stderr, code = w.enqueue(ctx, "upload", "--file", img.path, "--job-id", "badhash-1", "--verify=false",
		"--checksum", strings.Repeat("0", 32), "--wait")
	if code != 1 || !strings.Contains(stderr, "checksum mismatch") {
		t.Errorf("wrong checksum: exit %d: %s", code, stderr)
	}

	deadline := time.Now().Add(30 * time.Second)
	var list string
	for time.Now().Before(deadline) {
		list, _, _ = w.enqueue(ctx, "dead", "list")
		if strings.Count(list, "\n") >= 3 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for id, reason := range map[string]string{"bad-json": "not a JSON object", "missing-1": "not found", "badhash-1": "checksum mismatch"} {
		line := lineWith(list, id)
		if line == "" || !strings.Contains(line, reason) {
			t.Errorf("dead letter of %s: %q, want a reason with %q\nall:\n%s", id, line, reason, list)
		}
	}
	if v := w.VolumeFiles(); len(v) != 0 {
		t.Errorf("failed jobs left volumes behind: %v", v)
	}

	// The worker goes on.
	good := makeImage(t, 1<<20, 4)
	stdout, stderr, code := w.enqueue(ctx, "upload", "--file", good.path, "--job-id", "good-after-bad", "--wait", "--output", "json")
	if code != 0 {
		t.Fatalf("good job after bad ones: exit %d: %s", code, stderr)
	}
	if r := parseResult(t, stdout); r.Checksum != good.md5 {
		t.Errorf("good job: %+v", r)
	}
}

// TestWorkerMemoryStaysFlat uploads a 2 GiB image and reads the worker's
// peak RSS: the whole all-in-one process (nats-server, S3 endpoint,
// worker) must stay under 150 MiB.
func TestWorkerMemoryStaysFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("2 GiB upload: not in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w := startWorker(t, "")
	img := makeImage(t, 2<<30, 5)
	start := time.Now()
	stdout, stderr, code := w.enqueue(ctx, "upload", "--file", img.path, "--job-id", "big-1", "--wait", "--output", "json")
	if code != 0 {
		t.Fatalf("2 GiB upload: exit %d: %s", code, stderr)
	}
	took := time.Since(start)
	if r := parseResult(t, stdout); r.Size != img.size || r.Checksum != img.md5 || r.OSHashValue != img.sha512 {
		t.Errorf("2 GiB upload result %+v", r)
	}
	rss := w.peakRSS()
	t.Logf("2 GiB upload (staging + job) in %.1fs, %.0f MB/s; worker peak RSS %.1f MiB", took.Seconds(), float64(img.size)/1e6/took.Seconds(), float64(rss)/(1<<20))
	if rss > 150<<20 {
		t.Errorf("worker peak RSS %.1f MiB during a 2 GiB upload, limit 150 MiB", float64(rss)/(1<<20))
	}
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

func fileMD5(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := md5.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
