package iscsi

import (
	"encoding/binary"
	"net"
	"sync"
)

// outPDU is an outgoing PDU. data points into the caller's buffer (nothing
// is copied); t, when set, is the task that buffer belongs to, released
// once the bytes are in the kernel (or dropped with the connection).
type outPDU struct {
	bhs  [bhsLen]byte
	data []byte
	t    *task
}

// sendQueue is an unbounded queue drained by one writer goroutine, which
// sends everything queued so far with one writev. Pushing never blocks, so
// the reader can queue R2T answers and NOP replies without deadlocking
// against a target that waits for us to read. Memory stays bounded by the
// CmdSN window: every queued PDU belongs to a command in flight or answers
// one.
type sendQueue struct {
	nc           net.Conn
	headerDigest bool
	dataDigest   bool

	mu     sync.Mutex
	cond   *sync.Cond
	q      []outPDU
	closed bool
}

func newSendQueue(nc net.Conn, p params) *sendQueue {
	s := &sendQueue{nc: nc, headerDigest: p.headerDigest, dataDigest: p.dataDigest}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// push queues PDUs; on a closed queue they are dropped (and their tasks
// released) at once.
func (s *sendQueue) push(ps ...outPDU) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		releaseAll(ps)
		return
	}
	s.q = append(s.q, ps...)
	s.mu.Unlock()
	s.cond.Signal()
}

// dataOut queues the Data-Out PDUs of t's bytes [off, off+n): one sequence
// (unsolicited, or answering the R2T whose transfer tag is ttt), DataSN
// from 0, F on the last, each at most maxSeg bytes.
func (s *sendQueue) dataOut(t *task, lun int, ttt, expStatSN uint32, off, n, maxSeg int) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	var sn uint32
	end := off + n
	for o := off; o < end; o += maxSeg {
		m := min(maxSeg, end-o)
		s.q = append(s.q, outPDU{data: t.write[o : o+m], t: t})
		p := &s.q[len(s.q)-1]
		header(&p.bhs, opDataOut, false, 0)
		if o+m == end {
			p.bhs[1] = flagFinal
		}
		encodeLUN(p.bhs[:], lun)
		put32(p.bhs[:], 16, t.itt)
		put32(p.bhs[:], 20, ttt)
		put32(p.bhs[:], 28, expStatSN)
		put32(p.bhs[:], 36, sn)
		put32(p.bhs[:], 40, uint32(o))
		setDataLen(p.bhs[:], m)
		t.pending.Add(1)
		sn++
	}
	s.mu.Unlock()
	s.cond.Signal()
}

// close stops the writer; what is still queued is dropped.
func (s *sendQueue) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cond.Broadcast()
}

func releaseAll(ps []outPDU) {
	for i := range ps {
		if ps[i].t != nil {
			ps[i].t.release()
		}
	}
}

// run is the writer goroutine. On a write error it closes the connection
// (the reader then fails and the session recovers) and drops the rest.
func (s *sendQueue) run() {
	var batch []outPDU
	var bufs net.Buffers
	var trailers []byte
	for {
		s.mu.Lock()
		for len(s.q) == 0 && !s.closed {
			s.cond.Wait()
		}
		if s.closed {
			rest := s.q
			s.q = nil
			s.mu.Unlock()
			releaseAll(rest)
			return
		}
		batch, s.q = s.q, batch[:0]
		s.mu.Unlock()

		// Digests and padding go in one trailer buffer, sized up front so
		// that the iovecs pointing into it stay valid.
		if need := 12 * len(batch); cap(trailers) < need {
			trailers = make([]byte, 0, need)
		}
		trailers = trailers[:0]
		bufs = bufs[:0]
		for i := range batch {
			p := &batch[i]
			setDataLen(p.bhs[:], len(p.data))
			bufs = append(bufs, p.bhs[:])
			if s.headerDigest {
				at := len(trailers)
				trailers = binary.LittleEndian.AppendUint32(trailers, crc32c(p.bhs[:]))
				bufs = append(bufs, trailers[at:])
			}
			if len(p.data) == 0 {
				continue
			}
			bufs = append(bufs, p.data)
			at := len(trailers)
			pad := zeros[:pad4(len(p.data))-len(p.data)]
			trailers = append(trailers, pad...)
			if s.dataDigest {
				trailers = binary.LittleEndian.AppendUint32(trailers, crc32c(p.data, pad))
			}
			if len(trailers) > at {
				bufs = append(bufs, trailers[at:])
			}
		}
		w := bufs // WriteTo consumes its receiver
		_, err := w.WriteTo(s.nc)
		releaseAll(batch)
		clear(batch)
		clear(bufs[:cap(bufs)])
		if err != nil {
			s.nc.Close()
			s.close()
		}
	}
}
