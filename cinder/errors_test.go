package cinder

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

func answer(status int, body string, header ...string) gophercloud.ErrUnexpectedResponseCode {
	h := http.Header{"X-Openstack-Request-Id": {"req-1234"}}
	for i := 0; i+1 < len(header); i += 2 {
		h.Set(header[i], header[i+1])
	}
	return gophercloud.ErrUnexpectedResponseCode{Method: "POST", URL: "http://cinder/v3/p/volumes",
		Actual: status, Body: []byte(body), ResponseHeader: h}
}

func TestClassify(t *testing.T) {
	dial := &url.Error{Op: "Post", URL: "http://cinder/v3/p/volumes", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	for _, tc := range []struct {
		name      string
		err       error
		notFound  bool
		permanent bool
		delay     time.Duration
		message   string
	}{
		{"404", answer(404, `{"itemNotFound": {"message": "Volume v1 could not be found.", "code": 404}}`), true, false, 0, "HTTP 404: Volume v1 could not be found. (request req-1234)"},
		{"404 pointer", &gophercloud.ErrErrorAfterReauthentication{ErrOriginal: answer(404, "")}, true, false, 0, "HTTP 404"},
		{"400", answer(400, `{"badRequest": {"message": "Invalid input received: size", "code": 400}}`), false, true, 0, "Invalid input received"},
		{"413 quota", answer(413, `{"overLimit": {"message": "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota.", "code": 413, "retryAfter": "0"}}`, "Retry-After", "0"), false, true, 0, "exceeds allowed gigabytes quota"},
		{"413 rate limit", answer(413, `{"overLimit": {"message": "slow down"}}`, "Retry-After", "5"), false, false, 5 * time.Second, "slow down"},
		{"429", answer(429, ``), false, false, time.Second, "HTTP 429"},
		{"403", answer(403, `{"forbidden": {"message": "Policy doesn't allow volume:create"}}`), false, true, 0, "Policy"},
		{"409", answer(409, ``), false, false, time.Second, "HTTP 409"},
		{"500", answer(500, `<html><body>Internal error</body></html>`), false, false, 0, "HTTP 500 (request req-1234)"},
		{"503 retry-after", answer(503, `service unavailable`, "Retry-After", "7"), false, false, 7 * time.Second, "service unavailable"},
		{"connection refused", dial, false, false, 0, "connection refused"},
		{"refused credentials", gophercloud.ErrUnableToReauthenticate{ErrOriginal: answer(401, ""),
			ErrReauth: answer(401, `{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}`)},
			false, true, 0, "Keystone refused the credentials"},
		{"keystone unreachable on re-authentication", gophercloud.ErrUnableToReauthenticate{ErrOriginal: answer(401, ""), ErrReauth: dial},
			false, false, 0, "re-authenticate"},
		{"deadline", context.DeadlineExceeded, false, false, 0, "deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := classify("create volume \"image-x\"", tc.err)
			if errors.Is(err, jobs.ErrNotFound) != tc.notFound {
				t.Errorf("not found: %t, want %t", !tc.notFound, tc.notFound)
			}
			if jobs.IsPermanent(err) != tc.permanent {
				t.Errorf("permanent: %t, want %t", !tc.permanent, tc.permanent)
			}
			if d := jobs.RetryDelay(err); d != tc.delay {
				t.Errorf("retry delay %s, want %s", d, tc.delay)
			}
			if !strings.HasPrefix(err.Error(), `create volume "image-x": `) || !strings.Contains(err.Error(), tc.message) {
				t.Errorf("message %q, want the operation and %q", err, tc.message)
			}
		})
	}
	if classify("x", nil) != nil {
		t.Error("classify(nil) is not nil")
	}
}

// TestClassifyKeepsBodiesOut: gophercloud's own error text carries the
// whole response body and URL; ours keeps only the service's message.
func TestClassifyKeepsBodiesOut(t *testing.T) {
	err := classify("attach volume v1", answer(400, `{"badRequest": {"message": "bad"}, "extra": {"auth_password": "chap-secret"}}`))
	if strings.Contains(err.Error(), "chap-secret") || strings.Contains(err.Error(), "http://cinder") {
		t.Fatalf("%v", err)
	}
}

func TestFaultMessage(t *testing.T) {
	for body, want := range map[string]string{
		`{"badRequest": {"message": "Invalid volume: Volume v status must be available or downloading to reserve, but the current status is deleting.", "code": 400}}`: "Invalid volume: Volume v status must be available or downloading to reserve, but the current status is deleting.",
		`{"error": {"message": "The request you have made requires authentication.", "code": 401}}`:                                                                    "The request you have made requires authentication.",
		`{"computeFault": {"code": 500}}`: "",
		`[1, 2]`:                          "[1, 2]",
		"plain text\n  answer":            "plain text answer",
		"<html><head><title>502 Bad Gateway</title></head>": "",
		"": "",
		`{"overLimit": {"message": "` + strings.Repeat("x", 2000) + `"}}`: strings.Repeat("x", maxMessage) + "…",
	} {
		if got := faultMessage([]byte(body)); got != want {
			t.Errorf("faultMessage(%.60q) = %.60q, want %.60q", body, got, want)
		}
	}
}

func FuzzFaultMessage(f *testing.F) {
	f.Add([]byte(`{"badRequest": {"message": "Invalid input", "code": 400}}`))
	f.Add([]byte(`{"error": {"message": "denied"}}`))
	f.Add([]byte("<html>oops</html>"))
	f.Add([]byte(`{"a": {"message": 5}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		m := faultMessage(body)
		if len(m) > maxMessage+len("…") || strings.ContainsAny(m, "\n\r") {
			t.Fatalf("message %q is not one bounded line", m)
		}
		e := &APIError{Status: 400, Message: m}
		_ = e.Error()
	})
}

func TestRetryAfterHeader(t *testing.T) {
	for v, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "-1": 0, "soon": 0,
		"Wed, 21 Oct 2015 07:28:00 GMT": 0, "100000": 10 * time.Minute} {
		if got := retryAfter(http.Header{"Retry-After": {v}}); got != want {
			t.Errorf("Retry-After %q: %s, want %s", v, got, want)
		}
	}
}

func TestRetryIdempotent(t *testing.T) {
	retry := retryIdempotent(2, time.Millisecond, nopLogger())
	reset := &url.Error{Op: "Put", Err: &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}}
	for _, tc := range []struct {
		method string
		err    error
		fail   uint
		retry  bool
	}{
		{"GET", answer(503, ""), 1, true},
		{"DELETE", answer(500, ""), 2, true},
		{"PUT", reset, 1, true},
		{"GET", answer(500, ""), 3, false},
		{"GET", answer(501, ""), 1, false},
		{"GET", answer(404, ""), 1, false},
		{"POST", answer(503, ""), 1, false},
		{"POST", reset, 1, false},
		{"GET", errors.New("invalid character in JSON"), 1, false},
	} {
		got := retry(context.Background(), tc.method, "http://cinder", nil, tc.err, tc.fail) == nil
		if got != tc.retry {
			t.Errorf("%s after %v (failure %d): retry %t, want %t", tc.method, tc.err, tc.fail, got, tc.retry)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := retryIdempotent(2, time.Hour, nopLogger())(ctx, "GET", "http://cinder", nil, answer(503, ""), 1); err == nil {
		t.Error("a cancelled context still retries")
	}
}

func nopLogger() zerolog.Logger { return zerolog.Nop() }
