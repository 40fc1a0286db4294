package fault

import (
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile writes size random bytes to a new file and returns its path.
func writeFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "image.raw")
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(size)}).Read(b)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		fatalf(t, "%v", err)
	}
	return p
}

// volumeFiles lists the local volumes in a worker's data directory.
func volumeFiles(t *testing.T, dataDir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(filepath.Join(dataDir, "volumes"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".img") {
			out = append(out, p)
		}
		return nil
	})
	return out
}
