package production

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

// TestTwoWorkersEightUploads enqueues eight uploads at once for two
// workers: every job completes, with a volume of its own, nothing is left
// attached or exported, and every image downloads back.
func TestTwoWorkersEightUploads(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := newStack(t)
	workers := []*harness.Worker{s.worker("pair-1"), s.worker("pair-2")}
	type upload struct {
		im             *image
		jobID, imageID string
	}
	var ups []upload
	for i := range 8 {
		jobID, imageID := ids(t, strconv.Itoa(i))
		im := newImage(uint64(200+i), 4*miB+int64(i)*kiB)
		s.stage(ctx, im, "pair/"+imageID)
		ups = append(ups, upload{im, jobID, imageID})
	}
	for i, u := range ups {
		if _, stderr, code := s.enqueue(ctx, workers[i%2], "upload", "--object", u.im.object(), "--job-id", u.jobID,
			"--image-id", u.imageID, "--size", strconv.FormatInt(u.im.size, 10)); code != 0 {
			t.Fatalf("enqueue %s: exit %d: %s", u.jobID, code, stderr)
		}
	}
	volumes := map[string]string{}
	ran := map[string]int{}
	for i, u := range ups {
		out, stderr, code := s.enqueue(ctx, workers[0], "watch", u.jobID, "--output", "json")
		if code != 0 {
			t.Fatalf("watch %s: exit %d: %s\n%s", u.jobID, code, stderr, out)
		}
		ev := lastEvent(t, out)
		if ev.State != jobs.StateCompleted || ev.Result == nil {
			t.Fatalf("job %s ended %s: %s", u.jobID, ev.State, ev.Error)
		}
		r := result{Location: ev.Result.Location, VolumeID: ev.Result.VolumeID, Size: ev.Result.Size, Checksum: ev.Result.Checksum,
			OSHashAlgo: ev.Result.OSHashAlgo, OSHashValue: ev.Result.OSHashValue}
		if other, dup := volumes[r.VolumeID]; dup {
			t.Errorf("jobs %s and %s share volume %s", other, u.jobID, r.VolumeID)
		}
		volumes[r.VolumeID] = u.jobID
		ran[ev.Worker]++
		s.deleteAtEnd(workers[0], r.VolumeID)
		s.checkUpload(u.im, r, expect{jobID: u.jobID, imageID: u.imageID})
		if n := len(s.volumesNamed("image-" + u.imageID)); n != 1 {
			t.Errorf("image %s has %d volumes, want 1", u.imageID, n)
		}
		// Either worker serves any image (one at a time: the volume takes
		// one attachment).
		s.checkDownload(s.signURL(ctx, workers[i%2], r.VolumeID), u.im)
	}
	t.Logf("8 uploads on two workers: jobs per worker %v", ran)
}

// lastEvent decodes the last of the JSON events `enqueue watch --output
// json` printed.
func lastEvent(t testing.TB, out string) jobs.Event {
	t.Helper()
	var ev jobs.Event
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("watch output %q: %v", out, err)
		}
	}
	return ev
}

// TestWrongChecksum: an upload whose image does not match its expected
// md5 fails permanently, its volume is deleted, and it is dead-lettered
// with the reason.
func TestWrongChecksum(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := newStack(t)
	w := s.worker("wrong-hash")
	jobID, imageID := ids(t, "")
	im := newImage(300, 3*miB+5)
	s.stage(ctx, im, "wrong/"+imageID)
	wrong := strings.Repeat("0", 32)
	_, stderr, code := s.enqueue(ctx, w, "upload", "--object", im.object(), "--job-id", jobID, "--image-id", imageID,
		"--checksum", wrong, "--wait")
	if code == 0 || !strings.Contains(stderr, "checksum mismatch") {
		t.Fatalf("upload with a wrong checksum: exit %d: %s", code, stderr)
	}
	out, stderr, code := s.enqueue(ctx, w, "status", jobID, "--output", "json")
	var ev jobs.Event
	if code == 0 || json.Unmarshal([]byte(out), &ev) != nil || ev.State != jobs.StateFailed || !strings.Contains(ev.Error, "checksum mismatch") {
		t.Errorf("status of the failed job: exit %d %s %s", code, out, stderr)
	}
	out, stderr, code = s.enqueue(ctx, w, "dead", "list")
	if code != 0 || !strings.Contains(out, jobID) || !strings.Contains(out, "attempts=1") || !strings.Contains(out, "checksum mismatch") ||
		!strings.Contains(out, im.md5) {
		t.Errorf("dead list: exit %d:\n%s%s", code, out, stderr)
	}
	// The volume is deleted (Cinder deletes asynchronously).
	deadline := time.Now().Add(time.Minute)
	for {
		left := s.volumesNamed("image-" + imageID)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failed upload's volume is still there: %+v", left)
		}
		time.Sleep(250 * time.Millisecond)
	}
	created := logLines(w, "created volume")
	if len(created) != 1 {
		t.Fatalf("the worker logged %d volume creations, want 1", len(created))
	}
	s.noExports(created[0]["volume_id"].(string))
	t.Logf("dead letter:\n%s", out)
}

// checkExport writes the volume back into staging with an export job and
// compares the object with the image.
func (s *stack) checkExport(ctx context.Context, w *harness.Worker, volumeID string, im *image, key string) {
	t := s.t
	t.Helper()
	jobID, _ := ids(t, "export")
	start := time.Now()
	r := s.run(ctx, w, "export", volumeID, "--object", bucket+"/"+key, "--job-id", jobID)
	took := time.Since(start)
	if r.Size != im.size || r.Checksum != im.md5 || r.OSHashValue != im.sha512 {
		t.Errorf("export result %+v, want %d bytes, md5 %s", r, im.size, im.md5)
	}
	o := jobs.Object{Bucket: bucket, Key: key}
	info, err := s.staging.Stat(ctx, o)
	if err != nil || info.Size != im.size {
		t.Fatalf("exported object: %+v, %v; want %d bytes", info, err, im.size)
	}
	body, err := s.staging.Open(ctx, o, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if err := harness.SameBytes(body, im.reader(), im.size); err != nil {
		t.Errorf("exported object differs from the image: %v", err)
	}
	t.Logf("export of %d bytes to %s: %.2f s", im.size, key, took.Seconds())
}
