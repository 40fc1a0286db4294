package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// CountingProxy is a plain TCP proxy on 127.0.0.1 that counts the bytes
// its upstream sends back: pointed at by a client instead of a server, it
// measures what the client read independently of the client (whose own
// counters die with it). It forwards bytes untouched, so signed requests
// (SigV4 signs the Host header) stay valid.
type CountingProxy struct {
	// Addr is where clients connect (127.0.0.1:port).
	Addr string

	upstream string
	ln       net.Listener
	down     atomic.Int64
	refused  atomic.Int64
	mu       sync.Mutex
	notify   chan struct{} // closed and replaced whenever bytes arrive
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// StartCountingProxy proxies a new loopback port to upstream (host:port)
// until t's cleanup.
func StartCountingProxy(t testing.TB, upstream string) *CountingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("counting proxy: %v", err)
	}
	p := &CountingProxy{Addr: ln.Addr().String(), upstream: upstream, ln: ln, notify: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *CountingProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.pipe(c)
		}()
	}
}

// pipe connects one client to the upstream; a refused upstream closes the
// client's connection, as the server's absence would.
func (p *CountingProxy) pipe(c net.Conn) {
	u, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		p.refused.Add(1)
		c.Close()
		return
	}
	if !p.track(c, u) {
		c.Close()
		u.Close()
		return
	}
	defer p.untrack(c, u)
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		if tc, ok := u.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	buf := make([]byte, 256<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				break
			}
			p.add(int64(n))
		}
		if err != nil {
			break
		}
	}
	c.Close()
	u.Close()
	<-done
}

func (p *CountingProxy) track(c, u net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	return true
}

func (p *CountingProxy) untrack(c, u net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	delete(p.conns, u)
}

func (p *CountingProxy) add(n int64) {
	p.down.Add(n)
	p.mu.Lock()
	close(p.notify)
	p.notify = make(chan struct{})
	p.mu.Unlock()
}

// Bytes is how many bytes the upstream sent to clients so far.
func (p *CountingProxy) Bytes() int64 { return p.down.Load() }

// Refused is how many client connections found the upstream unreachable
// (and were closed).
func (p *CountingProxy) Refused() int64 { return p.refused.Load() }

// WaitBytes waits until the upstream sent at least n bytes in all.
func (p *CountingProxy) WaitBytes(ctx context.Context, n int64) error {
	for {
		p.mu.Lock()
		ch := p.notify
		p.mu.Unlock()
		if got := p.down.Load(); got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("proxy to %s: %d of %d bytes: %w", p.upstream, p.down.Load(), n, ctx.Err())
		}
	}
}

func (p *CountingProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// Kill ends the server with SIGKILL, as a crash or a lost host would: its
// connections drop mid-response. Its data stays; Start brings it back.
func (m *MinIO) Kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.done
	m.log.Close()
	m.cmd = nil
}

// labPorts are the ports the lab's API servers listen on, by process name.
func (l *CinderLab) labPorts() map[string]int {
	return map[string]int{"cinder-api": l.cinderPort, "keystone": l.keystonePort}
}

// StopService stops one of the lab's servers ("cinder-api" — cinder-wsgi
// under uwsgi —, "cinder-scheduler", "cinder-volume", "keystone", …) with
// its whole process group, as an outage would.
func (l *CinderLab) StopService(name string) error {
	p := l.proc(name)
	if p == nil {
		return fmt.Errorf("cinder lab: no service %q", name)
	}
	if !p.exited() {
		p.stop(5 * time.Second)
	}
	return nil
}

// StartService starts a stopped lab server again with its command line,
// environment and user, and for an API server waits until it accepts
// connections on its port.
func (l *CinderLab) StartService(name string) error {
	old := l.proc(name)
	if old == nil {
		return fmt.Errorf("cinder lab: no service %q", name)
	}
	if !old.exited() {
		return fmt.Errorf("cinder lab: %s is still running", name)
	}
	var cred *syscall.Credential
	if a := old.cmd.SysProcAttr; a != nil {
		cred = a.Credential
	}
	p, err := spawn(l.path("logs"), name, old.cmd.Env, cred, old.stopSig, old.cmd.Args...)
	if err != nil {
		return fmt.Errorf("cinder lab: restart %s: %w", name, err)
	}
	l.mu.Lock()
	for i := range l.procs {
		if l.procs[i] == old {
			l.procs[i] = p
		}
	}
	l.mu.Unlock()
	if port, ok := l.labPorts()[name]; ok {
		return l.waitPort(name, port, 60*time.Second)
	}
	return nil
}

// CutVolumeConnections closes every iSCSI connection to the tgtd target
// that exports volumeID, as a network failure would, and returns how many
// it closed.
func (l *CinderLab) CutVolumeConnections(volumeID string) (int, error) {
	out, err := l.tgtd.adm("--mode", "target", "--op", "show")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, "Target ")
		if !ok {
			continue
		}
		id, name, ok := strings.Cut(rest, ": ")
		if !ok || !strings.HasSuffix(strings.TrimSpace(name), ":volume-"+volumeID) {
			continue
		}
		tid, err := strconv.Atoi(id)
		if err != nil {
			return 0, fmt.Errorf("tgtd target id %q: %w", id, err)
		}
		return l.tgtd.CutConnections(tid), nil
	}
	return 0, errors.New("no tgtd target exports volume " + volumeID)
}
