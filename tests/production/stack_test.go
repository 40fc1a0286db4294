package production

import (
	"context"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/tests/harness"
)

const bucket = "images"

// stack is one deployment: NATS, MinIO, the Cinder lab, and the flags that
// point workers and the CLI at them.
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
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"cinder-volume", "cinder-wsgi"} {
				t.Logf("%s log:\n%s", name, l.Logs(name))
			}
		}
	})
	ns, err := natsembed.Start(natsembed.Options{Dir: t.TempDir(), Port: -1, Name: "production"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Shutdown)
	m := harness.StartMinIO(t)
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

// worker starts a worker process on the stack with Cinder volumes.
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
