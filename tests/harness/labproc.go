package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// labProc is a server process of the cinder lab, started in its own process
// group so that stopping it also stops what it forked (uwsgi workers,
// cinder-volume's backend process and privsep daemon, postgres backends).
// Pdeathsig kills it if the test binary dies without cleaning up.
type labProc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	log     string
	stopSig syscall.Signal
}

// spawn starts args[0] with env (added to the harness's environment) and
// its output in logDir/name.out (the OpenStack services write their own
// name.log there too). cred runs it as another user (PostgreSQL refuses to
// run as root).
func spawn(logDir, name string, env []string, cred *syscall.Credential, stopSig syscall.Signal, args ...string) (*labProc, error) {
	logPath := filepath.Join(logDir, name+".out")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &labProc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath, stopSig: stopSig}
	go func() { cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *labProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends the process its stop signal (SIGKILL goes to the whole group),
// waits up to grace, then kills the whole group.
func (p *labProc) stop(grace time.Duration) {
	pgid := p.cmd.Process.Pid
	if p.stopSig == syscall.SIGKILL {
		syscall.Kill(-pgid, syscall.SIGKILL)
	} else {
		p.cmd.Process.Signal(p.stopSig)
	}
	select {
	case <-p.done:
	case <-time.After(grace):
	}
	// Whatever is left in the group (postgres backends, uwsgi workers,
	// cinder-volume's privsep daemon) goes too.
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
}

// tail returns the end of the process's log, for error messages.
func (p *labProc) tail() string { return tailFile(p.log, 3000) }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// run runs a one-shot command and returns its combined output on failure.
func run(env []string, cred *syscall.Credential, args ...string) error {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, tailString(out, 2000))
	}
	return nil
}

func tailString(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(bytes.TrimSpace(b))
}

// parallel runs fns concurrently and joins their errors.
func parallel(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// poll calls ready every interval until it returns nil or timeout passes;
// the last error explains the timeout.
func poll(timeout, interval time.Duration, what string, ready func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ready()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %s: %w", what, timeout, err)
		}
		time.Sleep(interval)
	}
}
