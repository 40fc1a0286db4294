package iscsi

import (
	"net"
	"sync"
)

// outPDU is an outgoing PDU: header (with digest), data, padding, digest.
// data points into the caller's buffer: nothing is copied.
type outPDU struct {
	hdr, data, digest []byte
	pad               int
}

// sendQueue is an unbounded queue drained by one writer goroutine, which
// sends everything queued so far in one writev. Pushing never blocks, so
// the reader can queue R2T answers without deadlocking against a target
// that waits for us to read.
type sendQueue struct {
	conn   net.Conn
	mu     sync.Mutex
	cond   *sync.Cond
	q      []outPDU
	closed bool
}

func newSendQueue(c net.Conn) *sendQueue {
	s := &sendQueue{conn: c}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *sendQueue) push(p outPDU) {
	s.mu.Lock()
	s.q = append(s.q, p)
	s.mu.Unlock()
	s.cond.Signal()
}

func (s *sendQueue) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
}

func (s *sendQueue) run() {
	var batch []outPDU
	bufs := make(net.Buffers, 0, 1024)
	for {
		s.mu.Lock()
		for len(s.q) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			s.mu.Unlock()
			return
		}
		batch, s.q = s.q, batch[:0]
		s.mu.Unlock()
		bufs = bufs[:0]
		for _, p := range batch {
			bufs = append(bufs, p.hdr)
			if len(p.data) > 0 {
				bufs = append(bufs, p.data)
			}
			if p.pad > 0 {
				bufs = append(bufs, zeros[:p.pad])
			}
			if p.digest != nil {
				bufs = append(bufs, p.digest)
			}
		}
		w := bufs // WriteTo consumes its receiver
		if _, err := w.WriteTo(s.conn); err != nil {
			s.conn.Close() // the reader sees it and recovers
			return
		}
		clear(batch)
	}
}
