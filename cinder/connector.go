package cinder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"runtime"
	"strings"

	"github.com/cinderport/cinderport/jobs"
)

// Connector describes this host to Cinder when it attaches a volume: the
// volume driver exports the volume to this initiator (os-brick's
// "connector properties"). Empty fields are filled by New: the host name,
// the local address that routes to Cinder, the platform, and the initiator
// name from a HostStore.
type Connector struct {
	// InitiatorName is this host's iSCSI qualified name (iqn.… or eui.…).
	// The userspace initiator must log in with the same name.
	InitiatorName string
	// IP is the address the storage network sees this host at.
	IP string
	// Host is this host's name.
	Host string
	// Multipath asks the driver for every path to the volume.
	Multipath bool
	// Platform and OSType are os-brick's (x86_64, aarch64, …; linux).
	Platform, OSType string
}

func (c Connector) validate() error {
	if c.InitiatorName != "" && !validIQN(c.InitiatorName) {
		return fmt.Errorf("initiator name %q is not an iqn., eui. or naa. name", c.InitiatorName)
	}
	if c.IP != "" && net.ParseIP(c.IP) == nil {
		return fmt.Errorf("connector IP %q is not an IP address", c.IP)
	}
	return nil
}

// validIQN checks the shape of an iSCSI name (RFC 3720 §3.2.6): a type
// prefix and characters from its restricted set.
func validIQN(s string) bool {
	if len(s) > 223 {
		return false
	}
	lower := strings.ToLower(s)
	if !strings.HasPrefix(lower, "iqn.") && !strings.HasPrefix(lower, "eui.") && !strings.HasPrefix(lower, "naa.") {
		return false
	}
	for _, r := range lower {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == ':') {
			return false
		}
	}
	return true
}

// properties is the connector as Cinder's attachment API takes it.
func (c Connector) properties() map[string]any {
	return map[string]any{
		"initiator":         c.InitiatorName,
		"ip":                c.IP,
		"host":              c.Host,
		"multipath":         c.Multipath,
		"enforce_multipath": false,
		"platform":          c.Platform,
		"os_type":           c.OSType,
		"do_local_attach":   false,
	}
}

// resolve fills the connector's empty fields for a Cinder at endpoint.
func (c Connector) resolve(ctx context.Context, endpoint string, store HostStore) (Connector, error) {
	if c.Host == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("connector host name: %w", err)
		}
		c.Host = h
	}
	if c.IP == "" {
		ip, err := routeTo(endpoint)
		if err != nil {
			return c, fmt.Errorf("connector IP (set it explicitly): %w", err)
		}
		c.IP = ip
	}
	if c.Platform == "" {
		c.Platform = platform(runtime.GOARCH)
	}
	if c.OSType == "" {
		c.OSType = runtime.GOOS
	}
	if c.InitiatorName == "" {
		if store == nil {
			return c, errors.New("no initiator name configured and no host store to keep a generated one")
		}
		name, err := InitiatorName(ctx, store, c.Host)
		if err != nil {
			return c, err
		}
		c.InitiatorName = name
	}
	return c, nil
}

// routeTo returns the local address this host uses to reach the endpoint's
// host (no packet is sent: a UDP socket is only connected).
func routeTo(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	conn, err := net.Dial("udp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// platform names GOARCH as os-brick (Python's platform.machine()) does.
func platform(goarch string) string {
	switch goarch {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	case "ppc64le", "s390x":
		return goarch
	case "386":
		return "i686"
	}
	return goarch
}

// HostStore keeps small values for this host across restarts. The worker's
// journal (state.Journal: Meta, SetMeta) satisfies it.
type HostStore interface {
	// Meta returns the value of key, or an error wrapping jobs.ErrNotFound.
	Meta(ctx context.Context, key string) (string, error)
	// SetMeta stores the value of key.
	SetMeta(ctx context.Context, key, value string) error
}

// InitiatorNameKey is the HostStore key of the generated initiator name.
const InitiatorNameKey = "cinder.initiator_name"

// InitiatorName returns this host's iSCSI initiator name from store, or
// generates one (NewInitiatorName) and stores it, so that the name stays the
// same across restarts.
func InitiatorName(ctx context.Context, store HostStore, host string) (string, error) {
	name, err := store.Meta(ctx, InitiatorNameKey)
	switch {
	case err == nil && validIQN(name):
		return name, nil
	case err == nil:
		return "", fmt.Errorf("stored initiator name %q is not an iSCSI name", name)
	case !errors.Is(err, jobs.ErrNotFound):
		return "", fmt.Errorf("read the initiator name: %w", err)
	}
	name = NewInitiatorName(host)
	if err := store.SetMeta(ctx, InitiatorNameKey, name); err != nil {
		return "", fmt.Errorf("keep the initiator name: %w", err)
	}
	return name, nil
}

// NewInitiatorName makes a unique iSCSI name for a host:
// iqn.2026-01.io.cinderport:<host>-<12 random hex digits>, the host part
// reduced to the characters an IQN allows.
func NewInitiatorName(host string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(host) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			b.WriteRune(r)
		}
		if b.Len() >= 64 {
			break
		}
	}
	var rnd [6]byte
	rand.Read(rnd[:])
	prefix := "iqn.2026-01.io.cinderport:"
	if b.Len() > 0 {
		prefix += b.String() + "-"
	}
	return prefix + hex.EncodeToString(rnd[:])
}
