package iscsi

import (
	"encoding/binary"
	"fmt"
	"time"
)

// reader handles every PDU of connection c until it fails. It is the only
// goroutine that completes c's tasks and writes into their read buffers,
// so a task it looked up stays valid while it reads that task's data.
func (s *Session) reader(c *conn) {
	for {
		var in pdu
		n, err := c.rd.header(&in)
		if err == nil {
			err = s.handle(c, &in, n)
		}
		if err != nil {
			s.lost(c, err)
			return
		}
	}
}

// protocolError is a PDU from the target that breaks the protocol: at
// ErrorRecoveryLevel 0 the connection is dropped and the session
// reinstated.
func protocolError(format string, args ...any) error {
	return fmt.Errorf("iscsi: protocol error: "+format, args...)
}

// handle processes one PDU whose header was read; n is its data length.
func (s *Session) handle(c *conn, in *pdu, n int) error {
	if in.opcode() == opDataIn {
		return s.dataIn(c, in, n)
	}
	data, err := c.rd.owned(n)
	if err != nil {
		return err
	}
	in.data = data
	s.mu.Lock()
	defer s.mu.Unlock()
	c.lastRecv = time.Now()
	switch in.opcode() {
	case opSCSIResp:
		s.updateSN(in)
		s.statSN(in.u32(24))
		t := s.taskOn(c, in.itt())
		if t == nil {
			return protocolError("SCSI Response for unknown task 0x%x", in.itt())
		}
		t.response, t.status = in.bhs[2], in.bhs[3]
		s.residual(t, in)
		if len(in.data) >= 2 {
			if sl := int(binary.BigEndian.Uint16(in.data)); sl <= len(in.data)-2 {
				t.sense = append([]byte(nil), in.data[2:2+sl]...)
			}
		}
		s.complete(t)
	case opR2T:
		s.updateSN(in)
		t := s.taskOn(c, in.itt())
		if t == nil || t.write == nil {
			return protocolError("R2T for task 0x%x, which is not a write in flight", in.itt())
		}
		off, length := int(in.u32(40)), int(in.u32(44))
		if off < 0 || length <= 0 || off+length > len(t.write) {
			return protocolError("R2T for %d bytes at %d of a %d-byte write", length, off, len(t.write))
		}
		c.out.dataOut(t, c.path.LUN, in.u32(20), s.expStatSN, off, length, c.p.sendDSL)
	case opNOPIn:
		s.updateSN(in)
		if in.itt() != reservedTag {
			s.statSN(in.u32(24))
			if !c.pingSent.IsZero() && in.itt() == c.pingITT {
				c.pingSent, c.pingITT = time.Time{}, 0
			}
		} else if snLE(s.expStatSN, in.u32(24)) {
			s.expStatSN = in.u32(24) // not advanced: the next StatSN
		}
		if ttt := in.u32(20); ttt != reservedTag { // the target pings us: answer
			var o outPDU
			header(&o.bhs, opNOPOut, true, flagFinal)
			copy(o.bhs[8:16], in.bhs[8:16])
			put32(o.bhs[:], 16, reservedTag)
			put32(o.bhs[:], 20, ttt)
			put32(o.bhs[:], 24, s.cmdSN)
			put32(o.bhs[:], 28, s.expStatSN)
			c.out.push(o)
		}
	case opLogoutResp:
		s.updateSN(in)
		s.statSN(in.u32(24))
		if s.logoutDone != nil {
			close(s.logoutDone)
			s.logoutDone = nil
		}
	case opAsync:
		s.updateSN(in)
		s.statSN(in.u32(24))
		switch ev := in.bhs[36]; ev {
		case 1, 2, 3: // logout requested, connection or session dropped
			return fmt.Errorf("iscsi: the target ends the connection (async event %d)", ev)
		default: // 0: SCSI async event (sense follows), 4: renegotiation, 255: vendor
			s.log.Info().Int("event", int(ev)).Msg("iscsi async message from the target")
		}
	case opReject:
		s.statSN(in.u32(24))
		return fmt.Errorf("iscsi: the target rejected a PDU (reason 0x%02x)", in.bhs[2])
	case opTMFResp, opTextResp:
		s.updateSN(in)
		s.statSN(in.u32(24))
	default:
		return protocolError("unexpected opcode 0x%02x", in.opcode())
	}
	return nil
}

// dataIn places a Data-In PDU's payload at its buffer offset and, with the
// S bit, completes the task (phase-collapsed status).
func (s *Session) dataIn(c *conn, in *pdu, n int) error {
	s.mu.Lock()
	t := s.taskOn(c, in.itt())
	s.mu.Unlock()
	if t == nil || t.read == nil {
		return protocolError("Data-In for task 0x%x, which is not a read in flight", in.itt())
	}
	off := int64(in.u32(40))
	if off+int64(n) > int64(len(t.read)) {
		return protocolError("Data-In of %d bytes at %d of a %d-byte read", n, off, len(t.read))
	}
	if err := c.rd.data(t.read[off : off+int64(n)]); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c.lastRecv = time.Now()
	s.updateSN(in)
	if in.flags()&flagStatus != 0 {
		s.statSN(in.u32(24))
		t.status = in.bhs[3]
		s.residual(t, in)
		s.complete(t)
	}
	return nil
}

// taskOn returns the task in flight on c with tag itt, or nil. s.mu held.
func (s *Session) taskOn(c *conn, itt uint32) *task {
	if t := s.tasks[itt]; t != nil && t.c == c {
		return t
	}
	return nil
}

// residual records a response's residual count. s.mu held.
func (s *Session) residual(t *task, in *pdu) {
	switch {
	case in.flags()&flagUnder != 0:
		t.residual = int(in.u32(44))
	case in.flags()&flagOverflow != 0:
		t.overflow = true
	}
}

// complete finishes the response side of a task. s.mu held.
func (s *Session) complete(t *task) {
	delete(s.tasks, t.itt)
	t.release()
}
