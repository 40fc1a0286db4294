package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// SCSI status codes.
const (
	statusGood           = 0x00
	statusCheckCondition = 0x02
	statusBusy           = 0x08
	statusTaskSetFull    = 0x28
)

// SenseError is a CHECK CONDITION the initiator did not recover from.
type SenseError struct {
	Key, ASC, ASCQ byte
	Op             string
}

func (e *SenseError) Error() string {
	return fmt.Sprintf("iscsi: %s: CHECK CONDITION sense key 0x%x ASC/ASCQ 0x%02x/0x%02x", e.Op, e.Key, e.ASC, e.ASCQ)
}

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

// run executes a command to its end: UNIT ATTENTION is retried at once,
// NOT READY, BUSY and TASK SET FULL with backoff; a lost connection is
// handled below (the command is reissued on the reinstated session).
func (s *Session) run(ctx context.Context, op string, t *task) error {
	delay := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		t.done = make(chan struct{})
		if err := s.submit(t); err != nil {
			return fmt.Errorf("iscsi: %s: %w", op, err)
		}
		<-t.done
		if t.err != nil {
			return fmt.Errorf("iscsi: %s: %w", op, t.err)
		}
		if t.response != 0 {
			return fmt.Errorf("iscsi: %s: target failure (response 0x%02x)", op, t.response)
		}
		retry := false
		switch t.status {
		case statusGood:
			return nil
		case statusBusy, statusTaskSetFull:
			retry = true
		case statusCheckCondition:
			key, asc, ascq, _ := parseSense(t.sense)
			switch {
			case key == 0x6: // UNIT ATTENTION: power on, reset, capacity changed, …
				if attempt < 10 {
					continue
				}
			case key == 0x2 && asc == 0x04: // NOT READY, becoming ready
				retry = true
			case key == 0x5: // ILLEGAL REQUEST
				return jobs.Permanent(&SenseError{Key: key, ASC: asc, ASCQ: ascq, Op: op})
			}
			if !retry {
				return &SenseError{Key: key, ASC: asc, ASCQ: ascq, Op: op}
			}
		default:
			return fmt.Errorf("iscsi: %s: SCSI status 0x%02x", op, t.status)
		}
		if attempt > 30 {
			return fmt.Errorf("iscsi: %s: target still busy after %d tries", op, attempt)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
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

// TestUnitReady clears the UNIT ATTENTION of a new session.
func (s *Session) TestUnitReady(ctx context.Context) error {
	return s.run(ctx, "TEST UNIT READY", &task{})
}

// ReadCapacity returns the LUN's size in blocks and its block size.
func (s *Session) ReadCapacity(ctx context.Context) (blocks uint64, blockSize int, err error) {
	buf := make([]byte, 32)
	t := &task{read: buf, edtl: 32}
	t.cdb[0], t.cdb[1] = 0x9e, 0x10
	binary.BigEndian.PutUint32(t.cdb[10:], 32)
	if err := s.run(ctx, "READ CAPACITY(16)", t); err != nil {
		return 0, 0, err
	}
	blocks = binary.BigEndian.Uint64(buf) + 1
	blockSize = int(binary.BigEndian.Uint32(buf[8:]))
	if blockSize <= 0 || blockSize > 1<<20 || blockSize&(blockSize-1) != 0 {
		return 0, 0, fmt.Errorf("iscsi: unusable block size %d", blockSize)
	}
	return blocks, blockSize, nil
}

// Inquiry returns the standard INQUIRY vendor and product.
func (s *Session) Inquiry(ctx context.Context) (vendor, product string, err error) {
	buf := make([]byte, 96)
	t := &task{read: buf, edtl: len(buf)}
	t.cdb[0] = 0x12
	binary.BigEndian.PutUint16(t.cdb[3:], uint16(len(buf)))
	if err := s.run(ctx, "INQUIRY", t); err != nil {
		return "", "", err
	}
	return trimSpace(buf[8:16]), trimSpace(buf[16:32]), nil
}

func trimSpace(b []byte) string {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == 0) {
		b = b[:len(b)-1]
	}
	return string(b)
}

// Read16 reads len(p)/blockSize blocks at lba into p.
func (s *Session) Read16(ctx context.Context, p []byte, lba uint64, blockSize int) error {
	t := &task{read: p, edtl: len(p), cdb: cdb16(0x88, lba, uint32(len(p)/blockSize))}
	if err := s.run(ctx, "READ(16)", t); err != nil {
		return err
	}
	if t.residual != 0 {
		return fmt.Errorf("iscsi: READ(16) at LBA %d: %d bytes short", lba, t.residual)
	}
	return nil
}

// Write16 writes p at lba.
func (s *Session) Write16(ctx context.Context, p []byte, lba uint64, blockSize int) error {
	t := &task{write: p, edtl: len(p), cdb: cdb16(0x8a, lba, uint32(len(p)/blockSize))}
	if err := s.run(ctx, "WRITE(16)", t); err != nil {
		return err
	}
	if t.residual != 0 {
		return fmt.Errorf("iscsi: WRITE(16) at LBA %d: %d bytes not written", lba, t.residual)
	}
	return nil
}

// SyncCache makes the whole LUN's writes durable.
func (s *Session) SyncCache(ctx context.Context) error {
	return s.run(ctx, "SYNCHRONIZE CACHE(16)", &task{cdb: cdb16(0x91, 0, 0)})
}

var errUnaligned = errors.New("iscsi: I/O not aligned to the block size")
