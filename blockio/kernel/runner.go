package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/rs/zerolog"
)

// Command is a program to run. Sensitive lists argument values (CHAP
// secrets) that never appear in errors or logs: they are shown as "***"
// wherever they occur, in the arguments and in the program's output.
type Command struct {
	Name      string
	Args      []string
	Sensitive []string
}

// redact replaces every sensitive value in s.
func (c Command) redact(s string) string {
	for _, v := range c.Sensitive {
		if v != "" {
			s = strings.ReplaceAll(s, v, "***")
		}
	}
	return s
}

// String is the command line with sensitive values hidden.
func (c Command) String() string {
	return c.redact(strings.Join(append([]string{c.Name}, c.Args...), " "))
}

// Runner runs commands: the kernel connector's only way to the host. It
// returns the command's standard output; a command that fails returns a
// *CommandError.
type Runner interface {
	Run(ctx context.Context, cmd Command) ([]byte, error)
}

// CommandError is a command that could not run (ExitCode -1) or exited
// with a non-zero status. Its text has the sensitive values redacted.
type CommandError struct {
	Command  string // redacted command line
	ExitCode int
	Stderr   string // redacted, trimmed
	Err      error
}

// Error is the redacted command line, the failure and the redacted
// standard error.
func (e *CommandError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Command, e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

// Unwrap returns the underlying failure (an *exec.ExitError, exec.ErrNotFound,
// a context error).
func (e *CommandError) Unwrap() error { return e.Err }

// ExitCode returns the exit status of a failed command in err's chain, or
// -1 when err holds none.
func ExitCode(err error) int {
	var ce *CommandError
	if errors.As(err, &ce) {
		return ce.ExitCode
	}
	return -1
}

// ExecRunner runs commands with exec.CommandContext, logging each one
// (redacted) at debug level.
type ExecRunner struct {
	Log zerolog.Logger
}

var _ Runner = ExecRunner{}

// maxStderr bounds the standard error kept in a CommandError.
const maxStderr = 2048

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, cmd Command) ([]byte, error) {
	c := exec.CommandContext(ctx, cmd.Name, cmd.Args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	r.Log.Debug().Str("command", cmd.String()).Err(redactErr(cmd, err)).Msg("ran")
	if err == nil {
		return stdout.Bytes(), nil
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	msg := strings.TrimSpace(cmd.redact(stderr.String()))
	if len(msg) > maxStderr {
		msg = msg[:maxStderr] + "…"
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return stdout.Bytes(), &CommandError{Command: cmd.String(), ExitCode: code, Stderr: msg, Err: redactErr(cmd, err)}
}

// redactErr hides sensitive values in an error's text (an exec error
// quotes the program, never its arguments, but stay safe).
func redactErr(cmd Command, err error) error {
	if err == nil {
		return nil
	}
	if s := cmd.redact(err.Error()); s != err.Error() {
		return errors.New(s)
	}
	return err
}
