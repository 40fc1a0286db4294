package production

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

const (
	kiB = int64(1) << 10
	miB = int64(1) << 20
	giB = int64(1) << 30
)

// image is a test image: size pseudo-random bytes from a seed, so that any
// copy can be compared with it without keeping it on disk. md5 and sha512
// are computed here, with the standard library, when it is staged.
type image struct {
	seed        uint64
	size        int64
	key         string // its staging key
	md5, sha512 string
}

func newImage(seed uint64, size int64) *image { return &image{seed: seed, size: size} }

// reader streams the image's bytes.
func (im *image) reader() io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], im.seed)
	return io.LimitReader(rand.NewChaCha8(s), im.size)
}

// object is its staged object as BUCKET/KEY.
func (im *image) object() string { return bucket + "/" + im.key }

// stage puts the image into MinIO under key, hashing it on the way.
func (s *stack) stage(ctx context.Context, im *image, key string) {
	s.t.Helper()
	m, h := md5.New(), sha512.New()
	if _, err := s.staging.Put(ctx, jobs.Object{Bucket: bucket, Key: key}, io.TeeReader(im.reader(), io.MultiWriter(m, h)), im.size); err != nil {
		s.t.Fatalf("stage %s: %v", key, err)
	}
	im.key, im.md5, im.sha512 = key, hex.EncodeToString(m.Sum(nil)), hex.EncodeToString(h.Sum(nil))
}

// expect is what an upload's volume must look like.
type expect struct {
	jobID, imageID string
	store, owner   string // "" when not given
	sizeGiB        int    // 0: ceil(size / GiB), minimum 1
}

// checkUpload checks an upload's result and its volume through the lab —
// not through cinderport: the volume's size, status, read-only flag and
// metadata as Cinder shows them, that nothing is attached or exported
// any more, and that the sparse file behind the volume starts with the
// image's bytes.
func (s *stack) checkUpload(im *image, r result, e expect) {
	t := s.t
	t.Helper()
	loc := "cinder://" + r.VolumeID
	if e.store != "" {
		loc = "cinder://" + e.store + "/" + r.VolumeID
	}
	if r.Location != loc || r.Size != im.size || r.Checksum != im.md5 || r.OSHashAlgo != "sha512" || r.OSHashValue != im.sha512 {
		t.Errorf("%s: result %+v, want location %s, size %d, md5 %s and sha512 %.16s…", e.jobID, r, loc, im.size, im.md5, im.sha512)
	}
	want := e.sizeGiB
	if want == 0 {
		want = int(max(1, (im.size+giB-1)/giB))
	}
	v, ok := s.volume(r.VolumeID)
	if !ok {
		t.Fatalf("%s: volume %s is not in Cinder", e.jobID, r.VolumeID)
	}
	if v.Status != "available" || v.Size != want || v.Name != "image-"+e.imageID {
		t.Errorf("%s: volume %s is %q, %s, %d GiB; want image-%s, available, %d GiB", e.jobID, v.ID, v.Name, v.Status, v.Size, e.imageID, want)
	}
	md := map[string]string{
		"glance_image_id": e.imageID, "image_size": strconv.FormatInt(im.size, 10), "readonly": "True",
		"cinderport_job_id": e.jobID, "cinderport_checksum": im.md5,
		"cinderport_os_hash_algo": "sha512", "cinderport_os_hash_value": im.sha512,
	}
	md["cinderport_store"] = "default"
	if e.store != "" {
		md["cinderport_store"] = e.store
	}
	if e.owner != "" {
		md["image_owner"] = e.owner
	}
	for k, x := range md {
		if v.Metadata[k] != x {
			t.Errorf("%s: volume metadata %s = %q, want %q", e.jobID, k, v.Metadata[k], x)
		}
	}
	if _, ok := v.Metadata["image_owner"]; ok && e.owner == "" {
		t.Errorf("%s: image_owner %q set, none given", e.jobID, v.Metadata["image_owner"])
	}
	s.noExports(r.VolumeID)

	f, err := os.Open(s.lab.VolumeFile(r.VolumeID))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(want)*giB {
		t.Errorf("%s: the volume's file is %d bytes, want %d GiB", e.jobID, st.Size(), want)
	}
	if err := harness.SameBytes(f, im.reader(), im.size); err != nil {
		t.Errorf("%s: the volume's bytes (its backing file) differ from the image: %v", e.jobID, err)
	}
}

// volume looks a volume up as the cloud admin.
func (s *stack) volume(id string) (harness.LabVolume, bool) {
	for _, v := range s.lab.Volumes(s.t) {
		if v.ID == id {
			return v, true
		}
	}
	return harness.LabVolume{}, false
}

// volumesNamed lists the volumes named name.
func (s *stack) volumesNamed(name string) []harness.LabVolume {
	var out []harness.LabVolume
	for _, v := range s.lab.Volumes(s.t) {
		if v.Name == name {
			out = append(out, v)
		}
	}
	return out
}

// noExports checks that no attachment and no tgtd target is left of a
// volume (an attachment's deletion removes the target; both are given a
// few seconds).
func (s *stack) noExports(volumeID string) {
	s.t.Helper()
	var left []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		left = s.lab.VolumeTargets(volumeID)
		for _, c := range s.lab.Connections(s.t, volumeID) {
			left = append(left, "attachment "+c.AttachmentID+" ("+c.Status+")")
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if len(left) > 0 {
		s.t.Errorf("volume %s still has %s", volumeID, strings.Join(left, ", "))
	}
}

// deleteAtEnd deletes the volume with a delete job when the test ends, and
// checks that it is gone with nothing exported.
// args add to the delete job (its --zone and --store).
func (s *stack) deleteAtEnd(w *harness.Worker, volumeID string, args ...string) {
	s.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if _, stderr, code := s.enqueue(ctx, w, append([]string{"delete", volumeID, "--wait"}, args...)...); code != 0 {
			s.t.Errorf("delete job of volume %s: exit %d: %s", volumeID, code, stderr)
		}
		s.waitGone(volumeID)
		s.noExports(volumeID)
	})
}

// waitGone waits until Cinder no longer lists the volume.
func (s *stack) waitGone(volumeID string) {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v, ok := s.volume(volumeID)
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("volume %s is still there (%s)", volumeID, v.Status)
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// signURL signs a download URL of the volume with the CLI, as a client
// holding the workers' key file does.
func (s *stack) signURL(ctx context.Context, w *harness.Worker, volumeID string) string {
	s.t.Helper()
	out, stderr, code := s.enqueue(ctx, w, "sign-url", volumeID, "--download-key-file", filepath.Join(w.DataDir, "download.key"))
	if code != 0 {
		s.t.Fatalf("sign-url: exit %d: %s", code, stderr)
	}
	return strings.TrimSpace(out)
}

// httpGet makes a GET with the given headers (pairs) and returns the
// response (body read) and the body.
func httpGet(t testing.TB, url string, headers []string) (*http.Response, []byte) {
	t.Helper()
	resp := httpOpen(t, url, headers)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, b
}

// httpOpen makes a GET and returns the response with its body to read.
func httpOpen(t testing.TB, url string, headers []string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

// checkDownload downloads the whole image over HTTP and compares it with
// the source, with its length and hash headers.
func (s *stack) checkDownload(url string, im *image) {
	t := s.t
	t.Helper()
	resp := httpOpen(t, url, nil)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("download: %s: %s", resp.Status, b)
	}
	h := resp.Header
	if resp.ContentLength != im.size || h.Get("X-Image-Checksum") != im.md5 || h.Get("X-Image-Os-Hash-Algo") != "sha512" ||
		h.Get("X-Image-Os-Hash-Value") != im.sha512 || h.Get("ETag") != `"`+im.md5+`"` {
		t.Errorf("download headers: length %d, %v; want %d bytes, md5 %s", resp.ContentLength, h, im.size, im.md5)
	}
	if err := harness.SameBytes(resp.Body, im.reader(), im.size); err != nil {
		t.Errorf("downloaded image differs: %v", err)
	}
	if n, _ := io.Copy(io.Discard, resp.Body); n != 0 {
		t.Errorf("download has %d bytes past the image", n)
	}
}

// checkRange asks for bytes [first, last] and compares them with the
// volume's backing file (checked against the source before).
func (s *stack) checkRange(url, volumeID string, im *image, first, last int64) {
	t := s.t
	t.Helper()
	resp, body := httpGet(t, url, []string{"Range", fmt.Sprintf("bytes=%d-%d", first, last)})
	wantCR := fmt.Sprintf("bytes %d-%d/%d", first, last, im.size)
	if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != wantCR {
		t.Fatalf("range %d-%d: %s, Content-Range %q, want 206 and %q", first, last, resp.Status, resp.Header.Get("Content-Range"), wantCR)
	}
	want := make([]byte, last-first+1)
	f, err := os.Open(s.lab.VolumeFile(volumeID))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(want, first); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, want) {
		t.Errorf("range %d-%d: %d bytes that differ from the image's", first, last, len(body))
	}
}

// ids makes a test's image and job ids unique in the shared lab.
func ids(t testing.TB, name string) (jobID, imageID string) {
	base := strings.ToLower(strings.NewReplacer("/", "-", "_", "-", "+", "p").Replace(t.Name() + "-" + name))
	base = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, base)
	return "job-" + base, "img-" + base
}

// sortedKeys is for stable reports.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
