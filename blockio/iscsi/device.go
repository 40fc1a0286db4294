package iscsi

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cinderport/cinderport/jobs"
)

// maxTransfer bounds one READ/WRITE command.
const maxTransfer = 1 << 20

// Device is a LUN as a jobs.Device. It is safe for concurrent use: each
// ReadAt/WriteAt becomes one or more commands in flight together.
type Device struct {
	s         *Session
	blockSize int
	size      atomic.Int64
	readOnly  bool
}

var (
	_ jobs.Device    = (*Device)(nil)
	_ jobs.Refresher = (*Device)(nil)
)

// Open dials the target and prepares the LUN: the first TEST UNIT READY
// absorbs the new session's UNIT ATTENTION, READ CAPACITY sizes it.
func Open(ctx context.Context, cfg Config, readOnly bool) (*Device, error) {
	s, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d := &Device{s: s, readOnly: readOnly}
	if err := s.TestUnitReady(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if err := d.Refresh(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return d, nil
}

// Session is the device's iSCSI session.
func (d *Device) Session() *Session { return d.s }

// Refresh re-reads the capacity (after an online extend).
func (d *Device) Refresh(ctx context.Context) error {
	blocks, bs, err := d.s.ReadCapacity(ctx)
	if err != nil {
		return err
	}
	d.blockSize = bs
	d.size.Store(int64(blocks) * int64(bs))
	return nil
}

// Size implements jobs.Device.
func (d *Device) Size() int64 { return d.size.Load() }

// BlockSize implements jobs.Device.
func (d *Device) BlockSize() int { return d.blockSize }

func (d *Device) each(p []byte, off int64, write bool) (int, error) {
	bs := int64(d.blockSize)
	if off%bs != 0 || int64(len(p))%bs != 0 {
		return 0, errUnaligned
	}
	if off < 0 || off+int64(len(p)) > d.Size() {
		return 0, fmt.Errorf("iscsi: %d bytes at %d: past the end of the LUN (%d bytes)", len(p), off, d.Size())
	}
	if write && d.readOnly {
		return 0, jobs.Permanentf("iscsi: write to a read-only attachment")
	}
	ctx := context.Background()
	if len(p) <= maxTransfer {
		return len(p), d.io(ctx, p, off, write)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for o := 0; o < len(p); o += maxTransfer {
		chunk := p[o:min(o+maxTransfer, len(p))]
		wg.Add(1)
		go func(at int64) {
			defer wg.Done()
			if err := d.io(ctx, chunk, at, write); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}(off + int64(o))
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return len(p), nil
}

func (d *Device) io(ctx context.Context, p []byte, off int64, write bool) error {
	lba := uint64(off / int64(d.blockSize))
	if write {
		return d.s.Write16(ctx, p, lba, d.blockSize)
	}
	return d.s.Read16(ctx, p, lba, d.blockSize)
}

// ReadAt implements io.ReaderAt.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.each(p, off, false) }

// WriteAt implements io.WriterAt.
func (d *Device) WriteAt(p []byte, off int64) (int, error) { return d.each(p, off, true) }

// Flush implements jobs.Device: SYNCHRONIZE CACHE(16).
func (d *Device) Flush(ctx context.Context) error {
	if d.readOnly {
		return nil
	}
	return d.s.SyncCache(ctx)
}

// Close logs out.
func (d *Device) Close() error { return d.s.Close() }
