package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func key(b byte) []byte { return []byte(strings.Repeat(string(rune('a'+b)), MinKeyBytes)) }

func signedRequest(t *testing.T, s SignedURLs, volumeID, signFor string, expires time.Time) *http.Request {
	t.Helper()
	q, err := s.Sign(signFor, expires)
	if err != nil {
		t.Fatal(err)
	}
	return httptest.NewRequest(http.MethodGet, ImagePath(volumeID)+"?"+q, nil)
}

func TestSignedURLs(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	signer := SignedURLs{Keys: [][]byte{key(1)}, Now: clock}
	rotated := SignedURLs{Keys: [][]byte{key(2), key(1)}, Now: clock} // key 2 signs now; key 1 still accepted
	other := SignedURLs{Keys: [][]byte{key(3)}, Now: clock}

	for _, tc := range []struct {
		name string
		auth SignedURLs
		req  *http.Request
		want error
	}{
		{"valid", signer, signedRequest(t, signer, "vol-1", "vol-1", now.Add(time.Minute)), nil},
		{"old key after rotation", rotated, signedRequest(t, signer, "vol-1", "vol-1", now.Add(time.Minute)), nil},
		{"new key after rotation", rotated, signedRequest(t, rotated, "vol-1", "vol-1", now.Add(time.Minute)), nil},
		{"expired", signer, signedRequest(t, signer, "vol-1", "vol-1", now.Add(-time.Second)), ErrForbidden},
		{"another volume's signature", signer, signedRequest(t, signer, "vol-2", "vol-1", now.Add(time.Minute)), ErrForbidden},
		{"another key", signer, signedRequest(t, other, "vol-1", "vol-1", now.Add(time.Minute)), ErrForbidden},
		{"no credentials", signer, httptest.NewRequest(http.MethodGet, ImagePath("vol-1"), nil), ErrNoCredentials},
		{"malformed signature", signer, httptest.NewRequest(http.MethodGet, ImagePath("vol-1")+"?expires=1900000000&signature=zz", nil), ErrForbidden},
		{"malformed expiry", signer, httptest.NewRequest(http.MethodGet, ImagePath("vol-1")+"?expires=soon&signature="+strings.Repeat("0", 64), nil), ErrForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.auth.Authenticate(tc.req, tc.req.URL.Path[len("/v1/images/"):])
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// A moved expiry invalidates the signature.
	req := signedRequest(t, signer, "vol-1", "vol-1", now.Add(time.Minute))
	q := req.URL.Query()
	q.Set(ParamExpires, fmt.Sprint(now.Add(time.Hour).Unix()))
	req.URL.RawQuery = q.Encode()
	if err := signer.Authenticate(req, "vol-1"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("extended expiry: %v", err)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "download.key")
	k1, err := EnsureKeyFile(p)
	if err != nil || len(k1) != 1 || len(k1[0]) != MinKeyBytes {
		t.Fatalf("first EnsureKeyFile: %v %v", k1, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	k2, err := EnsureKeyFile(p)
	if err != nil || string(k2[0]) != string(k1[0]) {
		t.Fatalf("EnsureKeyFile replaced an existing key: %v", err)
	}
	bad := filepath.Join(dir, "short.key")
	os.WriteFile(bad, []byte("# a comment\n\nabcd\n"), 0o600)
	if _, err := LoadKeys(bad); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("short key: %v", err)
	}
}

type fakeKeystone struct {
	calls atomic.Int32
	tok   map[string]Token
	down  bool
}

func (f *fakeKeystone) ValidateToken(ctx context.Context, token string) (Token, error) {
	f.calls.Add(1)
	if f.down {
		return Token{}, errors.New("connection refused")
	}
	t, ok := f.tok[token]
	if !ok {
		return Token{}, fmt.Errorf("%w: token not found", ErrUnauthenticated)
	}
	return t, nil
}

func TestKeystoneTokens(t *testing.T) {
	ks := &fakeKeystone{tok: map[string]Token{
		"svc":    {Roles: []string{"reader", "service"}, ExpiresAt: time.Now().Add(time.Hour)},
		"member": {Roles: []string{"member"}, ExpiresAt: time.Now().Add(time.Hour)},
	}}
	auth := &KeystoneTokens{Validator: ks}
	req := func(tok string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, ImagePath("v"), nil)
		if tok != "" {
			r.Header.Set("X-Auth-Token", tok)
		}
		return r
	}
	if err := auth.Authenticate(req("svc"), "v"); err != nil {
		t.Fatalf("service token: %v", err)
	}
	if err := auth.Authenticate(req("svc"), "v"); err != nil || ks.calls.Load() != 1 {
		t.Fatalf("second use: %v after %d validations, want 1 (cached)", err, ks.calls.Load())
	}
	if err := auth.Authenticate(req("member"), "v"); !errors.Is(err, ErrForbidden) {
		t.Errorf("token without a role: %v", err)
	}
	if err := auth.Authenticate(req("forged"), "v"); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("unknown token: %v", err)
	}
	if err := auth.Authenticate(req(""), "v"); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("no token: %v", err)
	}
	ks.down = true
	err := auth.Authenticate(req("other"), "v")
	if err == nil || errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrForbidden) || errors.Is(err, ErrNoCredentials) {
		t.Errorf("keystone down: %v, want an unavailability error", err)
	}
}

func TestServerStatuses(t *testing.T) {
	signer := SignedURLs{Keys: [][]byte{key(1)}}
	ks := &fakeKeystone{tok: map[string]Token{"member": {Roles: []string{"member"}}}}
	srv := &Server{Auth: AnyOf{signer, &KeystoneTokens{Validator: ks}}}
	h := srv.Handler()
	expired, _ := signer.Sign("v", time.Now().Add(-time.Minute))
	wrong, _ := SignedURLs{Keys: [][]byte{key(9)}}.Sign("v", time.Now().Add(time.Minute))
	for _, tc := range []struct {
		name, query, token string
		want               int
	}{
		{"anonymous", "", "", http.StatusUnauthorized},
		{"expired URL", expired, "", http.StatusForbidden},
		{"wrongly signed URL", wrong, "", http.StatusForbidden},
		{"invalid token", "", "forged", http.StatusUnauthorized},
		{"token without role", "", "member", http.StatusForbidden},
	} {
		r := httptest.NewRequest(http.MethodGet, ImagePath("v")+"?"+tc.query, nil)
		if tc.token != "" {
			r.Header.Set("X-Auth-Token", tc.token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, w.Code, strings.TrimSpace(w.Body.String()), tc.want)
		}
	}
	// Without an authenticator nothing is served.
	w := httptest.NewRecorder()
	(&Server{}).Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, ImagePath("v"), nil))
	if w.Code != http.StatusForbidden {
		t.Errorf("no authenticator: %d", w.Code)
	}
}

// TestProfilesOnlyWhenAsked: /debug/pprof/ answers only with Profiling on.
func TestProfilesOnlyWhenAsked(t *testing.T) {
	for _, on := range []bool{false, true} {
		w := httptest.NewRecorder()
		(&Server{Profiling: on}).Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/debug/pprof/heap?debug=1", nil))
		if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; w.Code != want {
			t.Errorf("profiling %v: %d, want %d", on, w.Code, want)
		}
	}
	if r := Route(httptest.NewRequest(http.MethodGet, "/debug/pprof/profile", nil)); r != "pprof" {
		t.Errorf("route of a profile: %q, want pprof", r)
	}
}
