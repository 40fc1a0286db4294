// Package cinder_test runs package cinder against a real Keystone + Cinder
// (tests/harness CinderLab): volumes made by the LVM driver, exported by
// tgtd over iSCSI with CHAP, and written through the userspace initiator.
// One lab serves the whole package; it starts with the first test that
// needs it.
package cinder_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/cinder"
	"github.com/cinderport/cinderport/tests/harness"
)

var lab harness.SharedCinderLab

func TestMain(m *testing.M) {
	code := m.Run()
	lab.Close()
	os.Exit(code)
}

// labFor returns the package's lab; a failing test shows the end of the
// Cinder services' logs.
func labFor(t *testing.T) *harness.CinderLab {
	t.Helper()
	l := lab.Get(t)
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"cinder-volume", "cinder-scheduler", "cinder-wsgi"} {
				t.Logf("%s log (lab in %s; CINDERLAB_KEEP=1 keeps it):\n%s", name, l.Dir(), l.Logs(name))
			}
		}
	})
	return l
}

// labConfig is the lab's service user with password authentication.
func labConfig(l *harness.CinderLab) cinder.Config {
	return cinder.Config{
		AuthURL: l.AuthURL, Username: l.User, Password: l.Password, UserDomainName: "Default",
		ProjectName: l.Project, ProjectDomainName: "Default", Region: l.Region,
		StateTransitionTimeout: 2 * time.Minute,
		// The lab's volumes change state within a second: poll closely.
		PollInterval: 100 * time.Millisecond, PollMaxInterval: 2 * time.Second,
		Connector: cinder.Connector{InitiatorName: "iqn.2026-01.io.cinderport:lab-test"},
	}
}

// newClient makes a client for the lab; the test's log gets its output
// unless opts set another logger.
func newClient(t *testing.T, cfg cinder.Config, opts ...cinder.Option) *cinder.Client {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	c, err := cinder.New(ctxFor(t), cfg, append([]cinder.Option{cinder.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ctxFor is a context bounded well under the test timeout.
func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
