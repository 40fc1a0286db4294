package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// SCSI status codes (SAM-5).
const (
	statusGood                = 0x00
	statusCheckCondition      = 0x02
	statusBusy                = 0x08
	statusReservationConflict = 0x18
	statusTaskSetFull         = 0x28
)

// Sense keys (SPC-4).
const (
	senseNotReady       = 0x2
	senseMediumError    = 0x3
	senseHardwareError  = 0x4
	senseIllegalRequest = 0x5
	senseUnitAttention  = 0x6
	senseDataProtect    = 0x7
	senseAbortedCommand = 0xb
)

// SenseError is a CHECK CONDITION the initiator did not recover from. It is
// wrapped permanent when retrying cannot help (ILLEGAL REQUEST, DATA
// PROTECT).
type SenseError struct {
	Op             string
	Key, ASC, ASCQ byte
}

// Error names the command, the sense key and the additional sense code.
func (e *SenseError) Error() string {
	return fmt.Sprintf("iscsi: %s: CHECK CONDITION, sense key 0x%x (%s), ASC/ASCQ 0x%02x/0x%02x",
		e.Op, e.Key, senseKeyName(e.Key), e.ASC, e.ASCQ)
}

func senseKeyName(k byte) string {
	switch k {
	case senseNotReady:
		return "not ready"
	case senseMediumError:
		return "medium error"
	case senseHardwareError:
		return "hardware error"
	case senseIllegalRequest:
		return "illegal request"
	case senseUnitAttention:
		return "unit attention"
	case senseDataProtect:
		return "data protect"
	case senseAbortedCommand:
		return "aborted command"
	}
	return "other"
}

// parseSense reads fixed (0x70/0x71) and descriptor (0x72/0x73) sense data.
func parseSense(b []byte) (key, asc, ascq byte, ok bool) {
	if len(b) < 1 {
		return 0, 0, 0, false
	}
	switch b[0] & 0x7f {
	case 0x70, 0x71:
		if len(b) >= 14 {
			return b[2] & 0x0f, b[12], b[13], true
		}
	case 0x72, 0x73:
		if len(b) >= 4 {
			return b[1] & 0x0f, b[2], b[3], true
		}
	}
	return 0, 0, 0, false
}

// Retry limits of run: UNIT ATTENTIONs are reported once per condition, so
// a few immediate retries clear them; BUSY and NOT READY get a backoff
// lasting about half a minute in all.
const (
	maxUnitAttentions = 16
	maxBusyRetries    = 30
)

// run executes a command to its end. UNIT ATTENTION is retried at once;
// BUSY, TASK SET FULL, NOT READY (becoming ready) and ABORTED COMMAND with
// backoff; a lost connection below it is handled by reissuing the command
// on the reinstated session. ctx bounds the waits for the CmdSN window and
// the backoffs, and the whole command when it has no data buffer (a data
// buffer must stay untouched by the caller until the target is done).
func (s *Session) run(ctx context.Context, op string, t *task) error {
	delay := 20 * time.Millisecond
	attentions, busy := 0, 0
	for {
		t.done = make(chan struct{})
		if err := s.issue(ctx, t); err != nil {
			return fmt.Errorf("iscsi: %s: %w", op, err)
		}
		if t.read == nil && t.write == nil {
			select {
			case <-t.done:
			case <-ctx.Done():
				return fmt.Errorf("iscsi: %s: %w", op, context.Cause(ctx))
			}
		} else {
			<-t.done
		}
		if t.err != nil {
			return fmt.Errorf("iscsi: %s: %w", op, t.err)
		}
		if t.response != 0 {
			return fmt.Errorf("iscsi: %s: target failure (iSCSI response 0x%02x)", op, t.response)
		}
		switch t.status {
		case statusGood:
			return nil
		case statusBusy, statusTaskSetFull:
		case statusCheckCondition:
			key, asc, ascq, _ := parseSense(t.sense)
			se := &SenseError{Op: op, Key: key, ASC: asc, ASCQ: ascq}
			switch {
			case key == senseUnitAttention:
				// Power on, reset, new session (29h), capacity changed (2Ah/09h).
				attentions++
				if attentions > maxUnitAttentions {
					return se
				}
				continue
			case key == senseNotReady && asc == 0x04, key == senseAbortedCommand:
			case key == senseIllegalRequest, key == senseDataProtect:
				return jobs.Permanent(se)
			default:
				return se
			}
		case statusReservationConflict:
			return fmt.Errorf("iscsi: %s: reservation conflict: another initiator holds the LUN", op)
		default:
			return fmt.Errorf("iscsi: %s: SCSI status 0x%02x", op, t.status)
		}
		busy++
		if busy > maxBusyRetries {
			return fmt.Errorf("iscsi: %s: the target stayed busy through %d tries", op, busy)
		}
		tm := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			tm.Stop()
			return fmt.Errorf("iscsi: %s: %w", op, context.Cause(ctx))
		case <-tm.C:
		}
		delay = min(2*delay, time.Second)
	}
}

func cdb16(op byte, lba uint64, blocks uint32) [16]byte {
	var c [16]byte
	c[0] = op
	binary.BigEndian.PutUint64(c[2:], lba)
	binary.BigEndian.PutUint32(c[10:], blocks)
	return c
}

// TestUnitReady checks that the LUN is ready; on a new session it also
// consumes the target's UNIT ATTENTION.
func (s *Session) TestUnitReady(ctx context.Context) error {
	return s.run(ctx, "TEST UNIT READY", &task{})
}

// ReadCapacity returns the LUN's size in blocks and its logical block size
// (READ CAPACITY(16)).
func (s *Session) ReadCapacity(ctx context.Context) (blocks uint64, blockSize int, err error) {
	t := &task{read: make([]byte, 32)}
	t.cdb[0], t.cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(t.cdb[10:], 32)
	if err := s.run(ctx, "READ CAPACITY(16)", t); err != nil {
		return 0, 0, err
	}
	if len(t.read)-t.residual < 12 {
		return 0, 0, fmt.Errorf("iscsi: READ CAPACITY(16): %d bytes of data", len(t.read)-t.residual)
	}
	blocks = binary.BigEndian.Uint64(t.read) + 1
	blockSize = int(binary.BigEndian.Uint32(t.read[8:]))
	if blockSize < 512 || blockSize > 1<<20 || blockSize&(blockSize-1) != 0 {
		return 0, 0, fmt.Errorf("iscsi: READ CAPACITY(16): unusable block size %d", blockSize)
	}
	return blocks, blockSize, nil
}

// Inquiry returns the standard INQUIRY data's vendor and product.
func (s *Session) Inquiry(ctx context.Context) (vendor, product string, err error) {
	t := &task{read: make([]byte, 96)}
	t.cdb[0] = 0x12
	binary.BigEndian.PutUint16(t.cdb[3:], uint16(len(t.read)))
	if err := s.run(ctx, "INQUIRY", t); err != nil {
		return "", "", err
	}
	if len(t.read)-t.residual < 32 {
		return "", "", fmt.Errorf("iscsi: INQUIRY: %d bytes of data", len(t.read)-t.residual)
	}
	return trimSpace(t.read[8:16]), trimSpace(t.read[16:32]), nil
}

// inquiryVPD returns a vital product data page, or a permanent SenseError
// when the target does not have it.
func (s *Session) inquiryVPD(ctx context.Context, page byte) ([]byte, error) {
	t := &task{read: make([]byte, 255)}
	t.cdb[0], t.cdb[1], t.cdb[2] = 0x12, 0x01, page
	binary.BigEndian.PutUint16(t.cdb[3:], uint16(len(t.read)))
	if err := s.run(ctx, fmt.Sprintf("INQUIRY VPD 0x%02x", page), t); err != nil {
		return nil, err
	}
	b := t.read[:len(t.read)-t.residual]
	if len(b) < 4 || b[1] != page {
		return nil, fmt.Errorf("iscsi: INQUIRY VPD 0x%02x: malformed page", page)
	}
	return b[:min(len(b), 4+int(binary.BigEndian.Uint16(b[2:])))], nil
}

// maxTransferBlocks reads the Block Limits page (SBC-4 §6.6.4): the largest
// READ or WRITE the LUN accepts, in blocks; 0 when it states no limit or
// has no such page.
func (s *Session) maxTransferBlocks(ctx context.Context) (uint32, error) {
	b, err := s.inquiryVPD(ctx, 0xb0)
	var se *SenseError
	if errors.As(err, &se) && se.Key == senseIllegalRequest {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) < 12 {
		return 0, nil
	}
	return binary.BigEndian.Uint32(b[8:]), nil
}

func trimSpace(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	return string(b)
}

// Read16 reads len(p)/blockSize blocks at lba into p (READ(16)).
func (s *Session) Read16(ctx context.Context, p []byte, lba uint64, blockSize int) error {
	t := &task{read: p, cdb: cdb16(0x88, lba, uint32(len(p)/blockSize))}
	if err := s.run(ctx, "READ(16)", t); err != nil {
		return err
	}
	if t.residual != 0 || t.overflow {
		return fmt.Errorf("iscsi: READ(16) at LBA %d: %d of %d bytes transferred", lba, len(p)-t.residual, len(p))
	}
	return nil
}

// Write16 writes p at lba (WRITE(16)).
func (s *Session) Write16(ctx context.Context, p []byte, lba uint64, blockSize int) error {
	t := &task{write: p, cdb: cdb16(0x8a, lba, uint32(len(p)/blockSize))}
	if err := s.run(ctx, "WRITE(16)", t); err != nil {
		return err
	}
	if t.residual != 0 || t.overflow {
		return fmt.Errorf("iscsi: WRITE(16) at LBA %d: %d of %d bytes transferred", lba, len(p)-t.residual, len(p))
	}
	return nil
}

// SyncCache makes every completed write of the LUN durable
// (SYNCHRONIZE CACHE(16) over the whole LUN).
func (s *Session) SyncCache(ctx context.Context) error {
	return s.run(ctx, "SYNCHRONIZE CACHE(16)", &task{cdb: cdb16(0x91, 0, 0)})
}
