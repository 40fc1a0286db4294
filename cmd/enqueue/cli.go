package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cinderport/cinderport/internal/embedded"
	"github.com/cinderport/cinderport/internal/envflag"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/staging"
)

// cli holds what every command shares: the environment, the streams, and
// the connection settings.
type cli struct {
	env            []string
	stdin          io.Reader
	stdout, stderr io.Writer

	dataDir   string
	natsURL   string
	natsCreds string
	natsCA    string
	natsCert  string
	natsKey   string
	workerCA  string
	s3        staging.Config
	bucket    string
	workerURL string
	keyFile   string
	authToken string
	urlTTL    time.Duration
	output    string
	progress  string
	timeout   time.Duration

	nc *nats.Conn
	q  *queue.Queue
}

// flags returns a flag set with the connection flags every command takes.
func (c *cli) flags(name, synopsis string) *envflag.Set {
	fs := envflag.New("enqueue "+name, "CINDERPORT_", c.env, c.stderr)
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "Usage: enqueue %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	fs.String(&c.dataDir, "data-dir", embedded.DefaultDataDir(), "where an embedded worker runs: its endpoints are read from here when no --nats-url is given")
	fs.String(&c.natsURL, "nats-url", "", "NATS server URL(s), comma separated (default: the embedded worker's)")
	fs.String(&c.natsCreds, "nats-creds", "", "NATS credentials file")
	fs.String(&c.natsCA, "nats-tls-ca", "", "CA bundle that signed the NATS servers' certificates (enables TLS)")
	fs.String(&c.natsCert, "nats-tls-cert", "", "client certificate for NATS (PEM; with --nats-tls-key)")
	fs.String(&c.natsKey, "nats-tls-key", "", "client private key for NATS (PEM)")
	fs.String(&c.s3.Endpoint, "s3-endpoint", "", "S3 staging endpoint host:port (default: the embedded worker's)")
	fs.String(&c.s3.AccessKey, "s3-access-key", "", "S3 access key")
	fs.String(&c.s3.SecretKey, "s3-secret-key", "", "S3 secret key")
	fs.String(&c.s3.Region, "s3-region", "", "S3 region")
	fs.Bool(&c.s3.Secure, "s3-tls", false, "use HTTPS for S3")
	fs.String(&c.s3.CAFile, "s3-tls-ca", "", "CA bundle for the S3 endpoint's certificate (implies --s3-tls)")
	fs.String(&c.bucket, "bucket", "", "staging bucket (default: cinderport-staging, or the embedded worker's)")
	fs.String(&c.workerURL, "worker-url", "", "a worker's HTTP API for downloads (default: the embedded worker's)")
	fs.String(&c.workerCA, "worker-tls-ca", "", "CA bundle for a worker HTTP API served over TLS")
	fs.String(&c.output, "output", "text", "output format: text or json")
	fs.String(&c.progress, "progress", "auto", "progress bar: auto (on a terminal), always, never")
	fs.Duration(&c.timeout, "timeout", 0, "give up waiting after this long (0: never)")
	return fs
}

// resolve fills connection settings from the embedded worker's endpoints
// file for whatever was not configured.
func (c *cli) resolve() error {
	if c.output != "text" && c.output != "json" {
		return fmt.Errorf("--output must be text or json, not %q", c.output)
	}
	if c.natsURL != "" && c.s3.Endpoint != "" && c.workerURL != "" {
		return nil
	}
	ep, err := embedded.ReadEndpoints(c.dataDir)
	if err != nil {
		if c.natsURL == "" {
			return err
		}
		return nil
	}
	if c.natsURL == "" {
		c.natsURL = ep.NATSURL
	}
	if c.s3.Endpoint == "" {
		c.s3.Endpoint, c.s3.AccessKey, c.s3.SecretKey = ep.S3Endpoint, ep.S3AccessKey, ep.S3SecretKey
	}
	if c.bucket == "" {
		c.bucket = ep.Bucket
	}
	if c.workerURL == "" {
		c.workerURL = ep.HTTPURL
	}
	return nil
}

func (c *cli) bucketName() string {
	if c.bucket == "" {
		return "cinderport-staging"
	}
	return c.bucket
}

// connect opens the queue.
func (c *cli) connect(ctx context.Context) error {
	if err := c.resolve(); err != nil {
		return err
	}
	nc, err := queue.Connect(ctx, c.natsURL, queue.ConnectOptions{Name: "cinderport-enqueue", CredsFile: c.natsCreds,
		RootCAs: c.natsCA, CertFile: c.natsCert, KeyFile: c.natsKey})
	if err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", c.natsURL, err)
	}
	q, err := queue.Open(ctx, nc, queue.Config{Existing: true})
	if err != nil {
		nc.Close()
		return fmt.Errorf("open the job queue: %w", err)
	}
	c.nc, c.q = nc, q
	return nil
}

func (c *cli) close() {
	if c.nc != nil {
		c.nc.Close()
	}
}

func (c *cli) stagingClient(ctx context.Context) (*staging.Client, error) {
	if err := c.resolve(); err != nil {
		return nil, err
	}
	if c.s3.Endpoint == "" {
		return nil, errors.New("no S3 staging endpoint: pass --s3-endpoint or run an embedded worker")
	}
	if c.s3.CAFile != "" {
		c.s3.Secure = true
	}
	return staging.New(c.s3)
}

func (c *cli) fail(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "enqueue: "+format+"\n", args...)
	return exitFailed
}

func (c *cli) printJSON(v any) {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// follow watches a job until it ends, drawing progress; it returns the
// final event.
func (c *cli) follow(ctx context.Context, jobID string, label string) (jobs.Event, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var last jobs.Event
	var b *bar
	err := c.q.Watch(ctx, jobID, func(ev jobs.Event) bool {
		last = ev
		if b == nil && ev.Total > 0 {
			b = newBar(c.stderr, label, ev.Total, c.progress)
		}
		if b != nil && (ev.State == jobs.StateProgress || ev.State == jobs.StateRunning) {
			b.update(ev.Bytes, string(ev.Step))
		}
		if ev.State == jobs.StateRetrying && c.progress != "never" {
			if b != nil {
				b.finish()
			}
			fmt.Fprintf(c.stderr, "job %s: attempt failed, will retry: %s\n", jobID, ev.Error)
		}
		return !ev.State.Terminal()
	})
	if b != nil {
		if last.State == jobs.StateCompleted {
			b.update(last.Total, "done")
		}
		b.finish()
	}
	if err != nil {
		return last, fmt.Errorf("watch job %s: %w", jobID, err)
	}
	return last, nil
}
