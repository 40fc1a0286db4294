package cinder_test

import (
	"testing"
	"time"

	"github.com/cinderport/cinderport/cinder/cindertest"
)

// TestConformance runs the jobs.Volumes suite the local look-alike also
// passes, against the real Cinder: among others, every lookup of an unknown
// volume or attachment wraps jobs.ErrNotFound and names it.
func TestConformance(t *testing.T) {
	l := labFor(t)
	cfg := labConfig(l)
	cfg.AttachmentRetryAttempts = 2
	cfg.AttachmentRetryInterval = 100 * time.Millisecond
	cindertest.Run(t, newClient(t, cfg))
	l.WaitNoLeaks(t)
}
