package cinder

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"

	"github.com/cinderport/cinderport/jobs"
)

// APIError is an error answer of Cinder or Keystone: the HTTP status, the
// service's message and its request id. It carries neither the request nor
// headers, so it cannot leak a token. Errors.Is(err, jobs.ErrNotFound)
// holds for a 404.
type APIError struct {
	Status    int
	Message   string
	RequestID string
	// RetryAfter is the delay the service asked for (Retry-After), or 0.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP %d", e.Status)
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.RequestID != "" {
		b.WriteString(" (request " + e.RequestID + ")")
	}
	return b.String()
}

// Is makes a 404 match jobs.ErrNotFound.
func (e *APIError) Is(target error) bool {
	return target == jobs.ErrNotFound && e.Status == http.StatusNotFound
}

// maxMessage bounds the service message kept in an error.
const maxMessage = 512

// faultMessage extracts the message of an OpenStack error body: Cinder's
// {"badRequest": {"message": …, "code": 400}} (any fault name), Keystone's
// {"error": {"message": …}}, or a plain-text body. It never fails: a body it
// cannot read gives "".
func faultMessage(body []byte) string {
	var faults map[string]json.RawMessage
	if json.Unmarshal(body, &faults) == nil {
		for _, raw := range faults {
			var f struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(raw, &f) == nil && f.Message != "" {
				return clip(f.Message)
			}
		}
		return ""
	}
	s := strings.TrimSpace(string(body))
	if strings.HasPrefix(s, "<") { // an HTML error page says nothing useful
		return ""
	}
	return clip(s)
}

// clip bounds s and keeps it on one line.
func clip(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMessage {
		s = s[:maxMessage] + "…"
	}
	return s
}

// retryAfter reads a Retry-After header in seconds (HTTP dates are rare
// from OpenStack services and ignored).
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0
	}
	return min(time.Duration(n)*time.Second, 10*time.Minute)
}

// responseError finds the HTTP error answer in err's chain.
func responseError(err error) (gophercloud.ErrUnexpectedResponseCode, bool) {
	var v gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &v) {
		return v, true
	}
	var p *gophercloud.ErrUnexpectedResponseCode
	if errors.As(err, &p) && p != nil {
		return *p, true
	}
	return gophercloud.ErrUnexpectedResponseCode{}, false
}

func newAPIError(rc gophercloud.ErrUnexpectedResponseCode) *APIError {
	e := &APIError{Status: rc.Actual, Message: faultMessage(rc.Body)}
	if rc.ResponseHeader != nil {
		e.RequestID = rc.ResponseHeader.Get("X-Openstack-Request-Id")
		e.RetryAfter = retryAfter(rc.ResponseHeader)
	}
	return e
}

// classify translates a gophercloud error at the boundary into the domain's
// terms, for the operation op (which names the volume):
//   - 404 wraps jobs.ErrNotFound (through APIError);
//   - 400 (invalid request), 403 (policy), 413 (quota) and refused
//     credentials are permanent;
//   - 5xx, 409, 429, timeouts and connection failures are retryable, with
//     the service's Retry-After when it gave one.
//
// A 400 that only reflects a volume's transitional state is recognised by
// the callers that can check the volume (see transitional).
func classify(op string, err error) error {
	if err == nil {
		return nil
	}
	var reauth gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &reauth) {
		if rc, ok := responseError(reauth.ErrReauth); ok && rc.Actual/100 == 4 {
			return jobs.Permanentf("%s: Keystone refused the credentials: %w", op, newAPIError(rc))
		}
		return fmt.Errorf("%s: re-authenticate: %w", op, reauth.ErrReauth)
	}
	rc, ok := responseError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	ae := newAPIError(rc)
	wrapped := fmt.Errorf("%s: %w", op, ae)
	switch {
	case ae.Status == http.StatusNotFound:
		return wrapped
	case ae.Status == http.StatusRequestEntityTooLarge && ae.RetryAfter > 0,
		ae.Status == http.StatusTooManyRequests:
		return jobs.RetryAfter(wrapped, max(ae.RetryAfter, time.Second))
	case ae.Status == http.StatusConflict:
		return jobs.RetryAfter(wrapped, time.Second)
	case ae.Status/100 == 4:
		return jobs.Permanent(wrapped)
	case ae.RetryAfter > 0:
		return jobs.RetryAfter(wrapped, ae.RetryAfter)
	}
	return wrapped
}
