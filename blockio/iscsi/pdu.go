package iscsi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes (RFC 7143 §11).
const (
	opNOPOut     = 0x00
	opSCSICmd    = 0x01
	opTMFReq     = 0x02
	opLoginReq   = 0x03
	opTextReq    = 0x04
	opDataOut    = 0x05
	opLogoutReq  = 0x06
	opNOPIn      = 0x20
	opSCSIResp   = 0x21
	opTMFResp    = 0x22
	opLoginResp  = 0x23
	opTextResp   = 0x24
	opDataIn     = 0x25
	opLogoutResp = 0x26
	opR2T        = 0x31
	opAsync      = 0x32
	opReject     = 0x3f
)

const (
	bhsLen      = 48
	reservedTag = 0xffffffff
	// maxDataSegment bounds what we accept from a target in one PDU.
	maxDataSegment = 16 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the iSCSI digest; on the wire it is little-endian.
func crc32c(parts ...[]byte) uint32 {
	var c uint32
	for _, p := range parts {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// pdu is a received PDU: its basic header segment and data segment.
type pdu struct {
	bhs  [bhsLen]byte
	data []byte
}

func (p *pdu) opcode() byte          { return p.bhs[0] & 0x3f }
func (p *pdu) flags() byte           { return p.bhs[1] }
func (p *pdu) itt() uint32           { return binary.BigEndian.Uint32(p.bhs[16:]) }
func (p *pdu) u32(off int) uint32    { return binary.BigEndian.Uint32(p.bhs[off:]) }
func (p *pdu) dataLen() int          { return int(p.bhs[5])<<16 | int(p.bhs[6])<<8 | int(p.bhs[7]) }
func (p *pdu) ahsLen() int           { return int(p.bhs[4]) * 4 }
func setDataLen(bhs []byte, n int)   { bhs[5], bhs[6], bhs[7] = byte(n>>16), byte(n>>8), byte(n) }
func put32(bhs []byte, off int, v uint32) { binary.BigEndian.PutUint32(bhs[off:], v) }

func pad4(n int) int { return (n + 3) &^ 3 }

// errDigest is a header or data digest mismatch: the connection is dropped.
var errDigest = errors.New("iscsi: digest mismatch")

// readHeader reads a BHS (and skips any AHS), checking the header digest.
// It returns the data segment length.
func readHeader(r io.Reader, p *pdu, headerDigest bool, scratch []byte) (int, error) {
	if _, err := io.ReadFull(r, p.bhs[:]); err != nil {
		return 0, err
	}
	ahs := p.ahsLen()
	if ahs > 0 {
		if ahs > len(scratch) {
			return 0, fmt.Errorf("iscsi: AHS of %d bytes", ahs)
		}
		if _, err := io.ReadFull(r, scratch[:ahs]); err != nil {
			return 0, err
		}
	}
	if headerDigest {
		var d [4]byte
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return 0, err
		}
		if binary.LittleEndian.Uint32(d[:]) != crc32c(p.bhs[:], scratch[:ahs]) {
			return 0, errDigest
		}
	}
	n := p.dataLen()
	if n > maxDataSegment {
		return 0, fmt.Errorf("iscsi: data segment of %d bytes", n)
	}
	return n, nil
}

// readData reads a data segment of n bytes into dst (len n), its padding,
// and its digest.
func readData(r io.Reader, dst []byte, dataDigest bool) error {
	if _, err := io.ReadFull(r, dst); err != nil {
		return err
	}
	var tail [8]byte
	padN := pad4(len(dst)) - len(dst)
	extra := padN
	if dataDigest && len(dst) > 0 {
		extra += 4
	}
	if extra == 0 {
		return nil
	}
	if _, err := io.ReadFull(r, tail[:extra]); err != nil {
		return err
	}
	if dataDigest && len(dst) > 0 {
		if binary.LittleEndian.Uint32(tail[padN:]) != crc32c(dst, tail[:padN]) {
			return errDigest
		}
	}
	return nil
}

// decodePDU parses one whole PDU from b (no digests), for the fuzz target
// and the login path. It returns the bytes consumed.
func decodePDU(b []byte) (*pdu, int, error) {
	if len(b) < bhsLen {
		return nil, 0, io.ErrUnexpectedEOF
	}
	p := &pdu{}
	copy(p.bhs[:], b)
	n := bhsLen + p.ahsLen()
	dl := p.dataLen()
	if dl > maxDataSegment {
		return nil, 0, fmt.Errorf("iscsi: data segment of %d bytes", dl)
	}
	end := n + pad4(dl)
	if len(b) < end {
		return nil, 0, io.ErrUnexpectedEOF
	}
	p.data = b[n : n+dl]
	return p, end, nil
}

// header builds a BHS for an outgoing PDU.
func header(op byte, immediate bool, flags byte) []byte {
	h := make([]byte, bhsLen)
	h[0] = op
	if immediate {
		h[0] |= 0x40
	}
	h[1] = flags
	return h
}

// encodeLUN is the SAM single-level LUN format.
func encodeLUN(bhs []byte, lun int) {
	if lun < 256 {
		bhs[8], bhs[9] = 0, byte(lun)
	} else {
		bhs[8], bhs[9] = 0x40|byte(lun>>8), byte(lun)
	}
}
