package production

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSmoke: one small image through the whole production path and back.
func TestSmoke(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := newStack(t)
	w := s.worker("smoke-1")
	src := filepath.Join(t.TempDir(), "img")
	b := make([]byte, 3<<20+17)
	rand.NewChaCha8([32]byte{1}).Read(b)
	os.WriteFile(src, b, 0o600)
	sum := md5.Sum(b)
	out, stderr, code := s.enqueue(ctx, w, "upload", "--file", src, "--job-id", "smoke-1", "--image-id", "smoke", "--wait", "--output", "json")
	if code != 0 {
		t.Fatalf("upload: %d %s\nworker:\n%s", code, stderr, w.Logs())
	}
	var r struct {
		Location string `json:"location"`
		VolumeID string `json:"volume_id"`
		Checksum string `json:"checksum"`
		Size     int64  `json:"size"`
	}
	json.Unmarshal([]byte(out), &r)
	if r.Checksum != hex.EncodeToString(sum[:]) || r.Size != int64(len(b)) || r.Location != "cinder://"+r.VolumeID {
		t.Fatalf("result %s", out)
	}
	back := filepath.Join(t.TempDir(), "back")
	if _, stderr, code := s.enqueue(ctx, w, "download", r.VolumeID, "-o", back); code != 0 {
		t.Fatalf("download: %d %s", code, stderr)
	}
	got, _ := os.ReadFile(back)
	if md5.Sum(got) != sum {
		t.Fatal("downloaded image differs")
	}
	t.Logf("upload result: %s", out)
}
