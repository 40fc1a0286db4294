package production

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cinderport/cinderport/tests/harness"
)

// TestKeystoneDownloads: a worker with --download-auth keystone asks the
// real Keystone about every token: the image service's token (role admin)
// gets the image, a member of another project is forbidden, a bogus or
// missing token is unauthenticated.
func TestKeystoneDownloads(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := newStack(t)
	w := s.worker("keystone", "--download-auth", "keystone")
	jobID, imageID := ids(t, "")
	im := newImage(500, 2*miB+3)
	s.stage(ctx, im, "keystone/"+imageID)
	r := s.run(ctx, w, "upload", "--object", im.object(), "--job-id", jobID, "--image-id", imageID, "--size", strconv.FormatInt(im.size, 10))
	s.deleteAtEnd(w, r.VolumeID)

	service, _, err := s.lab.Token(ctx, s.lab.User, s.lab.Password, s.lab.Project)
	if err != nil {
		t.Fatal(err)
	}
	p := s.lab.CreateProject(t, "downloads-member")
	member, _, err := s.lab.Token(ctx, p.User, p.Password, p.Name)
	if err != nil {
		t.Fatal(err)
	}
	url := w.HTTPURL + "/v1/images/" + r.VolumeID
	for _, c := range []struct {
		name    string
		headers []string
		want    int
	}{
		{"service token", []string{"X-Auth-Token", service}, http.StatusOK},
		{"service token, range", []string{"X-Auth-Token", service, "Range", "bytes=100-199"}, http.StatusPartialContent},
		{"member token", []string{"X-Auth-Token", member}, http.StatusForbidden},
		{"bogus token", []string{"X-Auth-Token", "gAAAAABbogus" + hex.EncodeToString(make([]byte, 40))}, http.StatusUnauthorized},
		{"no token", nil, http.StatusUnauthorized},
	} {
		resp, body := httpGet(t, url, c.headers)
		if resp.StatusCode != c.want {
			t.Errorf("%s: %s (%.200s), want %d", c.name, resp.Status, body, c.want)
			continue
		}
		switch c.want {
		case http.StatusOK:
			if sum := md5.Sum(body); hex.EncodeToString(sum[:]) != im.md5 {
				t.Errorf("%s: the image differs", c.name)
			}
		case http.StatusPartialContent:
			if len(body) != 100 {
				t.Errorf("%s: %d bytes, want 100", c.name, len(body))
			}
		}
	}
	// The CLI with a token instead of a signed URL.
	out := filepath.Join(t.TempDir(), "image")
	if _, stderr, code := s.enqueue(ctx, w, "download", r.VolumeID, "-o", out, "--auth-token", service); code != 0 {
		t.Fatalf("enqueue download --auth-token: exit %d: %s", code, stderr)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := harness.SameBytes(f, im.reader(), im.size); err != nil {
		t.Errorf("downloaded with a token: %v", err)
	}
}
