package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/tests/harness"
)

// hostile is the corpus: job messages a broken or malicious producer could
// send, each with what the dead letter's reason must say.
func hostile() []struct {
	name, reason string
	msg          []byte
} {
	up := func(fields string) []byte {
		return []byte(`{"version":1,"id":"h","kind":"upload","image_id":"img","source":{"bucket":"cinderport-staging","key":"k"}` + fields + `}`)
	}
	withKey := func(key string) []byte {
		k, _ := json.Marshal(key)
		return []byte(`{"version":1,"id":"h","kind":"upload","image_id":"img","source":{"bucket":"cinderport-staging","key":` + string(k) + `}}`)
	}
	return []struct {
		name, reason string
		msg          []byte
	}{
		{"empty message", "not a JSON object", []byte{}},
		{"truncated JSON", "not a JSON object", []byte(`{"version":1,"id":"trunc","kind":"upl`)},
		{"binary garbage", "not valid UTF-8", []byte{0xff, 0xfe, 0x00, 0x01, 0x80}},
		{"a JSON array", "not a JSON object", []byte(`[{"version":1}]`)},
		{"a JSON string", "not a JSON object", []byte(`"upload"`)},
		{"null", "no version field", []byte(`null`)},
		{"no version", "no version field", []byte(`{"id":"h","kind":"upload"}`)},
		{"unknown version", "unsupported job version 2", []byte(`{"version":2,"id":"h","kind":"upload"}`)},
		{"version as a string", `unsupported job version "1"`, []byte(`{"version":"1","id":"h","kind":"upload"}`)},
		{"unknown field", `unknown field "token"`, up(`,"token":"t"`)},
		{"size as a string", "cannot unmarshal string", up(`,"size":"12"`)},
		{"size with an exponent", "cannot unmarshal number 1e3", up(`,"size":1e3`)},
		{"size past int64", "cannot unmarshal number", up(`,"size":99999999999999999999`)},
		{"negative size", "size: must be between 0", up(`,"size":-1`)},
		{"absurd size", "size: must be between 0", up(`,"size":1125899906842624000`)},
		{"source of the wrong type", "cannot unmarshal string", []byte(`{"version":1,"id":"h","kind":"upload","image_id":"img","source":"bucket/key"}`)},
		{"missing id", "id: must be", []byte(`{"version":1,"kind":"delete","volume_id":"v"}`)},
		{"id with subject wildcards", "id: must be", []byte(`{"version":1,"id":"a.*.>","kind":"delete","volume_id":"v"}`)},
		{"id of 300 characters", "id: must be", []byte(`{"version":1,"id":"` + strings.Repeat("x", 300) + `","kind":"delete","volume_id":"v"}`)},
		{"missing kind", "kind: must be", []byte(`{"version":1,"id":"h"}`)},
		{"unknown kind", "kind: must be", []byte(`{"version":1,"id":"h","kind":"format-disk"}`)},
		{"upload without source", "source: required", []byte(`{"version":1,"id":"h","kind":"upload","image_id":"img"}`)},
		{"upload without image id", "image_id: required", []byte(`{"version":1,"id":"h","kind":"upload","source":{"bucket":"cinderport-staging","key":"k"}}`)},
		{"path traversal key", "path segment", withKey("../../etc/passwd")},
		{"absolute key", "leading slash", withKey("/etc/passwd")},
		{"key of 2000 bytes", "object key is 2000 bytes", withKey(strings.Repeat("k", 2000))},
		{"key with a NUL", "control characters", withKey("a\x00b")},
		{"invalid bucket", "not a valid bucket name", []byte(`{"version":1,"id":"h","kind":"upload","image_id":"img","source":{"bucket":"..","key":"k"}}`)},
		{"md5 that is not hex", "checksum: must be an md5", up(`,"checksum":"` + strings.Repeat("z", 32) + `"`)},
		{"unsupported hash", `os_hash_algo: unsupported "md5"`, up(`,"os_hash_algo":"md5"`)},
		{"trailing data", "after top-level value", append(up(""), []byte(` {"version":1}`)...)},
		{"deep nesting", "exceeded max depth", []byte(strings.Repeat("[", 60000))},
		{"a megabyte of padding", "limit 65536", up(`,"owner":"` + strings.Repeat("a", 1000<<10) + `"`)},
	}
}

// TestHostileJobs sends the corpus raw to a worker: every message ends on
// the dead-letter subject with its reason, no volume is made, the worker
// stays up, and the next good job completes.
func TestHostileJobs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := addRow(t, "hostile job messages (completed: dead-lettered with their reason)")
	good := addRow(t, "a good job right after the hostile corpus")
	w := harness.StartWorker(t, harness.WorkerOptions{BinDir: binDir, Args: []string{"--concurrency", "4"}})
	pid := w.Pid()
	nc, err := queue.Connect(ctx, w.Endpoints.NATSURL, queue.ConnectOptions{Name: "hostile"})
	if err != nil {
		fatalf(t, "%v", err)
	}
	defer nc.Close()
	q, err := queue.Open(ctx, nc, queue.Config{Existing: true})
	if err != nil {
		fatalf(t, "%v", err)
	}
	corpus := hostile()
	if len(corpus) < 20 {
		fatalf(t, "the corpus has %d messages, want at least 20", len(corpus))
	}
	for i, h := range corpus {
		if _, err := q.EnqueueRaw(ctx, "cinderport.jobs.upload.default", h.msg, fmt.Sprintf("hostile-%d", i)); err != nil {
			fatalf(t, "publish %s: %v", h.name, err)
		}
	}
	var dead []queue.DeadLetter
	for {
		if dead, err = q.DeadLetters(ctx); err != nil {
			fatalf(t, "%v", err)
		}
		if len(dead) >= len(corpus) || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.runs = len(corpus)
	for _, h := range corpus {
		var found *queue.DeadLetter
		for i := range dead {
			if bytes.Equal(dead[i].Data, h.msg) || len(h.msg) > 64<<10 && bytes.HasPrefix(h.msg, dead[i].Data) && len(dead[i].Data) > 0 {
				found = &dead[i]
				break
			}
		}
		switch {
		case found == nil:
			errorf(t, "%s: not dead-lettered", h.name)
		case !strings.Contains(found.Reason, h.reason):
			errorf(t, "%s: dead-lettered with reason %q, want one with %q", h.name, found.Reason, h.reason)
		default:
			r.completed++
		}
	}
	if len(dead) != len(corpus) {
		errorf(t, "%d dead letters for %d hostile messages", len(dead), len(corpus))
	}
	good.runs = 1
	out, stderr, code := w.Enqueue(ctx, "upload", "--file", writeFile(t, 1<<20), "--job-id", "after-hostile", "--wait", "--output", "json")
	if code != 0 {
		fatalf(t, "a good job after the corpus: %d %s", code, stderr)
	}
	if !strings.Contains(out, `"location"`) {
		errorf(t, "good job result: %s", out)
	} else {
		good.completed = 1
	}
	if w.Pid() != pid {
		errorf(t, "%v", "the worker restarted")
	}
	if n := strings.Count(w.Logs(), "panic"); n > 0 {
		errorf(t, "the worker log mentions panic %d times", n)
	}
	if v := volumeFiles(t, w.DataDir); len(v) != 1 {
		r.leaks = max(0, len(v)-1)
		errorf(t, "%d volumes after the corpus and one good job, want 1: %v", len(v), v)
	}
	t.Logf("%d hostile messages dead-lettered with their reasons; the next job completed", len(corpus))
}
