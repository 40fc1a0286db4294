// Package production runs cinderport the way it is deployed: worker
// processes against a real nats-server, a real MinIO, and a real Keystone +
// Cinder whose LVM driver exports volumes through tgtd, attached with the
// userspace iSCSI initiator.
//
// The Cinder lab and MinIO are shared by the whole package; every test has
// a nats-server of its own, so that its workers take only its jobs, and
// keeps to its own image ids and staging keys. Tests check their own
// volumes for leaks (attachments, tgtd targets) and delete them with
// delete jobs when done.
package production

import (
	"fmt"
	"os"
	"testing"

	"github.com/cinderport/cinderport/tests/harness"
)

var (
	binDir string
	lab    harness.SharedCinderLab
	minio  harness.SharedMinIO
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cinderport-production-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := harness.BuildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	minio.Close()
	lab.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}
