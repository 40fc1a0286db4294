package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Authentication failures. A request that carries no credential an
// authenticator understands gets ErrNoCredentials (401); a credential that
// is wrong, expired or not enough gets ErrUnauthenticated (401) or
// ErrForbidden (403).
var (
	ErrNoCredentials   = errors.New("authentication required: a signed URL or an X-Auth-Token")
	ErrUnauthenticated = errors.New("invalid credentials")
	ErrForbidden       = errors.New("forbidden")
)

// Authenticator decides whether a request may read a volume's image.
type Authenticator interface {
	// Authenticate returns nil to allow the request, or an error wrapping
	// ErrNoCredentials, ErrUnauthenticated or ErrForbidden.
	Authenticate(r *http.Request, volumeID string) error
}

// AnyOf allows a request that any of its authenticators allows. When none
// does, a rejected credential wins over a missing one, so the client learns
// what was wrong with what it sent.
type AnyOf []Authenticator

// Authenticate implements Authenticator.
func (a AnyOf) Authenticate(r *http.Request, volumeID string) error {
	var rejected error
	for _, x := range a {
		err := x.Authenticate(r, volumeID)
		if err == nil {
			return nil
		}
		if rejected == nil && !errors.Is(err, ErrNoCredentials) {
			rejected = err
		}
	}
	if rejected != nil {
		return rejected
	}
	return ErrNoCredentials
}

// authStatus maps an authentication failure to its HTTP status.
func authStatus(err error) int {
	if errors.Is(err, ErrForbidden) {
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// Query parameters of a signed download URL.
const (
	ParamExpires   = "expires"
	ParamSignature = "signature"
)

// MinKeyBytes is the shortest download signing key accepted.
const MinKeyBytes = 32

// SignedURLs authenticates download URLs signed with a shared key: the
// query carries expires (Unix seconds) and signature, the hex HMAC-SHA256
// of "cinderport-download-v1\n<volume-id>\n<expires>". Several keys may be
// valid at once (rotation); the first one signs.
type SignedURLs struct {
	Keys [][]byte
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func sign(key []byte, volumeID string, expires int64) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "cinderport-download-v1\n%s\n%d", volumeID, expires)
	return hex.EncodeToString(m.Sum(nil))
}

// Sign returns the query string ("expires=…&signature=…") that lets its
// bearer download volumeID until expires.
func (s SignedURLs) Sign(volumeID string, expires time.Time) (string, error) {
	if len(s.Keys) == 0 {
		return "", errors.New("no download signing key")
	}
	e := expires.Unix()
	v := url.Values{ParamExpires: {strconv.FormatInt(e, 10)}, ParamSignature: {sign(s.Keys[0], volumeID, e)}}
	return v.Encode(), nil
}

// Authenticate implements Authenticator.
func (s SignedURLs) Authenticate(r *http.Request, volumeID string) error {
	q := r.URL.Query()
	sig, exp := q.Get(ParamSignature), q.Get(ParamExpires)
	if sig == "" && exp == "" {
		return ErrNoCredentials
	}
	e, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || len(sig) != 2*sha256.Size {
		return fmt.Errorf("%w: malformed signed URL", ErrForbidden)
	}
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("%w: malformed signed URL", ErrForbidden)
	}
	for _, k := range s.Keys {
		want, _ := hex.DecodeString(sign(k, volumeID, e))
		if hmac.Equal(got, want) {
			if now().Unix() > e {
				return fmt.Errorf("%w: the signed URL expired at %s", ErrForbidden, time.Unix(e, 0).UTC().Format(time.RFC3339))
			}
			return nil
		}
	}
	return fmt.Errorf("%w: bad signature", ErrForbidden)
}

// LoadKeys reads signing keys from a file: one key per line, hex-encoded,
// each at least MinKeyBytes long; the first line signs. Blank lines and
// lines starting with # are skipped.
func LoadKeys(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("download keys: %w", err)
	}
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		k, err := hex.DecodeString(string(line))
		if err != nil || len(k) < MinKeyBytes {
			return nil, fmt.Errorf("download keys: %s line %d: want at least %d bytes in hex", path, n, MinKeyBytes)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("download keys: %s holds no key", path)
	}
	return keys, nil
}

// EnsureKeyFile returns the keys in path, first creating the file (mode
// 0600) with one random key when it does not exist.
func EnsureKeyFile(path string) ([][]byte, error) {
	k := make([]byte, MinKeyBytes)
	rand.Read(k)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		_, werr := fmt.Fprintf(f, "%s\n", hex.EncodeToString(k))
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, fmt.Errorf("download keys: %w", werr)
		}
	case !errors.Is(err, os.ErrExist):
		return nil, fmt.Errorf("download keys: %w", err)
	}
	return LoadKeys(path)
}

// Token is what a token service says of a valid token.
type Token struct {
	ProjectID string
	Roles     []string
	ExpiresAt time.Time
}

// TokenValidator checks a Keystone token. It returns an error wrapping
// ErrUnauthenticated for a token that is invalid, expired or revoked; any
// other error means the token service could not answer.
type TokenValidator interface {
	ValidateToken(ctx context.Context, token string) (Token, error)
}

// KeystoneTokens authenticates requests by their X-Auth-Token: the token
// must be valid and hold one of Roles. Answers are cached for at most
// CacheFor, and never past the token's expiry.
type KeystoneTokens struct {
	Validator TokenValidator
	// Roles: a token needs at least one of them (default admin, service).
	Roles []string
	// CacheFor bounds how long a validation is reused (default 60 s).
	CacheFor time.Duration

	mu    sync.Mutex
	cache map[[32]byte]cachedToken
}

type cachedToken struct {
	tok   Token
	until time.Time
}

const maxCachedTokens = 4096

// Authenticate implements Authenticator.
func (k *KeystoneTokens) Authenticate(r *http.Request, volumeID string) error {
	raw := r.Header.Get("X-Auth-Token")
	if raw == "" {
		return ErrNoCredentials
	}
	tok, err := k.validate(r.Context(), raw)
	if err != nil {
		return err
	}
	roles := k.Roles
	if len(roles) == 0 {
		roles = []string{"admin", "service"}
	}
	for _, have := range tok.Roles {
		if slices.Contains(roles, have) {
			return nil
		}
	}
	return fmt.Errorf("%w: the token has none of the roles %v", ErrForbidden, roles)
}

func (k *KeystoneTokens) validate(ctx context.Context, raw string) (Token, error) {
	key := sha256.Sum256([]byte(raw))
	now := time.Now()
	k.mu.Lock()
	c, ok := k.cache[key]
	k.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.tok, nil
	}
	tok, err := k.Validator.ValidateToken(ctx, raw)
	if err != nil {
		if errors.Is(err, ErrUnauthenticated) {
			return Token{}, err
		}
		return Token{}, fmt.Errorf("validate token: %w", err)
	}
	ttl := k.CacheFor
	if ttl <= 0 {
		ttl = time.Minute
	}
	until := now.Add(ttl)
	if !tok.ExpiresAt.IsZero() && tok.ExpiresAt.Before(until) {
		until = tok.ExpiresAt
	}
	k.mu.Lock()
	if k.cache == nil || len(k.cache) >= maxCachedTokens {
		k.cache = make(map[[32]byte]cachedToken)
	}
	k.cache[key] = cachedToken{tok: tok, until: until}
	k.mu.Unlock()
	return tok, nil
}
