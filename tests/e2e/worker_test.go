package e2e

import (
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/cinderport/cinderport/tests/harness"
)

// binDir holds the worker and enqueue binaries built once for the package.
var binDir string

func TestMain(m *testing.M) { os.Exit(harness.RunWithBinaries(m, &binDir)) }

// worker is a worker process (harness.Worker) with this suite's helpers.
type worker struct {
	*harness.Worker
	t *testing.T
}

// startWorker runs bin/worker in dataDir (a new one when empty) with extra
// flags, and waits until it is ready.
func startWorker(t *testing.T, dataDir string, args ...string) *worker {
	t.Helper()
	return &worker{Worker: harness.StartWorker(t, harness.WorkerOptions{BinDir: binDir, DataDir: dataDir, Args: args}), t: t}
}

// enqueue runs bin/enqueue against w and returns stdout, stderr and the
// exit code.
func (w *worker) enqueue(ctx context.Context, args ...string) (string, string, int) {
	w.t.Helper()
	return w.Enqueue(ctx, args...)
}

// peakRSS is the worker's VmHWM in bytes.
func (w *worker) peakRSS() int64 {
	w.t.Helper()
	n, err := w.PeakRSS()
	if err != nil {
		w.t.Fatal(err)
	}
	return n
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
