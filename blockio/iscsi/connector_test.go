package iscsi

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

func TestParseConnection(t *testing.T) {
	chap := map[string]any{"auth_method": "CHAP", "auth_username": "u", "auth_password": "p4ss"}
	with := func(base map[string]any, kv ...any) map[string]any {
		m := map[string]any{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	single := map[string]any{"target_portal": "10.0.0.1:3260", "target_iqn": "iqn.a", "target_lun": float64(1)}
	for _, c := range []struct {
		name string
		data map[string]any
		want ConnectionInfo
		err  string
	}{
		{"single path, JSON number", single,
			ConnectionInfo{Paths: []Path{{"10.0.0.1:3260", "iqn.a", 1}}, LUN: 1}, ""},
		{"LUN as a string, CHAP", with(chap, "target_portal", "10.0.0.1", "target_iqn", "iqn.a", "target_lun", "3"),
			ConnectionInfo{Paths: []Path{{"10.0.0.1", "iqn.a", 3}}, LUN: 3, Auth: Auth{User: "u", Secret: "p4ss"}, DiscoveryAuth: Auth{User: "u", Secret: "p4ss"}}, ""},
		{"no LUN given means 0", map[string]any{"target_portal": "h:1", "target_iqn": "iqn.a"},
			ConnectionInfo{Paths: []Path{{"h:1", "iqn.a", 0}}}, ""},
		{"multipath lists, single target_portal first", with(single,
			"target_portals", []any{"10.0.0.2:3260", "10.0.0.1:3260"}, "target_iqns", []any{"iqn.b", "iqn.a"}, "target_luns", []any{float64(2), float64(1)}),
			ConnectionInfo{Paths: []Path{{"10.0.0.1:3260", "iqn.a", 1}, {"10.0.0.2:3260", "iqn.b", 2}}, LUN: 1}, ""},
		{"portals without IQNs are alternatives for target_iqn", with(single, "target_portals", []any{"10.0.0.1:3260", "10.0.0.3:3260"}),
			ConnectionInfo{Paths: []Path{{"10.0.0.1:3260", "iqn.a", 1}, {"10.0.0.3:3260", "iqn.a", 1}}, LUN: 1}, ""},
		{"no IQN: discovery with its own credentials", map[string]any{"target_portal": "10.0.0.1", "target_lun": json.Number("4"),
			"discovery_auth_method": "CHAP", "discovery_auth_username": "d", "discovery_auth_password": "dp"},
			ConnectionInfo{DiscoveryPortals: []string{"10.0.0.1"}, LUN: 4, DiscoveryAuth: Auth{User: "d", Secret: "dp"}}, ""},
		{"mutual CHAP", with(with(chap, "target_auth_username", "tu", "target_auth_password", "tp"), "target_portal", "h", "target_iqn", "iqn.a"),
			ConnectionInfo{Paths: []Path{{"h", "iqn.a", 0}}, Auth: Auth{User: "u", Secret: "p4ss", TargetUser: "tu", TargetSecret: "tp"},
				DiscoveryAuth: Auth{User: "u", Secret: "p4ss", TargetUser: "tu", TargetSecret: "tp"}}, ""},
		{"auth_method None", with(single, "auth_method", "None", "auth_password", "unused"),
			ConnectionInfo{Paths: []Path{{"10.0.0.1:3260", "iqn.a", 1}}, LUN: 1}, ""},
		{"no portal", map[string]any{"target_iqn": "iqn.a"}, ConnectionInfo{}, "neither target_portal"},
		{"fractional LUN", with(single, "target_lun", 1.5), ConnectionInfo{}, "not an integer"},
		{"LUN out of range", with(single, "target_lun", float64(20000)), ConnectionInfo{}, "out of range"},
		{"LUN of another type", with(single, "target_lun", true), ConnectionInfo{}, "not a number"},
		{"lists of different lengths", with(single, "target_portals", []any{"a", "b"}, "target_iqns", []any{"x"}), ConnectionInfo{}, "differ in length"},
		{"portal not a string", with(single, "target_portal", float64(3260)), ConnectionInfo{}, "not a string"},
		{"CHAP without password", with(single, "auth_method", "CHAP", "auth_username", "u"), ConnectionInfo{}, "auth_password is missing"},
		{"unknown auth method", with(single, "auth_method", "Kerberos"), ConnectionInfo{}, "not supported"},
		{"bad portal", with(single, "target_portal", "[::1"), ConnectionInfo{}, "portal"},
		{"mutual half given", with(with(chap, "target_auth_username", "tu"), "target_portal", "h", "target_iqn", "iqn.a"), ConnectionInfo{}, "come together"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseConnection(c.data)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want one mentioning %q", err, c.err)
				}
				for _, secret := range []string{"p4ss", "unused"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("the error shows a secret: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// TestConnector attaches tgtd LUNs from Cinder-shaped connection info, as
// JSON decodes it, through blockio.Router.
func TestConnector(t *testing.T) {
	d := harness.StartTgtd(t)
	ctx := context.Background()
	conn, err := NewConnector(Config{InitiatorName: initiator, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	router := blockio.Router{"iscsi": conn}
	tg := d.AddTarget(t, 16<<20, harness.TargetOptions{User: "cinder-user", Secret: "cinder-secret-42"})
	dead := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))
	decode := func(s string) map[string]any {
		var m map[string]any
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	info := `{"target_portal": "` + dead + `", "target_iqn": "` + tg.IQN + `", "target_lun": 1,
		"target_portals": ["` + dead + `", "` + tg.Portal + `"], "target_iqns": ["` + tg.IQN + `", "` + tg.IQN + `"], "target_luns": [1, 1],
		"auth_method": "CHAP", "auth_username": "cinder-user", "auth_password": "cinder-secret-42", "volume_id": "v1"}`
	dev, err := router.Connect(ctx, jobs.Connection{Driver: "iscsi", Data: decode(info)}, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Size() != 16<<20 {
		t.Fatalf("size %d", dev.Size())
	}
	if _, err := dev.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := dev.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	dev.Close()

	wrong := strings.ReplaceAll(info, "cinder-secret-42", "not-the-secret-7")
	_, err = router.Connect(ctx, jobs.Connection{Driver: "iscsi", Data: decode(wrong)}, jobs.ReadWrite)
	if !errors.Is(err, ErrAuth) || !jobs.IsPermanent(err) || strings.Contains(err.Error(), "not-the-secret-7") {
		t.Fatalf("wrong secret: %v", err)
	}

	// Without an IQN the portal is asked which target it has.
	open := harness.StartTgtd(t)
	only := open.AddTarget(t, 8<<20, harness.TargetOptions{})
	dev, err = conn.Connect(ctx, jobs.Connection{Driver: "iscsi", Data: decode(`{"target_portal": "` + open.Portal + `", "target_lun": "1"}`)}, jobs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if p := dev.(*Device).Session().Path(); p.Target != only.IQN {
		t.Errorf("discovered %v", p)
	}
	if _, err := dev.WriteAt(make([]byte, 512), 0); !jobs.IsPermanent(err) {
		t.Errorf("write to a read-only attachment: %v", err)
	}
	dev.Close()

	for _, bad := range []jobs.Connection{
		{Driver: "rbd", Data: decode(info)},
		{Driver: "iscsi", Data: decode(`{"target_iqn": "iqn.x"}`)},
	} {
		if _, err := conn.Connect(ctx, bad, jobs.ReadWrite); !jobs.IsPermanent(err) {
			t.Errorf("%v: %v, want a permanent error", bad, err)
		}
	}
	if _, err := NewConnector(Config{}); !jobs.IsPermanent(err) {
		t.Errorf("a connector without an initiator name: %v", err)
	}
}
