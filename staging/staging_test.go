package staging_test

import (
	"context"
	"errors"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/staging/s3local"
	"github.com/cinderport/cinderport/staging/stagingtest"
	"github.com/cinderport/cinderport/tests/harness"
)

func embedded(t *testing.T) (*s3local.Server, staging.Config) {
	t.Helper()
	s, err := s3local.New(t.TempDir(), "access", "secret-key-123", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, staging.Config{Endpoint: s.Addr(), AccessKey: "access", SecretKey: "secret-key-123"}
}

func client(t *testing.T, cfg staging.Config, bucket string) *staging.Client {
	t.Helper()
	c, err := staging.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureBucket(context.Background(), bucket); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConformanceEmbedded(t *testing.T) {
	_, cfg := embedded(t)
	stagingtest.Run(t, client(t, cfg, "staging"), "staging")
}

func TestConformanceMinIO(t *testing.T) {
	m := harness.StartMinIO(t)
	cfg := staging.Config{Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey}
	stagingtest.Run(t, client(t, cfg, "staging"), "staging")
}

func TestBadCredentialsRejected(t *testing.T) {
	_, cfg := embedded(t)
	client(t, cfg, "staging")
	for _, bad := range []staging.Config{
		{Endpoint: cfg.Endpoint, AccessKey: "access", SecretKey: "wrong-secret"},
		{Endpoint: cfg.Endpoint, AccessKey: "nobody", SecretKey: "secret-key-123"},
	} {
		c, _ := staging.New(bad)
		_, err := c.Stat(context.Background(), jobs.Object{Bucket: "staging", Key: "k"})
		if err == nil || errors.Is(err, jobs.ErrNotFound) {
			t.Errorf("stat with bad credentials: %v, want a refusal", err)
		}
	}
}

// pattern is an endless generated stream: no buffer of the object's size.
type pattern struct{ n int64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte(p.n*31 + int64(i)>>3)
	}
	p.n++
	return len(b), nil
}

// TestEmbeddedStreamsInBoundedMemory puts and reads back 1 GiB through the
// in-process endpoint while sampling the heap.
func TestEmbeddedStreamsInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB")
	}
	_, cfg := embedded(t)
	c := client(t, cfg, "staging")
	ctx := context.Background()
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
		}
	}()
	const n = 1 << 30
	o := jobs.Object{Bucket: "staging", Key: "big/1g"}
	start := time.Now()
	if _, err := c.Put(ctx, o, io.LimitReader(&pattern{}, n), n); err != nil {
		t.Fatal(err)
	}
	put := time.Since(start)
	start = time.Now()
	rc, err := c.Open(ctx, o, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.Copy(io.Discard, rc)
	rc.Close()
	get := time.Since(start)
	close(stop)
	if err != nil || got != n {
		t.Fatalf("read %d bytes: %v", got, err)
	}
	t.Logf("embedded endpoint: PUT 1 GiB %.0f MB/s, parallel GET %.0f MB/s, peak heap in use %.1f MiB",
		n/1e6/put.Seconds(), n/1e6/get.Seconds(), float64(peak.Load())/(1<<20))
	if peak.Load() > 128<<20 {
		t.Errorf("peak heap %d MiB while streaming 1 GiB", peak.Load()>>20)
	}
}
