package iscsi

import (
	"bytes"
	"context"
	"io"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// FuzzParseText feeds arbitrary login/text segments to the key=value
// parsers; whatever parses must survive an encode/parse round trip.
func FuzzParseText(f *testing.F) {
	f.Add([]byte("HeaderDigest=None\x00InitialR2T=No\x00FirstBurstLength=Reject\x00FirstBurstLength=262144\x00"))
	f.Add([]byte("CHAP_A=5\x00CHAP_I=1\x00CHAP_C=0x0123456789abcdef\x00"))
	f.Add([]byte("TargetName=iqn.2026-11.x:a\x00TargetAddress=127.0.0.1:3260,1\x00TargetName=iqn.b\x00TargetAddress=[::1]:3260,1"))
	f.Add([]byte("=\x00a\x00\x00\x00b=c=d"))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := parseTextList(b)
		m, merr := parseText(b)
		if (err == nil) != (merr == nil) {
			t.Fatalf("parseTextList: %v, parseText: %v", err, merr)
		}
		if err != nil {
			return
		}
		again, err := parseTextList(textKV(list).encode())
		if err != nil {
			t.Fatalf("re-parse of an encoded list: %v", err)
		}
		if len(list) != len(again) || (len(list) > 0 && !reflect.DeepEqual(list, again)) {
			t.Fatalf("round trip: %q became %q", list, again)
		}
		for _, p := range list {
			if _, ok := m[p.k]; !ok {
				t.Fatalf("key %q missing from the map", p.k)
			}
		}
	})
}

// FuzzReadPDU feeds arbitrary bytes to the PDU reader, with and without
// digests; every PDU it accepts must survive an encode/read round trip.
func FuzzReadPDU(f *testing.F) {
	var h [bhsLen]byte
	header(&h, opSCSIResp, false, flagFinal)
	f.Add(encodePDU(nil, &h, []byte{0, 18, 0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0}, false, false), false)
	header(&h, opDataIn, false, flagFinal|flagStatus)
	f.Add(encodePDU(nil, &h, []byte("some data"), true, true), true)
	h[4] = 2 // AHS
	f.Add(append(append([]byte(nil), h[:]...), make([]byte, 8)...), false)
	f.Fuzz(func(t *testing.T, b []byte, digests bool) {
		r := newPDUReader(bytes.NewReader(b), 64<<10)
		r.headerDigest, r.dataDigest = digests, digests
		for {
			var p pdu
			if err := r.read(&p); err != nil {
				return
			}
			if p.ahsLen() > 0 {
				continue // AHS are skipped: the round trip would differ
			}
			enc := encodePDU(nil, &p.bhs, p.data, digests, digests)
			r2 := newPDUReader(bytes.NewReader(enc), 64<<10)
			r2.headerDigest, r2.dataDigest = digests, digests
			var q pdu
			if err := r2.read(&q); err != nil {
				t.Fatalf("re-read of an encoded PDU: %v", err)
			}
			if q.bhs != p.bhs || !bytes.Equal(q.data, p.data) {
				t.Fatal("round trip changed the PDU")
			}
		}
	})
}

// FuzzLogin plays a target that answers the initiator's login requests with
// arbitrary bytes: the login must end (error or not) without a panic or a
// hang.
func FuzzLogin(f *testing.F) {
	resp := func(flags byte, status uint16, text string) []byte {
		var h [bhsLen]byte
		header(&h, opLoginResp, false, flags)
		h[36], h[37] = byte(status>>8), byte(status)
		put32(h[:], 32, 128)
		return encodePDU(nil, &h, []byte(text), false, false)
	}
	f.Add(append(resp(0x81, 0, "AuthMethod=None\x00"), resp(0x87, 0, "HeaderDigest=None\x00MaxBurstLength=262144\x00")...))
	f.Add(resp(0x00, 0, "AuthMethod=CHAP\x00"))
	f.Add(append(resp(0x00, 0, "AuthMethod=CHAP\x00"), resp(0x00, 0, "CHAP_A=5\x00CHAP_I=7\x00CHAP_C=0xdeadbeef\x00")...))
	f.Add(resp(0x00, 0x0101, "TargetAddress=10.0.0.1:3260,1\x00"))
	f.Add(resp(0x00, 0x0201, ""))
	f.Add(append(resp(0x40, 0, "AuthMethod=No"), resp(0x81, 0, "ne\x00")...))
	f.Fuzz(func(t *testing.T, b []byte) {
		ini, tgt := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			go io.Copy(io.Discard, tgt)
			tgt.Write(b)
			tgt.Close()
		}()
		cfg := Config{InitiatorName: "iqn.2026-11.x:i", LoginTimeout: time.Second,
			Auth: Auth{User: "u", Secret: "s", TargetUser: "t", TargetSecret: "ts"}}
		cfg.defaults()
		newLogin(ini, &cfg, "iqn.2026-11.x:t", newISID()).run(context.Background())
		ini.Close()
		<-done
	})
}

// FuzzTargetPDUs feeds arbitrary PDUs to the full feature phase with a read
// and a write in flight: R2T, Data-In offsets, sense data and sequence
// numbers from the target must never panic or complete a task twice.
func FuzzTargetPDUs(f *testing.F) {
	mk := func(op, flags byte, itt, off, length uint32, data []byte) []byte {
		var h [bhsLen]byte
		header(&h, op, false, flags)
		put32(h[:], 16, itt)
		put32(h[:], 28, 2)
		put32(h[:], 32, 200)
		put32(h[:], 40, off)
		put32(h[:], 44, length)
		return encodePDU(nil, &h, data, false, false)
	}
	f.Add(bytes.Join([][]byte{
		mk(opDataIn, 0, 1, 0, 0, make([]byte, 512)),
		mk(opDataIn, flagFinal|flagStatus, 1, 512, 0, make([]byte, 512)),
		mk(opR2T, flagFinal, 2, 512, 1024, nil),
		mk(opSCSIResp, flagFinal, 2, 0, 0, []byte{0, 18, 0x70, 0, 6, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0, 0, 0, 0, 0}),
	}, nil))
	f.Add(mk(opNOPIn, flagFinal, reservedTag, 0, 0, nil))
	f.Add(mk(opAsync, flagFinal, reservedTag, 0, 0, nil))
	f.Add(mk(opReject, flagFinal, reservedTag, 0, 0, make([]byte, 48)))
	f.Fuzz(func(t *testing.T, b []byte) {
		ini, far := net.Pipe()
		defer ini.Close()
		go io.Copy(io.Discard, far)
		s := &Session{tasks: map[uint32]*task{}, nextITT: 1, changed: make(chan struct{}), log: zerolog.Nop(),
			cfg: Config{Paths: []Path{{Portal: "x", Target: "y", LUN: 1}}}}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		defer s.cancel()
		p := params{sendDSL: 8192, recvDSL: 64 << 10, maxBurst: 262144, firstBurst: 65536, initialR2T: true, immediateData: true}
		c := &conn{nc: ini, p: p, rd: newPDUReader(bytes.NewReader(b), p.recvDSL), out: newSendQueue(ini, p), done: make(chan struct{})}
		s.conn, s.maxCmdSN = c, 100
		rd := &task{read: make([]byte, 1024), done: make(chan struct{})}
		wr := &task{write: make([]byte, 4096), done: make(chan struct{})}
		s.mu.Lock()
		s.send(rd)
		s.send(wr)
		s.mu.Unlock()
		for {
			var in pdu
			n, err := c.rd.header(&in)
			if err == nil {
				err = s.handle(c, &in, n)
			}
			if err != nil {
				break
			}
		}
		// The writer never ran: drop what it would have sent, then the
		// tasks still waiting for a response hold exactly one reference.
		c.out.close()
		c.out.mu.Lock()
		releaseAll(c.out.q)
		c.out.mu.Unlock()
		for _, tk := range []*task{rd, wr} {
			if n := tk.pending.Load(); n < 0 || n > 1 {
				t.Fatalf("task holds %d references", n)
			}
		}
	})
}
