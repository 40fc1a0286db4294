package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

// Config configures a session to one LUN.
type Config struct {
	// InitiatorName is this host's IQN.
	InitiatorName string
	// Portals are tried in order (host:port); a lost connection is
	// re-established on any of them.
	Portals []string
	Target  string
	LUN     int
	Auth    Auth
	// RequireAuth refuses a target that lets us in without CHAP when
	// credentials were given.
	RequireAuth bool
	// Digests offers CRC32C header and data digests.
	Digests bool
	// MaxRecvDataSegmentLength is declared to the target (default 256 KiB).
	MaxRecvDataSegmentLength int
	// LoginTimeout bounds each login exchange (default 10 s).
	LoginTimeout time.Duration
	// ReconnectTimeout bounds the re-establishment of a lost connection
	// before in-flight commands fail (default 60 s).
	ReconnectTimeout time.Duration
	// NOPInterval is how often an idle connection is pinged; a ping
	// unanswered for NOPInterval drops the connection (default 5 s).
	NOPInterval time.Duration
	Log         zerolog.Logger
}

func (c *Config) defaults() {
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = 256 << 10
	}
	if c.LoginTimeout == 0 {
		c.LoginTimeout = 10 * time.Second
	}
	if c.ReconnectTimeout == 0 {
		c.ReconnectTimeout = 60 * time.Second
	}
	if c.NOPInterval == 0 {
		c.NOPInterval = 5 * time.Second
	}
}

// ErrClosed is returned for commands on a closed session.
var ErrClosed = errors.New("iscsi: session closed")

// task is one SCSI command.
type task struct {
	cdb   [16]byte
	write []byte // data out
	read  []byte // data in buffer
	edtl  int
	itt   uint32
	gen   int

	done     chan struct{}
	status   byte
	response byte
	sense    []byte
	residual int
	err      error
}

// Session is one iSCSI session (one connection, ErrorRecoveryLevel 0) to a
// target LUN. It is safe for concurrent use.
type Session struct {
	cfg  Config
	isid [6]byte
	log  zerolog.Logger

	mu         sync.Mutex
	cond       *sync.Cond
	conn       net.Conn
	gen        int
	p          params
	cmdSN      uint32
	maxCmdSN   uint32
	expStatSN  uint32
	nextITT    uint32
	tasks      map[uint32]*task
	out        *sendQueue
	recovering bool
	closing    bool // logging out: a dropped connection is expected
	closed     bool
	fatal      error
	lastRecv   time.Time
	pingOut    time.Time
	logoutDone chan struct{}
	wg         sync.WaitGroup
	reconnects int
	stop       chan struct{} // closed by Close: ends keepalive
}

// Dial logs in to the target and starts the session.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	cfg.defaults()
	if cfg.InitiatorName == "" || cfg.Target == "" || len(cfg.Portals) == 0 {
		return nil, jobs.Permanentf("iscsi: initiator name, target and portal are required")
	}
	s := &Session{cfg: cfg, isid: newISID(), tasks: map[uint32]*task{}, nextITT: 1, stop: make(chan struct{}),
		log: cfg.Log.With().Str("target", cfg.Target).Logger()}
	s.cond = sync.NewCond(&s.mu)
	conn, st, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.install(conn, st)
	s.mu.Unlock()
	s.wg.Add(1)
	go s.keepalive()
	return s, nil
}

// connect dials the portals in turn and logs in, following redirects.
func (s *Session) connect(ctx context.Context) (net.Conn, loginState, error) {
	var lastErr error
	portals := append([]string(nil), s.cfg.Portals...)
	for i := 0; i < len(portals) && i < 8; i++ {
		addr := portals[i]
		d := net.Dialer{Timeout: s.cfg.LoginTimeout, KeepAlive: 15 * time.Second}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			lastErr = fmt.Errorf("iscsi: connect to %s: %w", addr, err)
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
			tc.SetReadBuffer(4 << 20)
			tc.SetWriteBuffer(4 << 20)
		}
		l := &loginConn{conn: conn, isid: s.isid, itt: 0, cmdSN: 1, cfg: &s.cfg, target: s.cfg.Target}
		st, err := l.run()
		if err == nil {
			return conn, st, nil
		}
		conn.Close()
		var le *loginError
		if errors.As(err, &le) && le.class == 1 && le.redirect != "" {
			host, _, _ := cutComma(le.redirect)
			s.log.Info().Str("to", host).Msg("iscsi login redirected")
			portals = append(portals[:i+1], append([]string{host}, portals[i+1:]...)...)
			lastErr = err
			continue
		}
		if jobs.IsPermanent(err) {
			return nil, loginState{}, err
		}
		lastErr = fmt.Errorf("iscsi: login to %s at %s: %w", s.cfg.Target, addr, err)
	}
	return nil, loginState{}, lastErr
}

func cutComma(s string) (string, string, bool) {
	for i := range s {
		if s[i] == ',' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// install starts the full feature phase on a logged-in connection. s.mu held.
func (s *Session) install(conn net.Conn, st loginState) {
	s.gen++
	s.conn, s.p = conn, st.p
	s.cmdSN, s.maxCmdSN, s.expStatSN = st.cmdSN, st.maxCmdSN, st.expStatSN
	s.out = newSendQueue(conn)
	s.lastRecv, s.pingOut = time.Now(), time.Time{}
	gen, out := s.gen, s.out
	s.wg.Add(2)
	go func() { defer s.wg.Done(); out.run() }()
	go func() { defer s.wg.Done(); s.reader(conn, gen, st.p) }()
	s.cond.Broadcast()
	s.log.Debug().Int("send_dsl", st.p.sendDSL).Int("max_burst", st.p.maxBurst).Int("first_burst", st.p.firstBurst).
		Bool("initial_r2t", st.p.initialR2T).Bool("immediate_data", st.p.immediateData).Msg("iscsi session established")
}

// serial arithmetic (RFC 1982) on 32-bit sequence numbers.
func snLE(a, b uint32) bool { return a == b || int32(a-b) < 0 }

// submit queues t; it blocks while the CmdSN window is closed or the
// connection is being re-established.
func (s *Session) submit(t *task) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed {
			return ErrClosed
		}
		if s.fatal != nil {
			return s.fatal
		}
		if !s.recovering && snLE(s.cmdSN, s.maxCmdSN) {
			break
		}
		s.cond.Wait()
	}
	itt := s.nextITT
	s.nextITT++
	if s.nextITT == reservedTag {
		s.nextITT = 1
	}
	t.itt, t.gen = itt, s.gen
	t.status, t.sense, t.err, t.residual, t.response = 0, nil, nil, 0, 0
	s.tasks[itt] = t
	cmdSN := s.cmdSN
	s.cmdSN++

	h := header(opSCSICmd, false, 0x80|0x01) // F, simple attribute
	encodeLUN(h, s.cfg.LUN)
	put32(h, 16, itt)
	put32(h, 20, uint32(t.edtl))
	put32(h, 24, cmdSN)
	put32(h, 28, s.expStatSN)
	copy(h[32:48], t.cdb[:])
	p := s.p
	if t.write == nil {
		if t.edtl > 0 {
			h[1] |= 0x40 // R
		}
		s.out.push(s.seal(h, nil))
		return nil
	}
	h[1] |= 0x20 // W
	// Immediate data, then unsolicited Data-Out, up to FirstBurstLength.
	unsolicited := 0
	if !p.initialR2T || p.immediateData {
		unsolicited = min(len(t.write), p.firstBurst)
	}
	imm := 0
	if p.immediateData {
		imm = min(unsolicited, p.sendDSL)
	}
	if p.initialR2T {
		unsolicited = imm
	}
	if unsolicited > imm {
		h[1] &^= 0x80 // F=0: unsolicited Data-Out follows
	}
	s.out.push(s.seal(h, t.write[:imm]))
	if unsolicited > imm {
		s.dataOut(t, reservedTag, imm, unsolicited-imm, 0)
	}
	return nil
}

// dataOut queues Data-Out PDUs for t's bytes [off, off+n). s.mu held.
func (s *Session) dataOut(t *task, ttt uint32, off, n int, _ int) {
	var sn uint32
	end := off + n
	for o := off; o < end; o += s.p.sendDSL {
		m := min(s.p.sendDSL, end-o)
		h := header(opDataOut, false, 0)
		if o+m == end {
			h[1] = 0x80
		}
		encodeLUN(h, s.cfg.LUN)
		put32(h, 16, t.itt)
		put32(h, 20, ttt)
		put32(h, 28, s.expStatSN)
		put32(h, 36, sn)
		put32(h, 40, uint32(o))
		s.out.push(s.seal(h, t.write[o:o+m]))
		sn++
	}
}

// seal finishes an outgoing PDU: data length and digests. s.mu held (for p).
func (s *Session) seal(h, data []byte) outPDU {
	setDataLen(h, len(data))
	o := outPDU{hdr: h, data: data}
	if s.p.headerDigest {
		var d [4]byte
		binary.LittleEndian.PutUint32(d[:], crc32c(h))
		o.hdr = append(o.hdr, d[:]...)
	}
	o.pad = pad4(len(data)) - len(data)
	if s.p.dataDigest && len(data) > 0 {
		o.digest = make([]byte, 4)
		binary.LittleEndian.PutUint32(o.digest, crc32c(data, zeros[:o.pad]))
	}
	return o
}

var zeros [4]byte

// updateSN takes ExpCmdSN/MaxCmdSN from a target PDU. s.mu held.
func (s *Session) updateSN(p *pdu) {
	exp, max := p.u32(28), p.u32(32)
	if !snLE(exp-1, max) { // MaxCmdSN < ExpCmdSN-1: ignore (RFC 7143 §4.2.2.1)
		return
	}
	if snLE(s.maxCmdSN, max) {
		if s.maxCmdSN != max {
			s.maxCmdSN = max
			s.cond.Broadcast()
		}
	}
}

func (s *Session) statSN(p *pdu) {
	if sn := p.u32(24); snLE(s.expStatSN, sn+1) {
		s.expStatSN = sn + 1
	}
}

// complete finishes a task. s.mu held.
func (s *Session) complete(t *task) {
	delete(s.tasks, t.itt)
	close(t.done)
}

// reader handles every PDU of one connection until it fails.
func (s *Session) reader(conn net.Conn, gen int, p params) {
	scratch := make([]byte, 1024)
	var discard []byte
	for {
		var in pdu
		n, err := readHeader(conn, &in, p.headerDigest, scratch)
		if err != nil {
			s.lost(gen, err)
			return
		}
		op := in.opcode()
		s.mu.Lock()
		s.lastRecv, s.pingOut = time.Now(), time.Time{}
		t := s.tasks[in.itt()]
		if t != nil && t.gen != gen {
			t = nil
		}
		s.mu.Unlock()

		if op == opDataIn && t != nil {
			off := int(in.u32(40))
			if off < 0 || off+n > len(t.read) {
				s.lost(gen, fmt.Errorf("iscsi: Data-In of %d bytes at %d outside a %d-byte buffer", n, off, len(t.read)))
				return
			}
			if err := readData(conn, t.read[off:off+n], p.dataDigest); err != nil {
				s.lost(gen, err)
				return
			}
		} else {
			if cap(discard) < n {
				discard = make([]byte, n)
			}
			in.data = discard[:n]
			if err := readData(conn, in.data, p.dataDigest); err != nil {
				s.lost(gen, err)
				return
			}
		}

		s.mu.Lock()
		switch op {
		case opDataIn:
			s.updateSN(&in)
			if in.flags()&0x01 != 0 { // S: phase-collapsed status
				s.statSN(&in)
				if t != nil {
					t.status = in.bhs[3]
					if in.flags()&0x02 != 0 { // U
						t.residual = int(in.u32(44))
					}
					s.complete(t)
				}
			}
		case opSCSIResp:
			s.updateSN(&in)
			s.statSN(&in)
			if t != nil {
				t.response, t.status = in.bhs[2], in.bhs[3]
				if in.flags()&0x02 != 0 {
					t.residual = int(in.u32(44))
				}
				if len(in.data) >= 2 {
					sl := int(binary.BigEndian.Uint16(in.data))
					if sl <= len(in.data)-2 {
						t.sense = append([]byte(nil), in.data[2:2+sl]...)
					}
				}
				s.complete(t)
			}
		case opR2T:
			s.updateSN(&in)
			if t != nil && t.write != nil {
				off, length := int(in.u32(40)), int(in.u32(44))
				if off < 0 || length <= 0 || off+length > len(t.write) {
					s.mu.Unlock()
					s.lost(gen, fmt.Errorf("iscsi: R2T for %d bytes at %d outside a %d-byte write", length, off, len(t.write)))
					return
				}
				s.dataOut(t, in.u32(20), off, length, 0)
			}
		case opNOPIn:
			s.updateSN(&in)
			if in.itt() != reservedTag {
				s.statSN(&in)
			}
			if ttt := in.u32(20); ttt != reservedTag { // the target pings us
				h := header(opNOPOut, true, 0x80)
				copy(h[8:16], in.bhs[8:16])
				put32(h, 16, reservedTag)
				put32(h, 20, ttt)
				put32(h, 24, s.cmdSN)
				put32(h, 28, s.expStatSN)
				s.out.push(s.seal(h, nil))
			}
		case opLogoutResp:
			s.statSN(&in)
			if s.logoutDone != nil {
				close(s.logoutDone)
				s.logoutDone = nil
			}
		case opAsync:
			s.updateSN(&in)
			s.statSN(&in)
			if ev := in.bhs[36]; ev >= 1 && ev <= 3 { // logout requested, connection or session drop
				s.mu.Unlock()
				s.lost(gen, fmt.Errorf("iscsi: target asked to end the connection (event %d)", ev))
				return
			}
		case opReject:
			s.statSN(&in)
			s.mu.Unlock()
			s.lost(gen, fmt.Errorf("iscsi: target rejected a PDU (reason 0x%02x)", in.bhs[2]))
			return
		}
		s.mu.Unlock()
	}
}

// lost handles the failure of connection gen: every in-flight command is
// reissued on a new connection of a reinstated session.
func (s *Session) lost(gen int, cause error) {
	s.mu.Lock()
	if gen != s.gen || s.closed || s.closing || s.recovering {
		s.mu.Unlock()
		return
	}
	s.recovering = true
	s.conn.Close()
	s.out.close()
	var pending []*task
	for itt, t := range s.tasks {
		pending = append(pending, t)
		delete(s.tasks, itt)
	}
	s.mu.Unlock()
	s.log.Warn().Err(cause).Int("in_flight", len(pending)).Msg("iscsi connection lost: reconnecting")
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.recover(pending, cause)
	}()
}

func (s *Session) recover(pending []*task, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ReconnectTimeout)
	defer cancel()
	delay := 100 * time.Millisecond
	for {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			s.failAll(pending, ErrClosed)
			return
		}
		conn, st, err := s.connect(ctx)
		if err == nil {
			s.mu.Lock()
			if s.closed || s.closing {
				s.recovering = false
				s.cond.Broadcast()
				s.mu.Unlock()
				conn.Close()
				s.failAll(pending, ErrClosed)
				return
			}
			s.recovering = false
			s.reconnects++
			s.install(conn, st)
			s.mu.Unlock()
			s.log.Info().Int("reissued", len(pending)).Msg("iscsi session reinstated")
			for _, t := range pending {
				go func() {
					if err := s.submit(t); err != nil {
						t.err = err
						close(t.done)
					}
				}()
			}
			return
		}
		if ctx.Err() != nil || jobs.IsPermanent(err) {
			err = fmt.Errorf("iscsi: connection to %s lost (%v) and not re-established: %w", s.cfg.Target, cause, err)
			s.mu.Lock()
			s.fatal = err
			s.recovering = false
			s.cond.Broadcast()
			s.mu.Unlock()
			s.failAll(pending, err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func (s *Session) failAll(ts []*task, err error) {
	for _, t := range ts {
		t.err = err
		close(t.done)
	}
}

// keepalive pings an idle connection and drops one whose ping goes
// unanswered, so a silent network failure becomes a reconnect.
func (s *Session) keepalive() {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.NOPInterval / 2)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		if s.recovering {
			s.mu.Unlock()
			continue
		}
		now, gen := time.Now(), s.gen
		switch {
		case !s.pingOut.IsZero() && now.Sub(s.pingOut) > s.cfg.NOPInterval:
			s.mu.Unlock()
			s.lost(gen, errors.New("iscsi: NOP ping unanswered"))
			continue
		case s.pingOut.IsZero() && now.Sub(s.lastRecv) > s.cfg.NOPInterval:
			h := header(opNOPOut, true, 0x80)
			encodeLUN(h, s.cfg.LUN)
			put32(h, 16, s.nextITT)
			s.nextITT++
			put32(h, 20, reservedTag)
			put32(h, 24, s.cmdSN)
			put32(h, 28, s.expStatSN)
			s.out.push(s.seal(h, nil))
			s.pingOut = now
		}
		s.mu.Unlock()
	}
}

// Reconnects is how many times the session was reinstated.
func (s *Session) Reconnects() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reconnects
}

// Close logs out (best effort, 5 s) and ends the session. In-flight
// commands fail with ErrClosed.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	var wait chan struct{}
	if !s.recovering && s.fatal == nil {
		wait = make(chan struct{})
		s.logoutDone = wait
		h := header(opLogoutReq, true, 0x80) // close the session
		put32(h, 16, s.nextITT)
		s.nextITT++
		put32(h, 24, s.cmdSN)
		put32(h, 28, s.expStatSN)
		s.out.push(s.seal(h, nil))
	}
	s.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-time.After(5 * time.Second):
		}
	}
	s.mu.Lock()
	s.closed = true
	if s.conn != nil {
		s.conn.Close()
	}
	if s.out != nil {
		s.out.close()
	}
	var pending []*task
	for itt, t := range s.tasks {
		pending = append(pending, t)
		delete(s.tasks, itt)
	}
	s.cond.Broadcast()
	close(s.stop)
	s.mu.Unlock()
	s.failAll(pending, ErrClosed)
	s.wg.Wait()
	return nil
}
