package production

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/tests/harness"
)

const bucket = "images"

// stack is one deployment: a nats-server of the test's own, the shared
// MinIO and Cinder lab, and the flags that point workers and the CLI at
// them.
type stack struct {
	t       *testing.T
	lab     *harness.CinderLab
	minio   *harness.MinIO
	nats    *natsembed.Server
	staging *staging.Client
	conn    []string // --nats-url, --s3-* and --bucket, for workers and the CLI
}

func newStack(t *testing.T) *stack {
	t.Helper()
	l := lab.Get(t)
	m := minio.Get(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"cinder-volume", "cinder-wsgi"} {
				t.Logf("%s log (tail):\n%s", name, harness.LastLines(l.Logs(name), 80))
			}
		}
	})
	ns, err := natsembed.Start(natsembed.Options{Dir: t.TempDir(), Port: -1, Name: "production"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	sc, err := staging.New(staging.Config{Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sc.EnsureBucket(ctx, bucket); err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, lab: l, minio: m, nats: ns, staging: sc, conn: []string{
		"--nats-url", ns.ClientURL(), "--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey,
		"--s3-secret-key", m.SecretKey, "--bucket", bucket}}
}

// with is the stack for a subtest: helpers report to t.
func (s *stack) with(t *testing.T) *stack {
	c := *s
	c.t = t
	return &c
}

// worker starts a worker process on the stack with Cinder volumes (debug
// logs, as harness.StartWorker runs every worker).
func (s *stack) worker(name string, args ...string) *harness.Worker {
	s.t.Helper()
	all := append(append([]string{"--name", name, "--cinder-config", s.lab.GlanceConfFile}, s.conn...), args...)
	return harness.StartWorker(s.t, harness.WorkerOptions{BinDir: binDir, Args: all})
}

// enqueue runs the CLI against the stack.
func (s *stack) enqueue(ctx context.Context, w *harness.Worker, args ...string) (string, string, int) {
	s.t.Helper()
	return w.Enqueue(ctx, append(append([]string{}, args...), append(s.conn, "--worker-url", w.HTTPURL)...)...)
}

// result is an upload's (or export's) result as `enqueue --output json`
// prints it.
type result struct {
	Location    string `json:"location"`
	VolumeID    string `json:"volume_id"`
	Size        int64  `json:"size"`
	Checksum    string `json:"checksum"`
	OSHashAlgo  string `json:"os_hash_algo"`
	OSHashValue string `json:"os_hash_value"`
}

// run runs a job with --wait --output json and returns its result; a
// failed job fails t.
func (s *stack) run(ctx context.Context, w *harness.Worker, args ...string) result {
	s.t.Helper()
	out, stderr, code := s.enqueue(ctx, w, append(args, "--wait", "--output", "json")...)
	if code != 0 {
		s.t.Fatalf("enqueue %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return resultOf(s.t, out)
}

// resultOf decodes a job's result as `enqueue --output json` prints it.
func resultOf(t testing.TB, out string) result {
	t.Helper()
	var r result
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.VolumeID == "" {
		t.Fatalf("job result %q: %v", out, err)
	}
	return r
}

// metrics scrapes the worker's /metrics (harness.Worker.Metrics); a failed
// scrape fails t.
func metrics(t testing.TB, w *harness.Worker) map[string]float64 {
	t.Helper()
	m, err := w.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// logLines decodes a worker's JSON log lines that carry msg as their
// message.
func logLines(w *harness.Worker, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(w.Logs(), "\n") {
		if !strings.Contains(line, `"message":"`+msg+`"`) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
