package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs/httpapi"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/tests/harness"
)

// get fetches url and returns the status and body.
func get(t *testing.T, url string, hdr ...string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, b, resp.Header
}

func uploadSmall(ctx context.Context, t *testing.T, w *worker, id string, size int64) (image, result) {
	t.Helper()
	img := makeImage(t, size, uint64(len(id)))
	stdout, stderr, code := w.enqueue(ctx, "upload", "--file", img.path, "--job-id", id, "--image-id", "img-"+id, "--wait", "--output", "json")
	if code != 0 {
		t.Fatalf("upload %s exited %d: %s", id, code, stderr)
	}
	return img, parseResult(t, stdout)
}

func TestDownloadsNeedAuthentication(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorker(t, "")
	img, r := uploadSmall(ctx, t, w, "auth-1", 3<<20+7)
	plain := w.Endpoints.HTTPURL + httpapi.ImagePath(r.VolumeID)

	if code, body, hdr := get(t, plain); code != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") == "" {
		t.Errorf("anonymous download: %d %s", code, body)
	}
	if code, body, _ := get(t, plain, "X-Auth-Token", "not-a-token"); code != http.StatusUnauthorized {
		t.Errorf("download with a token on a worker without Keystone auth: %d %s", code, body)
	}
	forged, _ := httpapi.SignedURLs{Keys: [][]byte{bytes.Repeat([]byte{7}, 32)}}.Sign(r.VolumeID, time.Now().Add(time.Hour))
	if code, body, _ := get(t, plain+"?"+forged); code != http.StatusForbidden {
		t.Errorf("wrongly signed download: %d %s", code, body)
	}
	keys, err := httpapi.LoadKeys(filepath.Join(w.DataDir, "download.key"))
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := httpapi.SignedURLs{Keys: keys}.Sign(r.VolumeID, time.Now().Add(-time.Second))
	if code, body, _ := get(t, plain+"?"+expired); code != http.StatusForbidden || !strings.Contains(string(body), "expired") {
		t.Errorf("expired URL: %d %s", code, body)
	}

	// A URL from `enqueue sign-url` works, whole and by range.
	stdout, stderr, code := w.enqueue(ctx, "sign-url", r.VolumeID, "--url-ttl", "5m")
	if code != 0 {
		t.Fatalf("sign-url: %d %s", code, stderr)
	}
	signed := strings.TrimSpace(stdout)
	code, body, hdr := get(t, signed)
	if code != http.StatusOK {
		t.Fatalf("signed download: %d %s", code, body)
	}
	sum := md5.Sum(body)
	if hex.EncodeToString(sum[:]) != img.md5 || hdr.Get(httpapi.HeaderChecksum) != img.md5 {
		t.Errorf("signed download: md5 %x, header %s, want %s", sum, hdr.Get(httpapi.HeaderChecksum), img.md5)
	}
	code, part, hdr := get(t, signed, "Range", "bytes=1000-1999")
	src, _ := os.ReadFile(img.path)
	if code != http.StatusPartialContent || !bytes.Equal(part, src[1000:2000]) || hdr.Get("Content-Range") != "bytes 1000-1999/3145735" {
		t.Errorf("signed range: %d, %d bytes, Content-Range %q", code, len(part), hdr.Get("Content-Range"))
	}
	// The signature is bound to its volume.
	if code, _, _ := get(t, w.Endpoints.HTTPURL+httpapi.ImagePath("another-volume")+signed[strings.Index(signed, "?"):]); code != http.StatusForbidden {
		t.Errorf("a signature used for another volume: %d", code)
	}
}

func TestMetricsAfterJobs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorker(t, "")
	_, r := uploadSmall(ctx, t, w, "metrics-1", 2<<20)
	if _, stderr, code := w.enqueue(ctx, "download", r.VolumeID, "-o", filepath.Join(t.TempDir(), "x")); code != 0 {
		t.Fatalf("download: %s", stderr)
	}
	if _, _, code := w.enqueue(ctx, "upload", "--object", "cinderport-staging/no/such", "--job-id", "metrics-bad", "--wait"); code != 1 {
		t.Fatalf("a job on a missing object exited %d", code)
	}
	code, body, _ := get(t, w.Endpoints.HTTPURL+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	text := string(body)
	for _, series := range []string{
		`cinderport_jobs_total{kind="upload",outcome="completed"} 1`,
		`cinderport_jobs_total{kind="upload",outcome="failed"} 1`,
		`cinderport_dead_letters_total{kind="upload"} 1`,
		`cinderport_job_bytes_total{kind="upload"} 2.097152e+06`,
		`cinderport_jobs_in_flight{kind="upload"} 0`,
		`cinderport_job_duration_seconds_count{kind="upload",settled="ack"} 1`,
		`cinderport_job_duration_seconds_count{kind="upload",settled="dead_letter"} 1`,
		`cinderport_volume_api_duration_seconds_count{op="create",outcome="ok"} 1`,
		`cinderport_device_connects_total{driver="local",outcome="ok"}`,
		`cinderport_http_requests_total{code="200",route="image"} 1`,
		`cinderport_download_bytes_total 2.097152e+06`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(text, series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grepLines(text, "cinderport_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestReadyzFollowsNATS(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{Dir: t.TempDir(), Host: "127.0.0.1", Port: -1, Name: "readyz"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	w := startWorker(t, "", "--nats-url", srv.ClientURL())
	waitStatus := func(want int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, body, _ := get(t, w.Endpoints.HTTPURL+"/readyz")
			if code == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz stayed %d (%s), want %d", code, bytes.TrimSpace(body), want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitStatus(http.StatusOK)
	srv.Shutdown()
	waitStatus(http.StatusServiceUnavailable)
	if code, _, _ := get(t, w.Endpoints.HTTPURL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d while NATS is down: the process is alive", code)
	}
}

// TestSecretsNeverLeak runs jobs with debug logging and searches everything
// the worker and the CLI print or publish for the secrets they hold.
func TestSecretsNeverLeak(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w := startWorker(t, "") // debug logging (startWorker's default)
	_, r := uploadSmall(ctx, t, w, "secrets-1", 1<<20)
	var outputs []string
	run := func(args ...string) {
		o, e, _ := w.enqueue(ctx, args...)
		outputs = append(outputs, o, e)
	}
	run("download", r.VolumeID, "-o", filepath.Join(t.TempDir(), "x"))
	run("upload", "--object", "cinderport-staging/no/such", "--job-id", "secrets-bad", "--wait")
	run("status", "secrets-1", "--output", "json")
	run("status", "secrets-bad", "--output", "json")
	run("dead", "list")
	_, body, _ := get(t, w.Endpoints.HTTPURL+"/metrics")
	outputs = append(outputs, string(body))

	// Every event ever published, and the dead letters, as stored in NATS.
	nc, err := queue.Connect(ctx, w.Endpoints.NATSURL, queue.ConnectOptions{Name: "e2e-secrets"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	for name := range js.StreamNames() {
		info, err := js.StreamInfo(name)
		if err != nil {
			t.Fatal(err)
		}
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
			if m, err := js.GetMsg(name, seq); err == nil {
				outputs = append(outputs, string(m.Data), headerText(m.Header))
			}
		}
	}
	w.Stop()
	outputs = append(outputs, w.Logs())

	key, err := os.ReadFile(filepath.Join(w.DataDir, "download.key"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"S3 secret key": w.Endpoints.S3SecretKey, "download signing key": strings.TrimSpace(string(key))}
	all := strings.Join(outputs, "\n")
	if len(all) < 10_000 || !strings.Contains(all, `"level":"debug"`) {
		t.Fatalf("only %d bytes of output, or no debug logs: the search would prove nothing", len(all))
	}
	for what, s := range secrets {
		if len(s) < 16 {
			t.Fatalf("%s is too short to search for: %q", what, s)
		}
		if i := strings.Index(all, s); i >= 0 {
			t.Errorf("the %s appears in the output: …%s…", what, all[max(0, i-80):min(len(all), i+80)])
		}
	}
	t.Logf("searched %d bytes of logs, CLI output, events, dead letters and metrics for %d secrets", len(all), len(secrets))
}

func headerText(h map[string][]string) string {
	var b strings.Builder
	for k, vs := range h {
		b.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
	}
	return b.String()
}

// TestTLS runs the worker and the CLI against a NATS server that requires
// TLS with client certificates, with the worker's HTTP API on TLS.
func TestTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := harness.NewCA(t)
	_, _, serverPair := ca.Issue(t, "nats")
	clientCert, clientKey, _ := ca.Issue(t, "client")
	httpCert, httpKey, _ := ca.Issue(t, "worker-http")
	srv, err := natsembed.Start(natsembed.Options{Dir: t.TempDir(), Port: -1, Name: "tls",
		TLS: &tls.Config{Certificates: []tls.Certificate{serverPair}, ClientCAs: ca.Pool, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()

	// Without TLS, or without a client certificate, NATS refuses.
	if nc, err := queue.Connect(ctx, srv.ClientURL(), queue.ConnectOptions{Name: "plain"}); err == nil {
		nc.Close()
		t.Fatal("a plaintext NATS connection was accepted")
	}
	if nc, err := queue.Connect(ctx, srv.ClientURL(), queue.ConnectOptions{Name: "no-cert", RootCAs: ca.File}); err == nil {
		nc.Close()
		t.Fatal("a NATS connection without a client certificate was accepted")
	}

	natsTLS := []string{"--nats-url", srv.ClientURL(), "--nats-tls-ca", ca.File, "--nats-tls-cert", clientCert, "--nats-tls-key", clientKey}
	w := startWorker(t, "", append(natsTLS, "--http-tls-cert", httpCert, "--http-tls-key", httpKey)...)
	if !strings.HasPrefix(w.Endpoints.HTTPURL, "https://") {
		t.Fatalf("HTTP API at %s, want https", w.Endpoints.HTTPURL)
	}
	img := makeImage(t, 1<<20+3, 11)
	stdout, stderr, code := w.enqueue(ctx, append([]string{"upload", "--file", img.path, "--job-id", "tls-1", "--wait", "--output", "json"}, natsTLS...)...)
	if code != 0 {
		t.Fatalf("upload over TLS: %d %s", code, stderr)
	}
	r := parseResult(t, stdout)
	out := filepath.Join(t.TempDir(), "back")
	if _, stderr, code := w.enqueue(ctx, append([]string{"download", r.VolumeID, "-o", out, "--worker-tls-ca", ca.File}, natsTLS...)...); code != 0 {
		t.Fatalf("download over TLS: %d %s", code, stderr)
	}
	if got := fileMD5(t, out); got != img.md5 {
		t.Errorf("downloaded md5 %s, want %s", got, img.md5)
	}
	// The API does not answer plaintext HTTP.
	if resp, err := http.Get("http://" + strings.TrimPrefix(w.Endpoints.HTTPURL, "https://") + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the TLS API answered plaintext HTTP with 200")
		}
	}
}
