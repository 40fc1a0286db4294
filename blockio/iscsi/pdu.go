package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Opcodes (RFC 7143 §11.1.1).
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

// Flag bits of byte 1.
const (
	flagFinal    = 0x80 // F: last PDU of a sequence
	flagContinue = 0x40 // C (login and text): more text follows
	flagTransit  = 0x80 // T (login): move to the next stage
	flagRead     = 0x40 // R (SCSI command)
	flagWrite    = 0x20 // W (SCSI command)
	flagAttrSimp = 0x01 // task attribute SIMPLE
	flagOverflow = 0x04 // O: residual overflow
	flagUnder    = 0x02 // U: residual underflow
	flagStatus   = 0x01 // S (Data-In): status is in this PDU
	opImmediate  = 0x40 // I bit of byte 0
)

const (
	bhsLen      = 48
	reservedTag = 0xffffffff
	// loginMaxData bounds a login or text response's data segment: the
	// target may not exceed 8192 bytes before our MaxRecvDataSegmentLength
	// is declared; a little slack tolerates sloppy targets.
	loginMaxData = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// crc32c is the iSCSI digest (RFC 7143 §13.1); on the wire it is
// little-endian.
func crc32c(parts ...[]byte) uint32 {
	var c uint32
	for _, p := range parts {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// errDigest is a header or data digest mismatch. At ErrorRecoveryLevel 0 the
// connection is dropped and the session reinstated.
var errDigest = errors.New("iscsi: digest mismatch")

// pdu is a received PDU: its basic header segment and, when it was read,
// its data segment.
type pdu struct {
	bhs  [bhsLen]byte
	data []byte
}

func (p *pdu) opcode() byte       { return p.bhs[0] & 0x3f }
func (p *pdu) flags() byte        { return p.bhs[1] }
func (p *pdu) itt() uint32        { return binary.BigEndian.Uint32(p.bhs[16:]) }
func (p *pdu) u32(off int) uint32 { return binary.BigEndian.Uint32(p.bhs[off:]) }
func (p *pdu) dataLen() int       { return dataLen(p.bhs[:]) }
func (p *pdu) ahsLen() int        { return int(p.bhs[4]) * 4 }

func dataLen(bhs []byte) int              { return int(bhs[5])<<16 | int(bhs[6])<<8 | int(bhs[7]) }
func setDataLen(bhs []byte, n int)        { bhs[5], bhs[6], bhs[7] = byte(n>>16), byte(n>>8), byte(n) }
func put32(bhs []byte, off int, v uint32) { binary.BigEndian.PutUint32(bhs[off:], v) }

func pad4(n int) int { return (n + 3) &^ 3 }

// pduReader reads PDUs from a connection: the header first, then the data
// segment straight into its destination (a task's read buffer for Data-In),
// checking digests when they were negotiated.
type pduReader struct {
	r                        *bufio.Reader
	headerDigest, dataDigest bool
	// maxData is the largest data segment accepted: our declared
	// MaxRecvDataSegmentLength (RFC 7143 §13.12).
	maxData int
	ahs     [255 * 4]byte
	scratch []byte
}

func newPDUReader(r io.Reader, maxData int) *pduReader {
	return &pduReader{r: bufio.NewReaderSize(r, 64<<10), maxData: maxData}
}

// header reads a BHS and any AHS (which no PDU we handle needs: it is
// skipped), and checks the header digest. It returns the data segment
// length.
func (r *pduReader) header(p *pdu) (int, error) {
	if _, err := io.ReadFull(r.r, p.bhs[:]); err != nil {
		return 0, err
	}
	ahs := r.ahs[:p.ahsLen()]
	if _, err := io.ReadFull(r.r, ahs); err != nil {
		return 0, err
	}
	if r.headerDigest {
		var d [4]byte
		if _, err := io.ReadFull(r.r, d[:]); err != nil {
			return 0, err
		}
		if binary.LittleEndian.Uint32(d[:]) != crc32c(p.bhs[:], ahs) {
			return 0, fmt.Errorf("%w in a header (opcode 0x%02x)", errDigest, p.opcode())
		}
	}
	n := p.dataLen()
	if n > r.maxData {
		return 0, fmt.Errorf("iscsi: target sent a %d-byte data segment (opcode 0x%02x), more than the %d bytes declared", n, p.opcode(), r.maxData)
	}
	return n, nil
}

// data reads a data segment into dst (its whole length), its padding and
// its digest.
func (r *pduReader) data(dst []byte) error {
	if _, err := io.ReadFull(r.r, dst); err != nil {
		return err
	}
	var tail [8]byte
	padN := pad4(len(dst)) - len(dst)
	extra := padN
	digest := r.dataDigest && len(dst) > 0
	if digest {
		extra += 4
	}
	if extra == 0 {
		return nil
	}
	if _, err := io.ReadFull(r.r, tail[:extra]); err != nil {
		return err
	}
	if digest && binary.LittleEndian.Uint32(tail[padN:]) != crc32c(dst, tail[:padN]) {
		return fmt.Errorf("%w in a data segment", errDigest)
	}
	return nil
}

// owned reads a data segment of n bytes into the reader's scratch buffer,
// valid until the next call.
func (r *pduReader) owned(n int) ([]byte, error) {
	if cap(r.scratch) < n {
		r.scratch = make([]byte, n)
	}
	b := r.scratch[:n]
	return b, r.data(b)
}

// read reads one whole PDU, its data into the scratch buffer.
func (r *pduReader) read(p *pdu) error {
	n, err := r.header(p)
	if err != nil {
		return err
	}
	p.data, err = r.owned(n)
	return err
}

// header builds the BHS of an outgoing PDU.
func header(bhs *[bhsLen]byte, op byte, immediate bool, flags byte) {
	*bhs = [bhsLen]byte{}
	bhs[0] = op
	if immediate {
		bhs[0] |= opImmediate
	}
	bhs[1] = flags
}

// encodeLUN writes a LUN in SAM's single-level format: peripheral
// addressing below 256, flat addressing up to 16383.
func encodeLUN(bhs []byte, lun int) {
	if lun < 256 {
		bhs[8], bhs[9] = 0, byte(lun)
	} else {
		bhs[8], bhs[9] = 0x40|byte(lun>>8), byte(lun)
	}
}

// encodePDU appends a whole PDU (with digests if asked) to dst: the login
// path and the tests use it; the full feature phase writes with writev.
func encodePDU(dst []byte, bhs *[bhsLen]byte, data []byte, headerDigest, dataDigest bool) []byte {
	setDataLen(bhs[:], len(data))
	dst = append(dst, bhs[:]...)
	if headerDigest {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(bhs[:]))
	}
	dst = append(dst, data...)
	pad := zeros[:pad4(len(data))-len(data)]
	dst = append(dst, pad...)
	if dataDigest && len(data) > 0 {
		dst = binary.LittleEndian.AppendUint32(dst, crc32c(data, pad))
	}
	return dst
}

var zeros [4]byte
