package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
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

// BuildBinaries builds cmd/worker and cmd/enqueue into dir. Suites that run
// workers as processes call it once from TestMain.
func BuildBinaries(dir string) error {
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/cinderport/cinderport/cmd/worker", "github.com/cinderport/cinderport/cmd/enqueue")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build worker and enqueue: %w", err)
	}
	return nil
}

// RunWithBinaries is a TestMain body for suites that run the binaries: it
// builds them into a temporary directory, stores its path in *dir, runs the
// tests, removes the binaries and returns the exit code.
func RunWithBinaries(m *testing.M, dir *string) int {
	d, err := os.MkdirTemp("", "cinderport-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(d)
	if err := BuildBinaries(d); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	*dir = d
	return m.Run()
}

// Worker is a bin/worker process run by a test.
type Worker struct {
	// DataDir is the worker's --data-dir.
	DataDir string
	// HTTPURL is its HTTP API.
	HTTPURL string
	// Endpoints are what an embedded worker wrote (zero when nothing runs
	// embedded).
	Endpoints embedded.Endpoints

	t    testing.TB
	bin  string
	args []string
	env  []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  bytes.Buffer
}

// WorkerOptions configure StartWorker.
type WorkerOptions struct {
	// BinDir holds the binaries (BuildBinaries).
	BinDir string
	// DataDir is reused when set (a restart); else a new temporary one.
	DataDir string
	// Args are extra worker flags.
	Args []string
	// Env adds variables (OS_CLOUD, …) to a clean environment.
	Env []string
}

// StartWorker runs a worker with debug JSON logs and its HTTP API on a
// loopback port of its choosing, waits until it is ready (and, when any part
// of it runs embedded, until it wrote its endpoints), and stops it at
// cleanup.
func StartWorker(t testing.TB, o WorkerOptions) *Worker {
	t.Helper()
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	w := &Worker{t: t, DataDir: o.DataDir, bin: o.BinDir, env: append(CleanEnv(), o.Env...)}
	w.args = append([]string{"--data-dir", o.DataDir, "--http-addr", "127.0.0.1:0", "--log-format", "json", "--log-level", "debug"}, o.Args...)
	t.Cleanup(func() {
		w.Stop()
		if t.Failed() {
			t.Logf("worker %s log (tail):\n%s", o.DataDir, LastLines(w.Logs(), 60))
		}
	})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	return w
}

// Start (re)starts the process with the same flags and data directory and
// waits until it is ready: its "worker ready" log line names its HTTP API.
func (w *Worker) Start() error {
	os.Remove(filepath.Join(w.DataDir, embedded.EndpointsFile))
	cmd := exec.Command(filepath.Join(w.bin, "worker"), w.args...)
	cmd.Env = w.env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	w.mu.Lock()
	from := w.log.Len()
	w.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			w.mu.Lock()
			w.log.Write(sc.Bytes())
			w.log.WriteByte('\n')
			w.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		close(done)
	}()
	w.mu.Lock()
	w.cmd, w.done = cmd, done
	w.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return fmt.Errorf("worker exited at start-up:\n%s", LastLines(w.Logs(), 40))
		case <-time.After(50 * time.Millisecond):
		}
		if w.ready(from, cmd.Process.Pid) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker not ready within 60 s:\n%s", LastLines(w.Logs(), 40))
		}
	}
}

// ready reads the "worker ready" line logged since from, and the endpoints
// of an embedded worker.
func (w *Worker) ready(from, pid int) bool {
	w.mu.Lock()
	logs := w.log.String()[from:]
	w.mu.Unlock()
	i := strings.Index(logs, `"message":"worker ready"`)
	if i < 0 {
		return false
	}
	line := logs[strings.LastIndex(logs[:i], "\n")+1:]
	line, _, _ = strings.Cut(line, "\n")
	var r struct {
		HTTP     string `json:"http"`
		Embedded bool   `json:"embedded"`
	}
	if json.Unmarshal([]byte(line), &r) != nil {
		return false
	}
	w.HTTPURL = r.HTTP
	if !r.Embedded {
		return true
	}
	ep, err := embedded.ReadEndpoints(w.DataDir)
	if err != nil || ep.PID != pid {
		return false
	}
	w.Endpoints = ep
	return true
}

// Done is closed when the running process has exited.
func (w *Worker) Done() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}

// Pid is the running process's id (0 when stopped).
func (w *Worker) Pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil || w.cmd.Process == nil {
		return 0
	}
	return w.cmd.Process.Pid
}

// Logs returns everything the worker printed, over all its runs.
func (w *Worker) Logs() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// Stop sends SIGTERM and waits; after 90 s it kills.
func (w *Worker) Stop() {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	w.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	cmd.Process.Signal(syscall.SIGCONT) // a test may have paused it
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		msg := "worker did not stop within 90 s of SIGTERM:\n" + LastLines(w.Logs(), 20)
		OnFailure(w.t, msg)
		w.t.Error(msg)
		cmd.Process.Kill()
		<-done
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (w *Worker) Kill() {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	w.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-done
}

// Signal sends sig to the running process.
func (w *Worker) Signal(sig os.Signal) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return fmt.Errorf("worker not running")
	}
	return w.cmd.Process.Signal(sig)
}

// PeakRSS is the running worker's VmHWM in bytes.
func (w *Worker) PeakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.Pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc status")
}

// Enqueue runs bin/enqueue with args (plus --data-dir and --progress
// never) and returns stdout, stderr and the exit code.
func (w *Worker) Enqueue(ctx context.Context, args ...string) (string, string, int) {
	w.t.Helper()
	all := append(append([]string{}, args...), "--data-dir", w.DataDir, "--progress", "never")
	cmd := exec.CommandContext(ctx, filepath.Join(w.bin, "enqueue"), all...)
	cmd.Env = w.env
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

// VolumeFiles lists the local volumes (embedded default) in the worker's
// data directory.
func (w *Worker) VolumeFiles() []string {
	var out []string
	filepath.WalkDir(filepath.Join(w.DataDir, "volumes"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".img") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// CleanEnv is the environment without CINDERPORT_ and OS_ variables that
// could point the binaries elsewhere.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CINDERPORT_") || strings.HasPrefix(kv, "OS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
