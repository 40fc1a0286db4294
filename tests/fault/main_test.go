package fault

import (
	"fmt"
	"os"
	"testing"

	"github.com/cinderport/cinderport/tests/harness"
)

var (
	// binDir holds bin/worker and bin/enqueue, built once for the package.
	binDir string
	lab    harness.SharedCinderLab
	minio  harness.SharedMinIO
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cinderport-fault-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := harness.BuildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	harness.OnFailure = func(t testing.TB, msg string) { keepFailure(t, "%s", []any{msg}) }
	code := m.Run()
	printTable(os.Stdout)
	minio.Close()
	lab.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}
