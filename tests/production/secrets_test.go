package production

import (
	"bufio"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cinderport/cinderport/jobs/queue"
)

// TestSecretsNeverLeak runs jobs on the production path with debug logs —
// an upload staged by the CLI, a download (signed URL), a job that fails
// and is dead-lettered, status and dead-letter queries, a delete job — and
// searches everything they produced for the secrets involved: the Keystone
// password of the worker's glance-api.conf, the CHAP password Cinder gave
// the attachment, the MinIO secret key and the download signing key. The
// outputs searched: the worker's logs, the CLI's stdout and stderr, every
// event published, every message in every NATS stream (statuses, dead
// letters, leases), and /metrics.
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := newStack(t)
	// Every event as published (the status bucket keeps only the latest).
	nc, err := queue.Connect(ctx, s.nats.ClientURL(), queue.ConnectOptions{Name: "production-secrets"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	events := make(chan *nats.Msg, 10_000)
	sub, err := nc.ChanSubscribe("cinderport.events.>", events)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	w := s.worker("secrets", "--log-level", "debug")
	var outputs []string
	run := func(args ...string) int {
		o, e, code := s.enqueue(ctx, w, args...)
		outputs = append(outputs, o, e)
		return code
	}

	src := filepath.Join(t.TempDir(), "image")
	b := make([]byte, 5*miB+11)
	rand.NewChaCha8([32]byte{9}).Read(b)
	if err := os.WriteFile(src, b, 0o600); err != nil {
		t.Fatal(err)
	}
	jobID, imageID := ids(t, "")
	out, stderr, code := s.enqueue(ctx, w, "upload", "--file", src, "--job-id", jobID, "--image-id", imageID, "--wait", "--output", "json")
	outputs = append(outputs, out, stderr)
	if code != 0 {
		t.Fatalf("upload: exit %d: %s", code, stderr)
	}
	volumeID := resultOf(t, out).VolumeID

	if code := run("download", volumeID, "-o", filepath.Join(t.TempDir(), "back"),
		"--download-key-file", filepath.Join(w.DataDir, "download.key")); code != 0 {
		t.Fatalf("download failed: %s", outputs[len(outputs)-1])
	}
	// The download's attachment lingers a few seconds: read the CHAP
	// credentials Cinder gave it.
	var chap []string
	for _, c := range s.lab.Connections(t, volumeID) {
		if c.AuthPassword != "" {
			chap = append(chap, c.AuthPassword)
		}
	}
	if len(chap) == 0 {
		t.Fatal("Cinder shows no CHAP password for the download's attachment: nothing to search for")
	}
	badJob, _ := ids(t, "missing")
	run("upload", "--object", bucket+"/no/such/object", "--job-id", badJob, "--wait")
	run("status", jobID, "--output", "json")
	run("status", badJob, "--output", "json")
	run("watch", jobID)
	run("dead", "list")
	run("dead", "list", "--output", "json")
	if code := run("delete", volumeID, "--wait"); code != 0 {
		t.Errorf("delete job: %s", outputs[len(outputs)-1])
	}
	s.waitGone(volumeID)
	s.noExports(volumeID)
	_, body := httpGet(t, w.HTTPURL+"/metrics", nil)
	outputs = append(outputs, string(body))

	// Every message in every stream: jobs, statuses, leases, dead letters,
	// advisories.
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	msgs := 0
	for name := range js.StreamNames() {
		info, err := js.StreamInfo(name)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
			if m, err := js.GetMsg(name, seq); err == nil {
				msgs++
				outputs = append(outputs, string(m.Data))
				for k, vs := range m.Header {
					outputs = append(outputs, k+": "+strings.Join(vs, ","))
				}
			}
		}
	}
	sub.Unsubscribe()
	close(events)
	for m := range events {
		msgs++
		outputs = append(outputs, string(m.Data))
	}
	w.Stop()
	outputs = append(outputs, w.Logs())

	key, err := os.ReadFile(filepath.Join(w.DataDir, "download.key"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"Keystone password (glance-api.conf)": glanceConfPassword(t, s.lab.GlanceConfFile),
		"MinIO secret key":                    s.minio.SecretKey,
		"download signing key":                strings.TrimSpace(string(key)),
	}
	for i, p := range chap {
		secrets["CHAP password "+string(rune('A'+i))] = p
	}
	all := strings.Join(outputs, "\n")
	if len(all) < 20_000 || !strings.Contains(all, `"level":"debug"`) || !strings.Contains(all, "attachment created") || msgs == 0 {
		t.Fatalf("%d bytes of output and %d stream messages, or no debug logs of attachments: the search would prove nothing", len(all), msgs)
	}
	for what, secret := range secrets {
		if len(secret) < 12 {
			t.Fatalf("the %s is too short to search for (%d characters)", what, len(secret))
		}
		if i := strings.Index(all, secret); i >= 0 {
			t.Errorf("the %s appears in the output: …%s…", what, all[max(0, i-80):i])
		}
	}
	t.Logf("searched %d bytes (worker logs, CLI output, %d stream messages, /metrics) for %d secrets", len(all), msgs, len(secrets))
}

// glanceConfPassword reads cinder_store_password from a glance-api.conf.
func glanceConfPassword(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok && strings.TrimSpace(k) == "cinder_store_password" {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no cinder_store_password in %s", path)
	return ""
}
