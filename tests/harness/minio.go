package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// MinIO is a MinIO server run as a separate process (it is AGPL: never
// linked) on a private port and directory.
type MinIO struct {
	Endpoint  string // 127.0.0.1:port
	AccessKey string
	SecretKey string

	// console is the address of MinIO's console listener, which MinIO
	// opens even with the browser off: left to MinIO, it picked the S3
	// port once (CI failed with "--console-address port cannot be same as
	// --address port").
	console string
	bin     string
	dir     string
	env     []string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	log     *os.File
}

// StartMinIO runs MinIO for the test and stops it at cleanup. env adds
// variables (MINIO_NOTIFY_NATS_*, …). Without the binary (`make test-deps`
// builds it) the test skips, or fails under CINDERPORT_REQUIRE_ALL=1.
func StartMinIO(t testing.TB, env ...string) *MinIO {
	t.Helper()
	bin := Need(t, "minio", "MinIO")
	m, err := newMinIO(bin, t.TempDir(), env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	return m
}

// newMinIO prepares a server on two free ports of its own: the S3 API's
// and the console's.
func newMinIO(bin, dir string, env []string) (*MinIO, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	console := port
	for console == port {
		if console, err = freePort(); err != nil {
			return nil, err
		}
	}
	return &MinIO{bin: bin, dir: dir, env: env, AccessKey: "cp" + randHex(8), SecretKey: randHex(24),
		Endpoint: "127.0.0.1:" + strconv.Itoa(port), console: "127.0.0.1:" + strconv.Itoa(console)}, nil
}

// SharedMinIO starts one MinIO for a whole test binary, on first use, and
// stops it when TestMain calls Close (as SharedCinderLab does for the lab).
// Tests sharing it keep to their own buckets or keys.
type SharedMinIO struct {
	once sync.Once
	m    *MinIO
	err  error
}

// Get returns the server, starting it on the first call. Without the
// binary, t skips (or fails under CINDERPORT_REQUIRE_ALL=1).
func (s *SharedMinIO) Get(t testing.TB) *MinIO {
	t.Helper()
	bin := Need(t, "minio", "MinIO")
	s.once.Do(func() {
		dir, err := os.MkdirTemp("", "cinderport-minio-")
		if err != nil {
			s.err = err
			return
		}
		if s.m, s.err = newMinIO(bin, dir, nil); s.err != nil {
			os.RemoveAll(dir)
			return
		}
		if s.err = s.m.Start(); s.err != nil {
			os.RemoveAll(dir)
			s.m = nil
		}
	})
	if s.err != nil {
		t.Fatalf("minio: %v", s.err)
	}
	return s.m
}

// Close stops the server if it was started and removes its data.
func (s *SharedMinIO) Close() {
	if s.m == nil {
		return
	}
	s.m.Stop()
	os.RemoveAll(s.m.dir)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// Start (re)starts the server on the same port and data, and waits until it
// is live.
func (m *MinIO) Start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return nil
	}
	log, err := os.Create(filepath.Join(m.dir, "minio.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(m.bin, "server", filepath.Join(m.dir, "data"), "--address", m.Endpoint, "--console-address", m.console, "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1")
	cmd.Env = append(cmd.Env, m.env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start minio: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	m.cmd, m.done, m.log = cmd, done, log
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + m.Endpoint + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-done:
			b, _ := os.ReadFile(log.Name())
			return fmt.Errorf("minio exited at start-up: %s", b)
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("minio not live on %s within 60 s", m.Endpoint)
}

// Stop stops the server (keeping its data).
func (m *MinIO) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(os.Interrupt)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
	m.log.Close()
	m.cmd = nil
}
