package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cinderport/cinderport/internal/embedded"
)

// binDir holds the worker and enqueue binaries built once for the package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cinderport-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/cinderport/cinderport/cmd/worker", "github.com/cinderport/cinderport/cmd/enqueue")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// worker is a worker process on the embedded default.
type worker struct {
	t       *testing.T
	dataDir string
	cmd     *exec.Cmd
	ep      embedded.Endpoints
	httpURL string
	logMu   sync.Mutex
	log     bytes.Buffer
	done    chan struct{}
}

// startWorker runs bin/worker with a fresh data dir and extra flags, and
// waits until it is ready (and, when any part of it is embedded, wrote its
// endpoints).
func startWorker(t *testing.T, dataDir string, args ...string) *worker {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	os.Remove(filepath.Join(dataDir, embedded.EndpointsFile))
	w := &worker{t: t, dataDir: dataDir, done: make(chan struct{})}
	all := append([]string{"--data-dir", dataDir, "--http-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug"}, args...)
	w.cmd = exec.Command(filepath.Join(binDir, "worker"), all...)
	w.cmd.Env = cleanEnv()
	pr, pw := io.Pipe()
	w.cmd.Stdout, w.cmd.Stderr = pw, pw
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			w.logMu.Lock()
			w.log.Write(sc.Bytes())
			w.log.WriteByte('\n')
			w.logMu.Unlock()
		}
	}()
	go func() {
		w.cmd.Wait()
		pw.Close()
		close(w.done)
	}()
	t.Cleanup(func() {
		w.stop()
		if t.Failed() {
			t.Logf("worker log:\n%s", w.logs())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if line := lineWith(w.logs(), `"message":"worker ready"`); line != "" {
			var ready struct {
				HTTP     string `json:"http"`
				Embedded bool   `json:"embedded"`
			}
			json.Unmarshal([]byte(line), &ready)
			w.httpURL = ready.HTTP
			ep, err := embedded.ReadEndpoints(dataDir)
			if !ready.Embedded || err == nil && ep.PID == w.cmd.Process.Pid {
				w.ep = ep
				return w
			}
		}
		select {
		case <-w.done:
			t.Fatalf("worker exited at start-up:\n%s", w.logs())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker did not write its endpoints in 30 s:\n%s", w.logs())
		}
	}
}

func (w *worker) logs() string {
	w.logMu.Lock()
	defer w.logMu.Unlock()
	return w.log.String()
}

// stop sends SIGTERM and waits; after 60 s it kills.
func (w *worker) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	w.cmd.Process.Signal(syscall.SIGCONT) // a test may have paused it
	w.cmd.Process.Signal(os.Interrupt)
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		w.t.Errorf("worker did not stop within 60 s of SIGINT")
		w.cmd.Process.Kill()
		<-w.done
	}
}

// peakRSS is the worker's VmHWM in bytes.
func (w *worker) peakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
	if err != nil {
		w.t.Fatalf("read worker status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	w.t.Fatal("no VmHWM in /proc status")
	return 0
}

// volumeFiles counts the local volumes the worker holds.
func (w *worker) volumeFiles() []string {
	var out []string
	filepath.WalkDir(filepath.Join(w.dataDir, "volumes"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".img") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// cleanEnv is the test's environment without CINDERPORT_ and OS_ variables
// that could point the binaries elsewhere.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CINDERPORT_") || strings.HasPrefix(kv, "OS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// enqueue runs bin/enqueue against w and returns stdout, stderr and the
// exit code.
func (w *worker) enqueue(ctx context.Context, args ...string) (string, string, int) {
	w.t.Helper()
	all := append(append([]string{}, args...), "--data-dir", w.dataDir, "--progress", "never")
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "enqueue"), all...)
	cmd.Env = cleanEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			w.t.Fatalf("run enqueue %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// image is a generated file and its hashes.
type image struct {
	path, md5, sha512 string
	size              int64
}

func makeImage(t *testing.T, size int64, seed uint64) image {
	t.Helper()
	p := filepath.Join(t.TempDir(), "image.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hm, hs := md5.New(), sha512.New()
	var key [32]byte
	key[0] = byte(seed)
	if _, err := io.CopyN(io.MultiWriter(f, hm, hs), rand.NewChaCha8(key), size); err != nil {
		t.Fatal(err)
	}
	return image{path: p, size: size, md5: hex.EncodeToString(hm.Sum(nil)), sha512: hex.EncodeToString(hs.Sum(nil))}
}

type result struct {
	Location    string `json:"location"`
	VolumeID    string `json:"volume_id"`
	Size        int64  `json:"size"`
	Checksum    string `json:"checksum"`
	OSHashAlgo  string `json:"os_hash_algo"`
	OSHashValue string `json:"os_hash_value"`
}

func parseResult(t *testing.T, out string) result {
	t.Helper()
	var r result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("enqueue printed no JSON result: %v\n%s", err, out)
	}
	return r
}
