package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/state"
)

// The worker's journal keeps the initiator name.
var _ HostStore = (*state.Journal)(nil)

func TestInitiatorNameIsKept(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	j, err := state.Open(path, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := InitiatorName(ctx, j, "Worker_1.example.org")
	if err != nil {
		t.Fatal(err)
	}
	if !validIQN(first) || !strings.HasPrefix(first, "iqn.2026-01.io.cinderport:worker1.example.org-") {
		t.Fatalf("generated %q", first)
	}
	again, err := InitiatorName(ctx, j, "another-name")
	if err != nil || again != first {
		t.Fatalf("second call: %q, %v; want %q", again, err, first)
	}
	j.Close()
	j, err = state.Open(path, state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if after, err := InitiatorName(ctx, j, "x"); err != nil || after != first {
		t.Fatalf("after reopening: %q, %v; want %q", after, err, first)
	}
	if err := j.SetMeta(ctx, InitiatorNameKey, "not an iqn"); err != nil {
		t.Fatal(err)
	}
	if _, err := InitiatorName(ctx, j, "x"); err == nil {
		t.Error("a corrupt stored name was accepted")
	}
}

func TestNewInitiatorName(t *testing.T) {
	a, b := NewInitiatorName(""), NewInitiatorName("")
	if a == b || !validIQN(a) || !strings.HasPrefix(a, "iqn.2026-01.io.cinderport:") {
		t.Fatalf("%q, %q", a, b)
	}
	long := NewInitiatorName(strings.Repeat("h", 500) + "!@#")
	if !validIQN(long) {
		t.Fatalf("%q", long)
	}
}

func TestValidIQN(t *testing.T) {
	for name, ok := range map[string]bool{
		"iqn.1993-08.org.debian:01:abcdef":   true,
		"eui.02004567A425678D":               true,
		"naa.52004567BA64678D":               true,
		"iqn.2026-01.io.cinderport:host one": false,
		"host":                               false,
		"":                                   false,
		"iqn." + strings.Repeat("a", 300):    false,
	} {
		if validIQN(name) != ok {
			t.Errorf("validIQN(%q) = %t", name, !ok)
		}
	}
}

func TestConnectorResolve(t *testing.T) {
	ctx := context.Background()
	c, err := Connector{InitiatorName: "iqn.2026-01.io.cinderport:x"}.resolve(ctx, "http://127.0.0.1:8776/v3/p", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.IP != "127.0.0.1" || c.Host == "" || c.OSType == "" || c.Platform == "" {
		t.Fatalf("%+v", c)
	}
	props := c.properties()
	for _, k := range []string{"initiator", "ip", "host", "multipath", "platform", "os_type"} {
		if _, ok := props[k]; !ok {
			t.Errorf("connector property %s missing", k)
		}
	}
	if _, err := (Connector{}).resolve(ctx, "http://127.0.0.1:8776", nil); err == nil {
		t.Error("no initiator name and no store was accepted")
	}
	if platform("amd64") != "x86_64" || platform("arm64") != "aarch64" {
		t.Error("platform names")
	}
}

func TestParseConnection(t *testing.T) {
	const secret = "chap-secret-123"
	flat := `{"driver_volume_type": "iscsi", "target_portal": "127.0.0.1:3260", "target_iqn": "iqn.x", "target_lun": 1,
		"auth_method": "CHAP", "auth_username": "u", "auth_password": "` + secret + `", "attachment_id": "a1"}`
	nested := `{"driver_volume_type": "iscsi", "data": {"target_portal": "127.0.0.1:3260", "auth_password": "` + secret + `"}}`
	for name, raw := range map[string]string{"flat": flat, "nested": nested} {
		c, err := parseConnection(json.RawMessage(raw))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.Driver != "iscsi" || c.Data["target_portal"] != "127.0.0.1:3260" || c.Data["auth_password"] != secret {
			t.Fatalf("%s: %+v", name, c.Data)
		}
		if _, ok := c.Data["driver_volume_type"]; ok {
			t.Errorf("%s: the driver is repeated in the data", name)
		}
	}
	for _, raw := range []string{``, `null`, `{}`, `[]`, `{"auth_password": "` + secret + `"}`} {
		_, err := parseConnection(json.RawMessage(raw))
		if err == nil {
			t.Errorf("%q accepted", raw)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}

func FuzzParseConnection(f *testing.F) {
	f.Add([]byte(`{"driver_volume_type": "iscsi", "target_portal": "1.2.3.4:3260", "auth_password": "s"}`))
	f.Add([]byte(`{"driver_volume_type": "rbd", "data": {"name": "pool/vol"}}`))
	f.Add([]byte(`{"driver_volume_type": 3}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := parseConnection(raw)
		if err != nil {
			if strings.Contains(err.Error(), string(raw)) && len(raw) > 8 {
				t.Fatalf("the error quotes the input: %v", err)
			}
			return
		}
		if c.Driver == "" || c.Data == nil {
			t.Fatalf("accepted without a driver or data: %+v", c)
		}
		if c.String() != "connection{"+c.Driver+"}" {
			t.Fatalf("String: %s", c)
		}
	})
}

// TestAttachNeedsMicroversion: below 3.54 an attachment is refused before
// any request, permanently; online extend follows 3.42.
func TestAttachNeedsMicroversion(t *testing.T) {
	ctx := context.Background()
	c := &Client{maxMajor: 3, maxMinor: 50, log: nopLogger()}
	_, err := c.Attach(ctx, "v1", jobs.ReadOnly)
	if !jobs.IsPermanent(err) || !strings.Contains(err.Error(), "3.54") || !strings.Contains(err.Error(), "v1") {
		t.Fatalf("%v", err)
	}
	if caps, _ := c.Capabilities(ctx); !caps.OnlineExtend {
		t.Error("3.50 extends online")
	}
	c.maxMinor = 41
	if caps, _ := c.Capabilities(ctx); caps.OnlineExtend {
		t.Error("3.41 does not extend online")
	}
	c.maxMinor = 70
	if _, err := c.Attach(ctx, "v1", "wo"); !jobs.IsPermanent(err) || errors.Is(err, jobs.ErrNotFound) {
		t.Errorf("invalid mode: %v", err)
	}
}
