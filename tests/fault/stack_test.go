package fault

import (
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/tests/harness"
)

const (
	bucket = "images"
	miB    = int64(1) << 20
	giB    = int64(1) << 30
)

// stack is one deployment for a fault test: the shared Cinder lab and
// MinIO, NATS of the test's own, and a byte-counting proxy in front of
// MinIO through which the workers (and only they) read staging — so that
// the bytes a job read, over all its attempts and crashes, are counted
// outside the worker. Images are staged through MinIO directly.
type stack struct {
	t       *testing.T
	lab     *harness.CinderLab
	minio   *harness.MinIO
	proxy   *harness.CountingProxy
	staging *staging.Client
	nc      *nats.Conn
	q       *queue.Queue    // opened once the first worker made the streams
	seen    map[string]bool // the volumes the test's jobs reported
	conn    []string        // --nats-url, --s3-* and --bucket, for workers and the CLI
}

// startNATS runs a single nats-server for the test and returns its URL.
func startNATS(t *testing.T) string {
	t.Helper()
	ns, err := natsembed.Start(natsembed.Options{Dir: t.TempDir(), Port: -1, Name: "fault"})
	if err != nil {
		fatalf(t, "start nats-server: %v", err)
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// newStack assembles a stack on natsURL (one URL, or a cluster's, comma
// separated).
func newStack(t *testing.T, natsURL string) *stack {
	t.Helper()
	l := lab.Get(t)
	m := minio.Get(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"cinder-volume", "cinder-wsgi"} {
				t.Logf("%s log, its last warnings and errors:\n%s", name, harness.LastLines(notable(l.Logs(name)), 40))
			}
		}
	})
	sc, err := staging.New(staging.Config{Endpoint: m.Endpoint, AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err != nil {
		fatalf(t, "staging client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sc.EnsureBucket(ctx, bucket); err != nil {
		fatalf(t, "staging bucket: %v", err)
	}
	nc, err := queue.Connect(ctx, natsURL, queue.ConnectOptions{Name: "fault-" + t.Name()})
	if err != nil {
		fatalf(t, "connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	s := &stack{t: t, lab: l, minio: m, proxy: harness.StartCountingProxy(t, m.Endpoint), staging: sc, seen: map[string]bool{}}
	s.conn = []string{"--nats-url", natsURL, "--s3-endpoint", s.proxy.Addr, "--s3-access-key", m.AccessKey,
		"--s3-secret-key", m.SecretKey, "--bucket", bucket}
	s.nc = nc
	return s
}

// worker starts a worker process on the stack with Cinder volumes and a
// short AckWait, so that a job of a killed worker is redelivered within
// seconds.
func (s *stack) worker(name string, args ...string) *harness.Worker {
	s.t.Helper()
	all := append(append([]string{"--name", name, "--cinder-config", s.lab.GlanceConfFile, "--ack-wait", "5s"}, s.conn...), args...)
	w := harness.StartWorker(s.t, harness.WorkerOptions{BinDir: binDir, Args: all})
	if s.q == nil {
		// The worker made the streams and buckets: the test's client uses
		// them as they are.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		q, err := queue.Open(ctx, s.nc, queue.Config{Existing: true})
		if err != nil {
			fatalf(s.t, "open the queue: %v", err)
		}
		s.q = q
	}
	return w
}

// enqueue runs the CLI against the stack.
func (s *stack) enqueue(ctx context.Context, w *harness.Worker, args ...string) (string, string, int) {
	s.t.Helper()
	return w.Enqueue(ctx, append(append([]string{}, args...), s.conn...)...)
}

// upload enqueues an upload of im as jobID without waiting for it.
func (s *stack) upload(ctx context.Context, w *harness.Worker, im *image, jobID, imageID string) {
	s.t.Helper()
	if _, stderr, code := s.enqueue(ctx, w, "upload", "--object", bucket+"/"+im.key, "--job-id", jobID,
		"--image-id", imageID, "--size", strconv.FormatInt(im.size, 10)); code != 0 {
		fatalf(s.t, "enqueue %s: exit %d: %s", jobID, code, stderr)
	}
}

// until follows a job's status until pred holds for an event or the job
// ends, and returns that event. A watch the NATS cluster breaks (a node
// lost, JetStream electing a leader) is started again until ctx ends, and
// so is one that has been quiet for 30 s, in case the break left it
// stalled: a new watch starts with the job's current status.
func (s *stack) until(ctx context.Context, jobID string, pred func(jobs.Event) bool) (jobs.Event, error) {
	var last jobs.Event
	var lastErr string
	for {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := s.q.Watch(wctx, jobID, func(ev jobs.Event) bool {
			last = ev
			return !pred(ev) && !ev.State.Terminal()
		})
		cancel()
		if err == nil {
			return last, nil
		}
		if ctx.Err() != nil {
			return last, fmt.Errorf("watch job %s (last %s/%s): %w", jobID, last.State, last.Step, err)
		}
		if wctx.Err() != nil {
			continue // quiet for 30 s: watch again
		}
		if err.Error() != lastErr {
			lastErr = err.Error()
			s.t.Logf("watch job %s: %v: watching again", jobID, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond): // back off before watching again
		}
	}
}

// waitEnd waits for the job's terminal event and requires it completed
// with a result.
func (s *stack) waitEnd(ctx context.Context, jobID string) jobs.Result {
	s.t.Helper()
	// A job takes well under a minute here; retries after an outage add
	// their backoff (5 s doubling).
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	ev, err := s.until(ctx, jobID, func(jobs.Event) bool { return false })
	if err != nil {
		fatalf(s.t, "job %s did not end: %v", jobID, err)
	}
	if ev.State != jobs.StateCompleted || ev.Result == nil {
		fatalf(s.t, "job %s ended %s: %s", jobID, ev.State, ev.Error)
	}
	return *ev.Result
}

// image is a test image: size pseudo-random bytes from a seed, so that a
// copy is compared with it without keeping it on disk. md5 and sha512 are
// computed here, with the standard library, when it is staged.
type image struct {
	seed        uint64
	size        int64
	key         string // its staging key
	md5, sha512 string
}

// reader streams the image's bytes.
func (im *image) reader() io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], im.seed)
	return io.LimitReader(rand.NewChaCha8(s), im.size)
}

// stage puts a new image into MinIO under key, hashing it on the way.
func (s *stack) stage(ctx context.Context, seed uint64, size int64, key string) *image {
	s.t.Helper()
	im := &image{seed: seed, size: size, key: key}
	m, h := md5.New(), sha512.New()
	if _, err := s.staging.Put(ctx, jobs.Object{Bucket: bucket, Key: key}, io.TeeReader(im.reader(), io.MultiWriter(m, h)), size); err != nil {
		fatalf(s.t, "stage %s: %v", key, err)
	}
	im.md5, im.sha512 = hex.EncodeToString(m.Sum(nil)), hex.EncodeToString(h.Sum(nil))
	return im
}

// checkUpload checks a completed upload through the lab, not through
// cinderport: the result's hashes, the only volume named after the image
// (available, read-only, with the image's metadata), the sparse file
// behind it holding the image's bytes, and no attachment or tgtd target
// left of it. It returns what is wrong, empty when nothing is.
func (s *stack) checkUpload(im *image, r jobs.Result, jobID, imageID string) []string {
	s.t.Helper()
	var bad []string
	if r.Location != "cinder://"+r.VolumeID || r.Size != im.size || r.Checksum != im.md5 || r.OSHashAlgo != "sha512" || r.OSHashValue != im.sha512 {
		bad = append(bad, fmt.Sprintf("result %+v, want size %d, md5 %s, sha512 %.16s…", r, im.size, im.md5, im.sha512))
	}
	named := s.volumesNamed("image-" + imageID)
	if len(named) != 1 || named[0].ID != r.VolumeID {
		var ids []string
		for _, v := range named {
			ids = append(ids, v.ID+" ("+v.Status+")")
		}
		bad = append(bad, fmt.Sprintf("volumes named image-%s: %v, want only %s", imageID, ids, r.VolumeID))
	}
	var v harness.LabVolume
	for _, x := range named {
		if x.ID == r.VolumeID {
			v = x
		}
	}
	if v.ID == "" {
		return append(bad, "volume "+r.VolumeID+" is not in Cinder")
	}
	if v.Status != "available" || v.Size != int(max(1, (im.size+giB-1)/giB)) {
		bad = append(bad, fmt.Sprintf("volume %s is %s, %d GiB", v.ID, v.Status, v.Size))
	}
	md := map[string]string{
		"glance_image_id": imageID, "image_size": strconv.FormatInt(im.size, 10), "readonly": "True",
		"cinderport_job_id": jobID, "cinderport_checksum": im.md5, "cinderport_store": "default",
		"cinderport_os_hash_algo": "sha512", "cinderport_os_hash_value": im.sha512,
	}
	for k, want := range md {
		if v.Metadata[k] != want {
			bad = append(bad, fmt.Sprintf("metadata %s = %q, want %q", k, v.Metadata[k], want))
		}
	}
	bad = append(bad, s.exports(r.VolumeID)...)
	f, err := os.Open(s.lab.VolumeFile(r.VolumeID))
	if err != nil {
		return append(bad, err.Error())
	}
	defer f.Close()
	if err := harness.SameBytes(f, im.reader(), im.size); err != nil {
		bad = append(bad, "the volume's bytes differ from the image: "+err.Error())
	}
	return bad
}

// exports waits up to 30 s for no attachment and no tgtd target of the
// volume to be left (deleting an attachment removes its target
// asynchronously) and returns what is left.
func (s *stack) exports(volumeID string) []string {
	s.t.Helper()
	var left []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		left = nil
		for _, name := range s.lab.VolumeTargets(volumeID) {
			left = append(left, "tgtd target "+name)
		}
		for _, a := range s.lab.Attachments(s.t) {
			if a.VolumeID == volumeID {
				left = append(left, "attachment "+a.ID+" ("+a.Status+")")
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// volumesNamed lists the volumes named name, as the cloud admin sees them.
func (s *stack) volumesNamed(name string) []harness.LabVolume {
	var out []harness.LabVolume
	for _, v := range s.lab.Volumes(s.t) {
		if v.Name == name {
			out = append(out, v)
		}
	}
	return out
}

// deleteVolume deletes an image volume with a delete job and waits until
// Cinder no longer lists it.
func (s *stack) deleteVolume(ctx context.Context, w *harness.Worker, volumeID string) {
	s.t.Helper()
	if _, stderr, code := s.enqueue(ctx, w, "delete", volumeID, "--wait"); code != 0 {
		errorf(s.t, "delete job of volume %s: exit %d: %s\nthe worker's last lines:\n%s", volumeID, code, stderr, harness.LastLines(w.Logs(), 15))
		return
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		found := false
		for _, v := range s.lab.Volumes(s.t) {
			found = found || v.ID == volumeID
		}
		if !found {
			return
		}
		if time.Now().After(deadline) {
			errorf(s.t, "volume %s is still there 2 min after its delete job", volumeID)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// leaks waits up to a minute for the test's volumes — named
// image-<prefix>…, or reported by its jobs — to be gone, with no attachment
// or tgtd target of any of them left, and returns the leak count and what
// is left. (Other tests' leftovers are theirs to report.)
func (s *stack) leaks(prefix string) (int, []string) {
	s.t.Helper()
	var left []string
	deadline := time.Now().Add(time.Minute)
	for {
		left = nil
		ids := map[string]bool{}
		for id := range s.seen {
			ids[id] = true
		}
		for _, v := range s.lab.Volumes(s.t) {
			if strings.HasPrefix(v.Name, "image-"+prefix) {
				ids[v.ID] = true
				left = append(left, fmt.Sprintf("volume %s %q (%s)", v.ID, v.Name, v.Status))
			}
		}
		for _, a := range s.lab.Attachments(s.t) {
			if ids[a.VolumeID] {
				left = append(left, fmt.Sprintf("attachment %s of volume %s (%s)", a.ID, a.VolumeID, a.Status))
			}
		}
		for id := range ids {
			for _, name := range s.lab.VolumeTargets(id) {
				left = append(left, "tgtd target "+name)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return len(left), left
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkNoLeaks records the leak count of the test's volumes (images named
// prefix…) in r and fails t on a leak.
func (s *stack) checkNoLeaks(r *row, prefix string) {
	s.t.Helper()
	n, left := s.leaks(prefix)
	r.leaks = n
	if n > 0 {
		errorf(s.t, "leaked: %s", strings.Join(left, ", "))
	}
}

// jobLog returns the last n lines of a worker's log about the job, at
// level info or above: what a failure's reader needs to follow its attempts.
func jobLog(w *harness.Worker, jobID string, n int) string {
	var keep []string
	for _, line := range strings.Split(w.Logs(), "\n") {
		if strings.Contains(line, `"job_id":"`+jobID+`"`) && !strings.Contains(line, `"level":"debug"`) {
			keep = append(keep, line)
		}
	}
	return harness.LastLines(strings.Join(keep, "\n"), n)
}

// logLines counts a worker's JSON log lines with message msg for the job.
func logLines(w *harness.Worker, msg, jobID string) int {
	n := 0
	for _, line := range strings.Split(w.Logs(), "\n") {
		if strings.Contains(line, `"message":"`+msg+`"`) && strings.Contains(line, `"job_id":"`+jobID+`"`) {
			n++
		}
	}
	return n
}

// errEnded is why a trigger did not fire: the job ended first.
var errEnded = errors.New("the job ended first")

// atBytes waits until the workers read n more bytes from staging than
// base, or until the job ends (errEnded).
func (s *stack) atBytes(ctx context.Context, jobID string, base, n int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if _, err := s.until(ctx, jobID, func(jobs.Event) bool { return false }); err == nil {
			cancel(errEnded)
		}
	}()
	if err := s.proxy.WaitBytes(ctx, base+n); err != nil {
		if errors.Is(context.Cause(ctx), errEnded) {
			return errEnded
		}
		return err
	}
	return nil
}

// atStep waits until the job reaches one of steps, or ends (errEnded).
func (s *stack) atStep(ctx context.Context, jobID string, steps ...jobs.Step) (jobs.Event, error) {
	ev, err := s.until(ctx, jobID, func(ev jobs.Event) bool {
		for _, st := range steps {
			if ev.Step == st && !ev.State.Terminal() {
				return true
			}
		}
		return false
	})
	if err == nil && ev.State.Terminal() {
		err = errEnded
	}
	return ev, err
}

// finishRun checks a completed upload through the lab, counts it in r
// (completed, image bytes; the caller counts the bytes read), and deletes
// the volume with a delete job.
func (s *stack) finishRun(ctx context.Context, r *row, w *harness.Worker, im *image, res jobs.Result, jobID, imageID string) {
	s.t.Helper()
	s.seen[res.VolumeID] = true
	r.images += im.size
	if bad := s.checkUpload(im, res, jobID, imageID); len(bad) > 0 {
		errorf(s.t, "%s: %s", jobID, strings.Join(bad, "; "))
	} else {
		r.completed++
	}
	if n := logLines(w, "created volume", jobID); n > 1 {
		errorf(s.t, "%s: the job created %d volumes; its log, info and above:\n%s", jobID, n, jobLog(w, jobID, 40))
	}
	s.t.Logf("%s: completed after %d attempt(s) on %s", jobID, logLines(w, "job started", jobID), res.VolumeID)
	s.deleteVolume(ctx, w, res.VolumeID)
}

// notable keeps the lines of an OpenStack service's log above INFO (and
// the tracebacks that follow them): what a failure's reader needs, without
// every API request.
func notable(log string) string {
	var keep []string
	inTrace := false
	for _, line := range strings.Split(log, "\n") {
		level := ""
		if f := strings.Fields(line); len(f) > 3 {
			level = f[3] // date time pid LEVEL module …
		}
		switch {
		case level == "WARNING" || level == "ERROR" || level == "CRITICAL":
			inTrace = true
			keep = append(keep, line)
		case level == "INFO" || level == "DEBUG":
			inTrace = false
		case inTrace:
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}
