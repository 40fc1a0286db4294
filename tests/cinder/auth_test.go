package cinder_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cinderport/cinderport/cinder"
	"github.com/cinderport/cinderport/cinder/cindertest"
	"github.com/cinderport/cinderport/jobs"
)

// TestConfigSources authenticates against the real Keystone with every
// way of configuring the client, and makes a call to Cinder with each.
func TestConfigSources(t *testing.T) {
	l := labFor(t)
	appCredID, appCredSecret := l.ApplicationCredential(t, fmt.Sprintf("cinderport-%d", rand.Uint32()))
	appCredConf := filepath.Join(t.TempDir(), "glance-api.conf")
	if err := os.WriteFile(appCredConf, fmt.Appendf(nil, `[DEFAULT]
enabled_backends = fast:cinder

[fast]
cinder_store_auth_address = %s
cinder_store_application_credential_id = %s
cinder_store_application_credential_secret = %s
cinder_catalog_info = volumev3:cinderv3:internalURL
`, l.AuthURL, appCredID, appCredSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	env := func(vars map[string]string) func(string) string {
		return func(k string) string { return vars[k] }
	}
	for _, tc := range []struct {
		name string
		load func() (cinder.Config, error)
	}{
		{"glance-api.conf", func() (cinder.Config, error) { return cinder.LoadGlanceConfig(l.GlanceConfFile, "") }},
		{"glance-api.conf, application credential, multi-store", func() (cinder.Config, error) {
			return cinder.LoadGlanceConfig(appCredConf, "fast")
		}},
		{"clouds.yaml", func() (cinder.Config, error) { return cinder.FromCloudsYAML("cinderlab", l.CloudsFile) }},
		{"OS_CLOUD", func() (cinder.Config, error) {
			return cinder.FromEnv(env(map[string]string{"OS_CLOUD": "cinderlab", "OS_CLIENT_CONFIG_FILE": l.CloudsFile}))
		}},
		// The variables gophercloud's AuthOptionsFromEnv ignores: user and
		// project domains given separately, no OS_DOMAIN_NAME.
		{"OS_* with separate domains", func() (cinder.Config, error) {
			return cinder.FromEnv(env(map[string]string{"OS_AUTH_URL": l.AuthURL, "OS_USERNAME": l.User,
				"OS_PASSWORD": l.Password, "OS_PROJECT_NAME": l.Project, "OS_USER_DOMAIN_NAME": "Default",
				"OS_PROJECT_DOMAIN_ID": "default", "OS_REGION_NAME": l.Region, "OS_INTERFACE": "admin"}))
		}},
		{"OS_* application credential", func() (cinder.Config, error) {
			return cinder.FromEnv(env(map[string]string{"OS_AUTH_URL": l.AuthURL,
				"OS_APPLICATION_CREDENTIAL_ID": appCredID, "OS_APPLICATION_CREDENTIAL_SECRET": appCredSecret}))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := tc.load()
			if err != nil {
				t.Fatal(err)
			}
			cfg.Connector.InitiatorName = "iqn.2026-01.io.cinderport:config-sources"
			c := newClient(t, cfg)
			if _, err := c.GetVolume(ctxFor(t), cindertest.UnknownID); !errors.Is(err, jobs.ErrNotFound) {
				t.Fatalf("call Cinder: %v, want not found", err)
			}
		})
	}
}

// tokenRecorder remembers the last token sent to Cinder.
type tokenRecorder struct {
	next   http.RoundTripper
	prefix string
	mu     sync.Mutex
	tokens []string
}

func (r *tokenRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if tok := req.Header.Get("X-Auth-Token"); tok != "" && strings.HasPrefix(req.URL.String(), r.prefix) {
		r.mu.Lock()
		r.tokens = append(r.tokens, tok)
		r.mu.Unlock()
	}
	return r.next.RoundTrip(req)
}

func (r *tokenRecorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.tokens) == 0 {
		return ""
	}
	return r.tokens[len(r.tokens)-1]
}

// TestReauthentication revokes the client's token in Keystone: the next
// calls (concurrent ones) get a 401 from Cinder, and the client
// authenticates again and succeeds.
func TestReauthentication(t *testing.T) {
	l := labFor(t)
	ctx := ctxFor(t)
	rec := &tokenRecorder{next: http.DefaultTransport, prefix: l.VolumeURL}
	c := newClient(t, labConfig(l), cinder.WithHTTPClient(&http.Client{Transport: rec}))
	if _, err := c.GetVolume(ctx, cindertest.UnknownID); !errors.Is(err, jobs.ErrNotFound) {
		t.Fatal(err)
	}
	old := rec.last()
	if old == "" {
		t.Fatal("no token was sent to Cinder")
	}
	l.RevokeToken(t, old)
	if l.TokenValid(t, old) {
		t.Fatal("the token is still valid after its revocation")
	}
	// Several goroutines meet the 401 together: they share one new token.
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.FindVolumes(ctx, map[string]string{jobs.MetaJobID: "reauth"})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("call after the token's revocation: %v", err)
		}
	}
	v, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-after-revocation", SizeGiB: 1})
	if err != nil {
		t.Fatalf("create after the token's revocation: %v", err)
	}
	if tok := rec.last(); tok == old || tok == "" {
		t.Fatal("the client did not get a new token")
	}
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	l.WaitNoLeaks(t)
}

// TestRefusedCredentials: a wrong password is permanent, and the error
// does not show it.
func TestRefusedCredentials(t *testing.T) {
	l := labFor(t)
	cfg := labConfig(l)
	cfg.Password = "wrong-" + l.Password
	_, err := cinder.New(ctxFor(t), cfg)
	if !jobs.IsPermanent(err) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("wrong password: %v, want a permanent 401", err)
	}
	if strings.Contains(err.Error(), cfg.Password) {
		t.Fatalf("the error shows the password: %v", err)
	}
}

// TestValidateToken asks the real Keystone about tokens presented to a
// worker: valid ones come back with their roles, revoked and forged ones as
// ErrInvalidToken.
func TestValidateToken(t *testing.T) {
	l := labFor(t)
	c := newClient(t, labConfig(l))
	ctx := ctxFor(t)
	svc, svcProject, err := l.Token(ctx, l.User, l.Password, l.Project)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.ValidateToken(ctx, svc)
	if err != nil {
		t.Fatalf("the service user's token: %v", err)
	}
	if info.ProjectID != svcProject || !slices.Contains(info.Roles, "admin") || info.ExpiresAt.IsZero() {
		t.Errorf("service token: %+v, want project %s and the admin role", info, svcProject)
	}
	p := l.CreateProject(t, fmt.Sprintf("tok-%d", rand.Uint32()))
	member, _, err := l.Token(ctx, p.User, p.Password, p.Name)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := c.ValidateToken(ctx, member); err != nil || slices.Contains(info.Roles, "admin") || !slices.Contains(info.Roles, "member") {
		t.Errorf("a member's token: %+v, %v", info, err)
	}
	l.RevokeToken(t, member)
	if _, err := c.ValidateToken(ctx, member); !errors.Is(err, cinder.ErrInvalidToken) {
		t.Errorf("a revoked token: %v, want ErrInvalidToken", err)
	}
	forged := "gAAAAA" + strings.Repeat("x", 180)
	_, err = c.ValidateToken(ctx, forged)
	if !errors.Is(err, cinder.ErrInvalidToken) {
		t.Errorf("a forged token: %v, want ErrInvalidToken", err)
	}
	if err != nil && strings.Contains(err.Error(), forged[:20]) {
		t.Error("the error shows the token")
	}
}
