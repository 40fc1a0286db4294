package iscsi

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

// Path is one way to the LUN: a portal (host:port, 3260 by default), the
// target's IQN there, and the LUN number. Multipath exports list several.
type Path struct {
	Portal string
	Target string
	LUN    int
}

// String is portal/target/lun, as iscsi:// URLs name a LUN.
func (p Path) String() string { return fmt.Sprintf("%s/%s/%d", p.Portal, p.Target, p.LUN) }

// Config configures a Session. Zero durations and lengths take the
// defaults documented on each field.
type Config struct {
	// InitiatorName is this host's IQN.
	InitiatorName string
	// Paths are tried in order at login; a lost connection is
	// re-established on the path that worked last, then on the others.
	Paths []Path
	// Auth is the CHAP credentials (none when Auth.User is empty).
	Auth Auth
	// RequireAuth refuses a target that lets us in without CHAP although
	// credentials were given. Mutual CHAP always requires it.
	RequireAuth bool
	// Digests offers CRC32C header and data digests.
	Digests bool
	// MaxRecvDataSegmentLength is declared to the target (default 256 KiB).
	MaxRecvDataSegmentLength int
	// LoginTimeout bounds each exchange of a login (default 15 s).
	LoginTimeout time.Duration
	// ReconnectTimeout bounds the re-establishment of a lost connection;
	// after it the commands in flight fail (default 2 min).
	ReconnectTimeout time.Duration
	// NOPInterval is how long a connection may stay silent before we ping
	// it (default 5 s); NOPTimeout is how long the ping may go unanswered
	// before the connection counts as lost (default 15 s).
	NOPInterval, NOPTimeout time.Duration
	// QueueDepth is how many commands a Device keeps in flight (default
	// 8). tgtd looks Data-Out PDUs up in a list of the session's commands:
	// deeper queues cost it more than they gain.
	QueueDepth int
	// CommandTimeout is how long a command may stay unanswered on a
	// connection before the connection counts as lost and the command is
	// reissued on a new one (default 2 min).
	CommandTimeout time.Duration
	// Log receives connection events; secrets never reach it.
	Log zerolog.Logger
	// OnEvent, when set, is told of the session's failures: "reconnect"
	// when a lost connection was re-established, "lost" when it could not
	// be. It must not block.
	OnEvent func(event string)
}

func (c *Config) defaults() {
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = 256 << 10
	}
	if c.LoginTimeout == 0 {
		c.LoginTimeout = 15 * time.Second
	}
	if c.ReconnectTimeout == 0 {
		c.ReconnectTimeout = 2 * time.Minute
	}
	if c.NOPInterval == 0 {
		c.NOPInterval = 5 * time.Second
	}
	if c.NOPTimeout == 0 {
		c.NOPTimeout = 15 * time.Second
	}
	if c.QueueDepth == 0 {
		c.QueueDepth = 8
	}
	if c.CommandTimeout == 0 {
		c.CommandTimeout = 2 * time.Minute
	}
}

// Validate reports a configuration that cannot work. Its errors are
// permanent.
func (c *Config) Validate() error {
	switch {
	case c.InitiatorName == "":
		return jobs.Permanentf("iscsi: no initiator name configured")
	case len(c.Paths) == 0:
		return jobs.Permanentf("iscsi: no portal, target and LUN given")
	case c.QueueDepth < 0:
		return jobs.Permanentf("iscsi: negative queue depth")
	case c.MaxRecvDataSegmentLength < 512 || c.MaxRecvDataSegmentLength > 1<<24-1:
		return jobs.Permanentf("iscsi: MaxRecvDataSegmentLength %d is outside 512..16777215", c.MaxRecvDataSegmentLength)
	case (c.Auth.TargetUser != "") && c.Auth.User == "":
		return jobs.Permanentf("iscsi: mutual CHAP needs the initiator's CHAP credentials too")
	}
	for _, p := range c.Paths {
		if p.Portal == "" || p.Target == "" || p.LUN < 0 || p.LUN > 16383 {
			return jobs.Permanentf("iscsi: incomplete path %s", p)
		}
	}
	return nil
}

// ErrClosed is returned for commands on a closed session.
var ErrClosed = errors.New("iscsi: session closed")

// maxIssues bounds how often one command is issued across reconnects: a
// command that keeps killing connections fails.
const maxIssues = 6

// task is one SCSI command.
type task struct {
	cdb   [16]byte
	write []byte // data out; len is the expected transfer length
	read  []byte // data in buffer; len is the expected transfer length

	// Set when issued, under Session.mu.
	itt    uint32
	cmdSN  uint32
	c      *conn
	sent   time.Time
	issues int
	// pending counts what still holds the task: 1 until the response is
	// handled, plus each queued PDU carrying write data. The last release
	// closes done.
	pending atomic.Int32
	done    chan struct{}

	// Results, written before the final release.
	status, response byte
	sense            []byte
	residual         int
	overflow         bool
	err              error
}

func (t *task) edtl() int { return len(t.write) + len(t.read) }

func (t *task) release() {
	if t.pending.Add(-1) == 0 {
		close(t.done)
	}
}

// fail ends a task that nothing else holds any more.
func (t *task) fail(err error) {
	t.err = err
	t.pending.Store(0)
	close(t.done)
}

// conn is one TCP connection of the session, logged in.
type conn struct {
	nc   net.Conn
	path Path
	p    params
	rd   *pduReader
	out  *sendQueue
	live atomic.Int32 // reader and writer still running
	done chan struct{}

	// Under Session.mu.
	lastRecv time.Time
	pingSent time.Time
	pingITT  uint32
}

// Session is one iSCSI session (a single connection, ErrorRecoveryLevel 0)
// to a LUN. It is safe for concurrent use; commands are pipelined within
// the target's CmdSN window.
type Session struct {
	cfg  Config
	log  zerolog.Logger
	isid [6]byte

	ctx    context.Context // ends with Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the session
	ended  chan struct{}  // closed when Close has finished

	mu         sync.Mutex
	changed    chan struct{} // closed (and replaced) when submitters should look again
	waiters    int
	conn       *conn  // nil while reconnecting
	last       params // of the last connection installed
	path       int    // index in cfg.Paths of the path that worked last
	cmdSN      uint32
	maxCmdSN   uint32
	expStatSN  uint32
	nextITT    uint32
	tasks      map[uint32]*task
	closing    bool
	fatal      error
	reconnects int
	logoutDone chan struct{}
}

// Dial logs in on the first path that accepts us and starts the session.
// Errors that retrying cannot fix (bad credentials, unknown target) are
// permanent and wrap ErrAuth or ErrNoTarget.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Session{cfg: cfg, isid: newISID(), tasks: map[uint32]*task{}, nextITT: 1,
		changed: make(chan struct{}), ended: make(chan struct{}),
		log: cfg.Log.With().Str("component", "iscsi").Logger()}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	c, st, err := s.connect(ctx)
	if err != nil {
		s.cancel()
		return nil, err
	}
	s.mu.Lock()
	s.install(c, st)
	s.mu.Unlock()
	s.wg.Add(1)
	go s.keepalive()
	return s, nil
}

// newISID is a "random" ISID (RFC 7143 §10.12.5: type 0b10, the A field
// reserved, 24 random bits, and a qualifier, random too so that the many
// sessions of one initiator name never collide). It is kept for the
// session's life, so that a reconnect reinstates the session: the target
// ends the old one and its commands before ours are reissued.
func newISID() [6]byte {
	var b [6]byte
	rand.Read(b[1:])
	b[0] = 0x80
	return b
}

// connect dials the paths in turn, starting with the last that worked, and
// logs in, following redirects.
func (s *Session) connect(ctx context.Context) (*conn, loginState, error) {
	s.mu.Lock()
	first := s.path
	s.mu.Unlock()
	var errs []error
	permanent := true
	for i := range s.cfg.Paths {
		idx := (first + i) % len(s.cfg.Paths)
		path := s.cfg.Paths[idx]
		for hop := 0; ; hop++ {
			c, st, err := s.login(ctx, path)
			if err == nil {
				s.mu.Lock()
				s.path = idx
				s.mu.Unlock()
				return c, st, nil
			}
			var le *loginError
			if errors.As(err, &le) && le.class == 1 && le.redirect != "" && hop < 8 {
				to, rerr := NormalizePortal(le.redirect)
				if rerr == nil {
					s.log.Info().Str("portal", path.Portal).Str("to", to).Msg("iscsi login redirected")
					path.Portal = to
					continue
				}
			}
			err = fmt.Errorf("iscsi: login to %s at %s: %w", path.Target, path.Portal, err)
			if errors.Is(err, ErrAuth) {
				// Every path of a volume shares its credentials.
				return nil, loginState{}, jobs.Permanent(err)
			}
			if !jobs.IsPermanent(err) && (!errors.As(err, &le) || !le.permanent()) {
				permanent = false
			}
			errs = append(errs, err)
			break
		}
		if ctx.Err() != nil {
			break
		}
	}
	err := errors.Join(errs...)
	if permanent {
		return nil, loginState{}, jobs.Permanent(err)
	}
	return nil, loginState{}, err
}

// login dials one portal and runs the login phase on it.
func (s *Session) login(ctx context.Context, path Path) (*conn, loginState, error) {
	addr, err := NormalizePortal(path.Portal)
	if err != nil {
		return nil, loginState{}, jobs.Permanent(err)
	}
	d := net.Dialer{Timeout: s.cfg.LoginTimeout, KeepAlive: 15 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, loginState{}, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	st, err := newLogin(nc, &s.cfg, path.Target, s.isid).run(ctx)
	if err != nil {
		nc.Close()
		return nil, loginState{}, err
	}
	path.Portal = addr
	c := &conn{nc: nc, path: path, p: st.p, done: make(chan struct{})}
	c.rd = newPDUReader(nc, st.p.recvDSL)
	c.rd.headerDigest, c.rd.dataDigest = st.p.headerDigest, st.p.dataDigest
	c.out = newSendQueue(nc, st.p)
	return c, st, nil
}

// install starts the full feature phase on a logged-in connection. s.mu
// held.
func (s *Session) install(c *conn, st loginState) {
	s.conn, s.last = c, c.p
	s.cmdSN, s.maxCmdSN, s.expStatSN = st.cmdSN, st.maxCmdSN, st.expStatSN
	c.lastRecv = time.Now()
	c.live.Store(2)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		defer c.exited()
		c.out.run()
	}()
	go func() {
		defer s.wg.Done()
		defer c.exited()
		s.reader(c)
	}()
	s.broadcast()
	s.log.Debug().Str("portal", c.path.Portal).Int("send_dsl", st.p.sendDSL).Int("max_burst", st.p.maxBurst).
		Int("first_burst", st.p.firstBurst).Bool("initial_r2t", st.p.initialR2T).Bool("immediate_data", st.p.immediateData).
		Bool("digests", st.p.headerDigest).Msg("iscsi session established")
}

func (c *conn) exited() {
	if c.live.Add(-1) == 0 {
		close(c.done)
	}
}

// broadcast wakes every submitter waiting for the window or a connection.
// s.mu held.
func (s *Session) broadcast() {
	if s.waiters > 0 {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// snLE is serial-number a <= b (RFC 1982 on 32 bits).
func snLE(a, b uint32) bool { return a == b || int32(a-b) < 0 }

// newITT returns an initiator task tag not in use. s.mu held.
func (s *Session) newITT() uint32 {
	for {
		itt := s.nextITT
		s.nextITT++
		if itt != reservedTag && s.tasks[itt] == nil && (s.conn == nil || itt != s.conn.pingITT) {
			return itt
		}
	}
}

// issue sends t once the window is open and a connection is up. ctx ends
// the wait; once sent, t ends only through t.done.
func (s *Session) issue(ctx context.Context, t *task) error {
	s.mu.Lock()
	for {
		if s.closing {
			s.mu.Unlock()
			return ErrClosed
		}
		if s.fatal != nil {
			err := s.fatal
			s.mu.Unlock()
			return err
		}
		if s.conn != nil && snLE(s.cmdSN, s.maxCmdSN) {
			break
		}
		ch := s.changed
		s.waiters++
		s.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = context.Cause(ctx)
		case <-s.ctx.Done():
			err = ErrClosed
		}
		s.mu.Lock()
		s.waiters--
		if err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.send(t)
	s.mu.Unlock()
	return nil
}

// send builds and queues t's SCSI Command PDU and its unsolicited data
// (immediate data, then Data-Out up to FirstBurstLength). s.mu held.
func (s *Session) send(t *task) {
	c := s.conn
	t.itt, t.cmdSN, t.c, t.sent = s.newITT(), s.cmdSN, c, time.Now()
	t.issues++
	t.status, t.response, t.sense, t.residual, t.overflow, t.err = 0, 0, nil, 0, false, nil
	t.pending.Store(1)
	s.tasks[t.itt] = t
	s.cmdSN++

	o := outPDU{}
	header(&o.bhs, opSCSICmd, false, flagFinal|flagAttrSimp)
	encodeLUN(o.bhs[:], c.path.LUN)
	put32(o.bhs[:], 16, t.itt)
	put32(o.bhs[:], 20, uint32(t.edtl()))
	put32(o.bhs[:], 24, t.cmdSN)
	put32(o.bhs[:], 28, s.expStatSN)
	copy(o.bhs[32:48], t.cdb[:])
	if t.read != nil {
		o.bhs[1] |= flagRead
	}
	if t.write == nil {
		c.out.push(o)
		return
	}
	o.bhs[1] |= flagWrite
	p := c.p
	unsolicited := 0
	if !p.initialR2T {
		unsolicited = min(len(t.write), p.firstBurst)
	}
	imm := 0
	if p.immediateData {
		imm = min(len(t.write), p.firstBurst, p.sendDSL)
	}
	unsolicited = max(unsolicited, imm)
	if unsolicited > imm {
		o.bhs[1] &^= flagFinal // unsolicited Data-Out follows
	}
	if imm > 0 {
		o.data, o.t = t.write[:imm], t
		t.pending.Add(1)
	}
	c.out.push(o)
	if unsolicited > imm {
		c.out.dataOut(t, c.path.LUN, reservedTag, s.expStatSN, imm, unsolicited-imm, p.sendDSL)
	}
}

// updateSN takes ExpCmdSN and MaxCmdSN from a target PDU (RFC 7143
// §4.2.2.1): stale or inconsistent values are ignored. s.mu held.
func (s *Session) updateSN(p *pdu) {
	exp, max := p.u32(28), p.u32(32)
	if !snLE(exp-1, max) || !snLE(s.maxCmdSN, max) || s.maxCmdSN == max {
		return
	}
	s.maxCmdSN = max
	s.broadcast()
}

// statSN advances ExpStatSN past a PDU that consumed StatSN sn. s.mu held.
func (s *Session) statSN(sn uint32) {
	if snLE(s.expStatSN, sn) {
		s.expStatSN = sn + 1
	}
}

func (s *Session) event(name string) {
	if s.cfg.OnEvent != nil {
		s.cfg.OnEvent(name)
	}
}

// Reconnects is how many times the session was reinstated on a new
// connection.
func (s *Session) Reconnects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconnects
}

// negotiated returns the parameters of the current (or last) connection.
func (s *Session) negotiated() params {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Path is the path the session is (or was last) connected through.
func (s *Session) Path() Path {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		return s.conn.path
	}
	return s.cfg.Paths[s.path]
}

// logoutTimeout bounds the wait for a Logout Response at Close.
const logoutTimeout = 5 * time.Second

// Close logs out (waiting at most 5 s for the target's answer) and ends
// the session. Commands still in flight fail with ErrClosed. It always
// returns nil; a second Close waits for the first.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		<-s.ended
		return nil
	}
	s.closing = true
	c := s.conn
	var wait chan struct{}
	if c != nil {
		wait = make(chan struct{})
		s.logoutDone = wait
		var o outPDU
		header(&o.bhs, opLogoutReq, true, flagFinal) // reason 0: close the session
		put32(o.bhs[:], 16, s.newITT())
		put32(o.bhs[:], 24, s.cmdSN)
		put32(o.bhs[:], 28, s.expStatSN)
		c.out.push(o)
	}
	s.broadcast()
	s.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-c.done:
		case <-time.After(logoutTimeout):
		}
	}
	s.cancel()
	s.mu.Lock()
	c, s.conn = s.conn, nil
	s.mu.Unlock()
	if c != nil {
		c.nc.Close()
		c.out.close()
	}
	s.wg.Wait()
	// Readers and writers are gone: no task buffer is touched any more.
	s.mu.Lock()
	for itt, t := range s.tasks {
		delete(s.tasks, itt)
		t.fail(ErrClosed)
	}
	s.mu.Unlock()
	close(s.ended)
	return nil
}
