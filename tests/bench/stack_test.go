package bench

import (
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/tests/harness"
)

// benchBucket holds the staged images. It is readable anonymously, so that
// qemu-img's curl driver (HEAD, then ranged GETs) can read them over plain
// HTTP as cinderport's worker reads them over S3.
const benchBucket = "bench"

// stack is the deployment the transfer benchmarks run on: the shared Cinder
// lab and MinIO, a nats-server of its own, and a harness tgtd whose LUNs
// (tgtd defaults, backing files on the same filesystem as the lab's
// volumes) are qemu-img's targets.
type stack struct {
	b     *testing.B
	lab   *harness.CinderLab
	minio *harness.MinIO
	tgtd  *harness.Tgtd
	st    *staging.Client
	qemu  string
	dir   string   // scratch files, on the same filesystem as the LUNs
	run   string   // makes job and image ids unique
	conn  []string // --nats-url, --s3-* and --bucket, for workers and the CLI
}

func newStack(b *testing.B) *stack {
	b.Helper()
	qemu := harness.Need(b, "qemu-img", "qemu-img (Debian qemu-utils and qemu-block-extra)")
	need(b, "dd")
	l := sharedLab.Get(b)
	m := sharedMinIO.Get(b)
	ns, err := natsembed.Start(natsembed.Options{Dir: b.TempDir(), Port: -1, Name: "bench"})
	if err != nil {
		b.Fatalf("start nats-server: %v", err)
	}
	b.Cleanup(ns.Shutdown)
	st, err := staging.New(staging.Config{Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := st.EnsureBucket(ctx, benchBucket); err != nil {
		b.Fatal(err)
	}
	if err := publicRead(ctx, m, benchBucket); err != nil {
		b.Fatal(err)
	}
	return &stack{b: b, lab: l, minio: m, tgtd: harness.StartTgtd(b), st: st, qemu: qemu, dir: b.TempDir(),
		run: strconv.FormatUint(rand.Uint64()%1e9, 36),
		conn: []string{"--nats-url", ns.ClientURL(), "--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey,
			"--s3-secret-key", m.SecretKey, "--bucket", benchBucket}}
}

func need(b *testing.B, prog string) {
	b.Helper()
	if harness.LookPath(prog) == "" {
		harness.Missing(b, prog, prog+" not found on PATH")
	}
}

// publicRead lets anyone read the bucket's objects (s3:GetObject, which
// covers HEAD).
func publicRead(ctx context.Context, m *harness.MinIO, bucket string) error {
	mc, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		return fmt.Errorf("minio client: %w", err)
	}
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},`+
		`"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::%s/*"]}]}`, bucket)
	if err := mc.SetBucketPolicy(ctx, bucket, policy); err != nil {
		return fmt.Errorf("make bucket %s readable anonymously: %w", bucket, err)
	}
	return nil
}

// image is size incompressible bytes (ChaCha8 from a seed): any copy can
// be compared with it without keeping it around.
type image struct {
	seed        uint64
	size        int64
	key         string // its staging key
	md5, sha512 string
}

func (im *image) reader() io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], im.seed)
	return io.LimitReader(rand.NewChaCha8(s), im.size)
}

// url is the staged object's anonymous HTTP URL.
func (s *stack) url(im *image) string {
	return "http://" + s.minio.Endpoint + "/" + benchBucket + "/" + im.key
}

// stage puts the image into MinIO, hashing it on the way.
func (s *stack) stage(ctx context.Context, im *image) {
	s.b.Helper()
	m, h := md5.New(), sha512.New()
	im.key = fmt.Sprintf("%s/%d", s.run, im.size)
	if _, err := s.st.Put(ctx, jobs.Object{Bucket: benchBucket, Key: im.key}, io.TeeReader(im.reader(), io.MultiWriter(m, h)), im.size); err != nil {
		s.b.Fatalf("stage %d bytes: %v", im.size, err)
	}
	im.md5, im.sha512 = hex.EncodeToString(m.Sum(nil)), hex.EncodeToString(h.Sum(nil))
}

// unstage deletes the staged object.
func (s *stack) unstage(ctx context.Context, im *image) {
	if err := s.st.Delete(ctx, jobs.Object{Bucket: benchBucket, Key: im.key}); err != nil {
		s.b.Errorf("delete staged %s: %v", im.key, err)
	}
}

// fileMD5 hashes the first n bytes of a file.
func fileMD5(path string, n int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := md5.New()
	if got, err := io.Copy(h, io.LimitReader(f, n)); err != nil || got != n {
		return "", fmt.Errorf("hash %s: %d of %d bytes: %v", path, got, n, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checkMD5 fails the benchmark when a copy's first bytes are not the image.
func (s *stack) checkMD5(what, path string, im *image) {
	s.b.Helper()
	sum, err := fileMD5(path, im.size)
	if err != nil {
		s.b.Fatalf("%s: %v", what, err)
	}
	if sum != im.md5 {
		s.b.Fatalf("%s: md5 %s, the image's is %s", what, sum, im.md5)
	}
}

// worker starts a worker process with Cinder volumes on the stack, one job
// at a time.
func (s *stack) worker(name string) *harness.Worker {
	s.b.Helper()
	args := append([]string{"--name", name, "--concurrency", "1", "--cinder-config", s.lab.GlanceConfFile}, s.conn...)
	return harness.StartWorker(s.b, harness.WorkerOptions{BinDir: binDir, Args: args})
}

// enqueue runs the CLI against the stack and fails on a non-zero exit.
func (s *stack) enqueue(ctx context.Context, w *harness.Worker, args ...string) string {
	s.b.Helper()
	out, stderr, code := w.Enqueue(ctx, append(append([]string{}, args...), append(s.conn, "--worker-url", w.HTTPURL)...)...)
	if code != 0 {
		s.b.Fatalf("enqueue %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

// deleteVolume deletes an image's volume with a delete job.
func (s *stack) deleteVolume(ctx context.Context, w *harness.Worker, volumeID string) {
	s.b.Helper()
	s.enqueue(ctx, w, "delete", volumeID, "--wait")
}

// signURL signs a download URL of the volume with the workers' key.
func (s *stack) signURL(ctx context.Context, w *harness.Worker, volumeID string) string {
	s.b.Helper()
	return strings.TrimSpace(s.enqueue(ctx, w, "sign-url", volumeID, "--download-key-file", filepath.Join(w.DataDir, "download.key")))
}

// result is an upload's result as `enqueue --output json` prints it.
type result struct {
	Location    string `json:"location"`
	VolumeID    string `json:"volume_id"`
	Size        int64  `json:"size"`
	Checksum    string `json:"checksum"`
	OSHashAlgo  string `json:"os_hash_algo"`
	OSHashValue string `json:"os_hash_value"`
}

// volumeFiles lists the lab's volume files.
func (s *stack) volumeFiles() map[string]bool {
	names, _ := filepath.Glob(filepath.Join(filepath.Dir(s.lab.VolumeFile("x")), "volume-*"))
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

// newVolumeFile returns the path of a lab volume file that is not in
// before, or "" while there is none.
func (s *stack) newVolumeFile(before map[string]bool) func() string {
	return func() string {
		for n := range s.volumeFiles() {
			if !before[n] {
				return n
			}
		}
		return ""
	}
}

// metrics scrapes the worker's /metrics (harness.Worker.Metrics); a failed
// scrape fails b.
func metrics(b *testing.B, w *harness.Worker) map[string]float64 {
	b.Helper()
	m, err := w.Metrics()
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// phases is where an upload job's time went, from the runner's debug step
// logs: seconds per step, and the runner's total.
type phases struct {
	steps map[string]float64
	total float64
}

// jobPhases reads a job's step timings from the worker's logs.
func jobPhases(b *testing.B, w *harness.Worker, jobID string) phases {
	b.Helper()
	var names []string
	var at []float64
	p := phases{steps: map[string]float64{}}
	for _, line := range strings.Split(w.Logs(), "\n") {
		var m struct {
			Message string  `json:"message"`
			JobID   string  `json:"job_id"`
			Step    string  `json:"step"`
			Elapsed float64 `json:"elapsed"` // ms
			Seconds float64 `json:"seconds"`
		}
		if !strings.Contains(line, jobID) || json.Unmarshal([]byte(line), &m) != nil || m.JobID != jobID {
			continue
		}
		switch m.Message {
		case "step":
			names = append(names, m.Step)
			at = append(at, m.Elapsed/1e3)
		case "upload complete":
			p.total = m.Seconds
		}
	}
	if len(names) == 0 || p.total == 0 {
		b.Fatalf("job %s: no step timings in the worker's logs", jobID)
	}
	p.steps["before"] = at[0]
	at = append(at, p.total)
	for i, n := range names {
		p.steps[n] += at[i+1] - at[i]
	}
	return p
}

// sampler records every interval how many bytes a file has allocated
// (sparse files: what has been written to it, page cache included) and,
// when pid is set, that process's resident memory.
type sampler struct {
	every time.Duration
	stop  chan struct{}
	done  chan struct{}
	ticks []Tick
	rss   int64 // largest VmRSS seen
}

// sampleInterval is the chart's resolution.
const sampleInterval = 250 * time.Millisecond

func startSampler(path func() string, pid int) *sampler {
	s := &sampler{every: sampleInterval, stop: make(chan struct{}), done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(s.done)
		var last int64
		lastT := 0.0
		t := time.NewTicker(s.every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case now := <-t.C:
				if pid != 0 {
					s.rss = max(s.rss, vmRSS(pid))
				}
				var n int64
				if p := path(); p != "" {
					var st syscall.Stat_t
					if syscall.Stat(p, &st) == nil {
						n = st.Blocks * 512
					}
				}
				sec := now.Sub(start).Seconds()
				s.ticks = append(s.ticks, Tick{Seconds: sec, MBps: float64(max(n-last, 0)) / 1e6 / (sec - lastT)})
				last, lastT = n, sec
			}
		}
	}()
	return s
}

// end stops sampling and returns the series.
func (s *sampler) end() []Tick {
	close(s.stop)
	<-s.done
	return s.ticks
}

// vmRSS is a process's resident set in bytes (0 when unknown).
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// parseSize reads 1GiB, 512MiB or a byte count.
func parseSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for suffix, m := range map[string]int64{"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10} {
		if v, ok := strings.CutSuffix(num, suffix); ok {
			num, mult = v, m
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive count of bytes, KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// sizeName prints a size as the flags take it.
func sizeName(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}
