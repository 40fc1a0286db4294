package jobs

import (
	"errors"
	"fmt"
	"time"
)

// ErrNotFound is returned (wrapped) by adapters when a volume, attachment,
// object or journal record does not exist.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned (wrapped) when a conditional write lost a race:
// the record changed since it was read, or already exists.
var ErrConflict = errors.New("conflict")

// ErrCancelled is returned (wrapped) when a job was cancelled by an operator.
var ErrCancelled = errors.New("cancelled")

// PermanentError marks a failure that retrying cannot fix: a bad job, a
// missing object, a checksum mismatch, a quota. The job is cleaned up and
// dead-lettered with the reason.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that IsPermanent reports true. It returns nil for a
// nil err.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// Permanentf is fmt.Errorf followed by Permanent.
func Permanentf(format string, args ...any) error {
	return Permanent(fmt.Errorf(format, args...))
}

// IsPermanent reports whether err (or anything it wraps) is permanent.
// Errors are retryable unless marked otherwise.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// RetryAfterError asks for a retry no sooner than After: an adapter that
// knows how long a condition lasts (Retry-After, a volume in a transitional
// state) says so.
type RetryAfterError struct {
	Err   error
	After time.Duration
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter wraps err with a minimum delay before the next attempt.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &RetryAfterError{Err: err, After: d}
}

// RetryDelay returns the delay requested by a RetryAfterError in err's chain,
// or 0.
func RetryDelay(err error) time.Duration {
	var r *RetryAfterError
	if errors.As(err, &r) {
		return r.After
	}
	return 0
}
