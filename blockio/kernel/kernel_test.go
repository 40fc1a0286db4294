package kernel

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio/iscsi"
	"github.com/cinderport/cinderport/jobs"
)

// host is the fake host of a test: testdata/iscsiadm first on PATH, its
// state directory, and the directory standing for /dev/disk/by-path.
type host struct {
	t      *testing.T
	state  string
	byPath string
	logs   *bytes.Buffer
}

func newHost(t *testing.T) *host {
	t.Helper()
	bin, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, state: t.TempDir(), byPath: t.TempDir(), logs: &bytes.Buffer{}}
	for _, d := range []string{"nodes", "sessions", "targets", "luns", "disks", "chap", "discovery-chap", "discoverydb", "down"} {
		if err := os.Mkdir(filepath.Join(h.state, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("FAKE_ISCSI_STATE", h.state)
	t.Setenv("FAKE_ISCSI_BYPATH", h.byPath)
	return h
}

func (h *host) write(rel, content string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.state, rel), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// target offers iqn on portal with the given LUNs, each a 1 MiB disk.
func (h *host) target(portal, iqn string, luns ...string) {
	h.t.Helper()
	f, err := os.OpenFile(filepath.Join(h.state, "targets", portal), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	f.WriteString(iqn + "\n")
	f.Close()
	h.write("luns/"+iqn, strings.Join(luns, "\n")+"\n")
	for _, l := range luns {
		if err := os.WriteFile(filepath.Join(h.state, "disks", iqn+"-"+l), make([]byte, 1<<20), 0o644); err != nil {
			h.t.Fatal(err)
		}
	}
}

func (h *host) calls() []string {
	b, _ := os.ReadFile(filepath.Join(h.state, "calls"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func (h *host) called(sub string) int {
	n := 0
	for _, c := range h.calls() {
		if strings.Contains(c, sub) {
			n++
		}
	}
	return n
}

func (h *host) connector() *Connector {
	h.t.Helper()
	c, err := NewConnector(Config{ByPathDir: h.byPath, DeviceTimeout: 2 * time.Second,
		Log: zerolog.New(h.logs).Level(zerolog.DebugLevel)})
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func (h *host) noSecrets(texts ...string) {
	h.t.Helper()
	for _, s := range append(texts, h.logs.String()) {
		for _, secret := range []string{"chap-secret-1", "wrong-secret-2", "disc-secret-3", "mutual-secret-4"} {
			if strings.Contains(s, secret) {
				h.t.Fatalf("a secret shows: %s", s)
			}
		}
	}
}

const iqnA = "iqn.2010-10.org.openstack:volume-a"

func conn(data map[string]any) jobs.Connection { return jobs.Connection{Driver: "iscsi", Data: data} }

func TestConnectCHAP(t *testing.T) {
	h := newHost(t)
	h.target("10.0.0.1:3260", iqnA, "1")
	h.write("chap/"+iqnA, "cinder chap-secret-1\n")
	c := h.connector()
	ctx := context.Background()
	info := map[string]any{"target_portal": "10.0.0.1:3260", "target_iqn": iqnA, "target_lun": float64(1),
		"auth_method": "CHAP", "auth_username": "cinder", "auth_password": "chap-secret-1",
		"target_auth_username": "tgt", "target_auth_password": "mutual-secret-4"}
	dev, err := c.Connect(ctx, conn(info), jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Size() != 1<<20 {
		t.Fatalf("size %d", dev.Size())
	}
	data := bytes.Repeat([]byte("cinderport"), 410)[:4096]
	if _, err := dev.WriteAt(data, 8192); err != nil {
		t.Fatal(err)
	}
	if err := dev.(jobs.Refresher).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	disk, _ := os.ReadFile(filepath.Join(h.state, "disks", iqnA+"-1"))
	if !bytes.Equal(disk[8192:8192+4096], data) {
		t.Fatal("the data did not reach the disk")
	}
	node := "-m node -T " + iqnA + " -p 10.0.0.1:3260"
	want := []string{
		node,
		node + " --interface default --op new",
		node + " --op update -n node.session.auth.authmethod -v CHAP",
		node + " --op update -n node.session.auth.username -v cinder",
		node + " --op update -n node.session.auth.password -v chap-secret-1",
		node + " --op update -n node.session.auth.username_in -v tgt",
		node + " --op update -n node.session.auth.password_in -v mutual-secret-4",
		node + " --login",
		node + " --rescan",
		node + " --logout",
		node + " --op delete",
	}
	if got := h.calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("iscsiadm calls:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if entries, _ := os.ReadDir(h.byPath); len(entries) != 0 {
		t.Errorf("links left after logout: %v", entries)
	}
	t.Log(h.logs.String())
	if !strings.Contains(h.logs.String(), "node.session.auth.password -v ***") {
		t.Errorf("the commands were not logged redacted: %s", h.logs.String())
	}
	h.noSecrets()
}

func TestWrongSecret(t *testing.T) {
	h := newHost(t)
	h.target("10.0.0.1:3260", iqnA, "1")
	h.write("chap/"+iqnA, "cinder chap-secret-1\n")
	_, err := h.connector().Connect(context.Background(), conn(map[string]any{"target_portal": "10.0.0.1:3260", "target_iqn": iqnA,
		"target_lun": "1", "auth_method": "CHAP", "auth_username": "cinder", "auth_password": "wrong-secret-2"}), jobs.ReadWrite)
	if !errors.Is(err, iscsi.ErrAuth) || !jobs.IsPermanent(err) || ExitCode(err) != exitLoginAuthFailed {
		t.Fatalf("%v: want a permanent ErrAuth from exit code 24", err)
	}
	h.noSecrets(err.Error())
	if h.called("--logout") != 0 {
		t.Error("logged out of a session that never existed")
	}
}

// TestPathsAndSharing: a portal that does not answer is skipped; two LUNs
// of one target share its session, which ends with the last device; a
// session that existed before us is left alone.
func TestPathsAndSharing(t *testing.T) {
	h := newHost(t)
	h.target("10.0.0.2:3260", iqnA, "1", "2")
	h.target("10.0.0.1:3260", iqnA, "1", "2")
	h.write("down/10.0.0.1:3260", "")
	c := h.connector()
	ctx := context.Background()
	info := func(lun int) map[string]any {
		return map[string]any{"target_portals": []any{"10.0.0.1:3260", "10.0.0.2:3260"}, "target_iqns": []any{iqnA, iqnA},
			"target_luns": []any{float64(lun), float64(lun)}}
	}
	one, err := c.Connect(ctx, conn(info(1)), jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	two, err := c.Connect(ctx, conn(info(2)), jobs.ReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if n := h.called("-p 10.0.0.2:3260 --login"); n != 1 {
		t.Fatalf("%d logins to the second portal, want 1 for both LUNs", n)
	}
	if _, err := two.WriteAt(make([]byte, 512), 0); err == nil {
		t.Error("a read-only device accepted a write")
	}
	one.Close()
	if h.called("--logout") != 0 {
		t.Fatal("logged out while the target still has a device")
	}
	two.Close()
	if h.called("-p 10.0.0.2:3260 --logout") != 1 {
		t.Fatal("no logout after the last device")
	}

	h.write("sessions/"+iqnA+"@10.0.0.2:3260", "")
	if err := os.Symlink(filepath.Join(h.state, "disks", iqnA+"-1"), filepath.Join(h.byPath, "ip-10.0.0.2:3260-iscsi-"+iqnA+"-lun-1")); err != nil {
		t.Fatal(err)
	}
	dev, err := c.Connect(ctx, conn(info(1)), jobs.ReadWrite)
	if err != nil {
		t.Fatalf("with a session already there: %v", err)
	}
	dev.Close()
	if h.called("-p 10.0.0.2:3260 --logout") != 1 {
		t.Fatal("logged out of a session we did not create")
	}
}

func TestDiscoveryCHAP(t *testing.T) {
	h := newHost(t)
	h.target("10.0.0.3:3260", iqnA, "0")
	h.write("discovery-chap/10.0.0.3:3260", "disc disc-secret-3\n")
	dev, err := h.connector().Connect(context.Background(), conn(map[string]any{"target_portal": "10.0.0.3",
		"discovery_auth_method": "CHAP", "discovery_auth_username": "disc", "discovery_auth_password": "disc-secret-3"}), jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	dev.Close()
	if h.called("-m discoverydb -t sendtargets -p 10.0.0.3:3260 --discover") != 1 || h.called("-p 10.0.0.3:3260 --login") != 1 {
		t.Fatalf("calls: %v", h.calls())
	}
	h.noSecrets()
}

func TestDeviceNeverAppears(t *testing.T) {
	h := newHost(t)
	h.target("10.0.0.1:3260", iqnA, "1")
	c, err := NewConnector(Config{ByPathDir: h.byPath, DeviceTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Connect(context.Background(), conn(map[string]any{"target_portal": "10.0.0.1:3260", "target_iqn": iqnA, "target_lun": 5}), jobs.ReadWrite)
	if err == nil || !strings.Contains(err.Error(), "did not appear") {
		t.Fatalf("err = %v", err)
	}
	if h.called("--logout") != 1 {
		t.Fatal("the session was not ended after the failure")
	}
}

func TestErrorsClassified(t *testing.T) {
	for _, c := range []struct {
		fail      string
		code      string
		permanent bool
	}{
		{"fail-new", "6", false},
		{"fail-login", "19", true},
		{"fail-login", "8", false},
		{"fail-login", "13", true},
		{"fail-update", "7", true},
		{"fail-login", "29", false},
	} {
		t.Run(c.fail+"="+c.code, func(t *testing.T) {
			h := newHost(t)
			h.target("10.0.0.1:3260", iqnA, "1")
			h.write(c.fail, c.code)
			_, err := h.connector().Connect(context.Background(), conn(map[string]any{"target_portal": "10.0.0.1:3260", "target_iqn": iqnA, "target_lun": 1}), jobs.ReadWrite)
			if err == nil || jobs.IsPermanent(err) != c.permanent {
				t.Fatalf("err = %v, permanent %v", err, jobs.IsPermanent(err))
			}
		})
	}
	t.Setenv("PATH", t.TempDir())
	c, _ := NewConnector(Config{})
	_, err := c.Connect(context.Background(), conn(map[string]any{"target_portal": "10.0.0.1:3260", "target_iqn": iqnA}), jobs.ReadWrite)
	if !errors.Is(err, exec.ErrNotFound) || !jobs.IsPermanent(err) {
		t.Fatalf("without iscsiadm: %v", err)
	}
	if _, err := c.Connect(context.Background(), jobs.Connection{Driver: "rbd"}, jobs.ReadWrite); !jobs.IsPermanent(err) {
		t.Fatalf("an rbd volume: %v", err)
	}
}

func TestExecRunnerRedacts(t *testing.T) {
	var logs bytes.Buffer
	r := ExecRunner{Log: zerolog.New(&logs).Level(zerolog.DebugLevel)}
	out, err := r.Run(context.Background(), Command{Name: "sh", Args: []string{"-c", `echo out; echo "bad $0" >&2; exit 3`, "s3cret"}, Sensitive: []string{"s3cret"}})
	if ExitCode(err) != 3 || string(out) != "out\n" {
		t.Fatalf("out %q, err %v", out, err)
	}
	if strings.Contains(err.Error(), "s3cret") || strings.Contains(logs.String(), "s3cret") {
		t.Fatalf("the secret shows: %v / %s", err, logs.String())
	}
	if !strings.Contains(err.Error(), "bad ***") {
		t.Fatalf("stderr missing from %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := r.Run(ctx, Command{Name: "sleep", Args: []string{"5"}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a command past its deadline: %v", err)
	}
}

func TestByPathName(t *testing.T) {
	for _, c := range []struct {
		portal string
		lun    int
		want   string
	}{
		{"10.0.0.1:3260", 1, "ip-10.0.0.1:3260-iscsi-" + iqnA + "-lun-1"},
		{"[fd00::1]:3260", 0, "ip-fd00::1:3260-iscsi-" + iqnA + "-lun-0"},
		{"10.0.0.1:3260", 300, "ip-10.0.0.1:3260-iscsi-" + iqnA + "-lun-0x012c000000000000"},
	} {
		if got := byPathName(c.portal, iqnA, c.lun); got != c.want {
			t.Errorf("byPathName(%s, %d) = %s, want %s", c.portal, c.lun, got, c.want)
		}
	}
}

func TestInitiatorName(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct{ content, want string }{
		{"## DO NOT EDIT OR REMOVE THIS FILE!\nInitiatorName=iqn.1993-08.org.debian:01:abc\n", "iqn.1993-08.org.debian:01:abc"},
		{"# nothing here\n\n", ""},
	} {
		p := filepath.Join(dir, "initiatorname.iscsi")
		if err := os.WriteFile(p, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := InitiatorName(p)
		if got != c.want || (err != nil) != (c.want == "") {
			t.Errorf("InitiatorName(%q) = %q, %v", c.content, got, err)
		}
	}
	if _, err := InitiatorName(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
