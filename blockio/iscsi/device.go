package iscsi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cinderport/cinderport/jobs"
)

// maxReadTransfer bounds one READ(16) of a Device: a larger ReadAt becomes
// several commands in flight together.
const maxReadTransfer = 1 << 20

// writeTransfer is the size of a Device's WRITE(16) commands, from the
// negotiated parameters: what the target takes without asking (immediate
// and unsolicited data) plus at most one R2T burst. tgtd answers each
// burst with a new R2T only after the previous one arrived, and looks every
// Data-Out up in its list of the session's commands: commands needing one
// R2T at most, few of them in flight, keep it fastest (measured: 264 KiB
// commands 8 deep run 1.5x faster than 1 MiB commands, and 32 deep halves
// that).
func writeTransfer(p params) int {
	unsolicited := 0
	if p.immediateData {
		unsolicited = min(p.firstBurst, p.sendDSL)
	}
	if !p.initialR2T {
		unsolicited = p.firstBurst
		if unsolicited >= 128<<10 {
			return min(unsolicited, maxWriteTransfer)
		}
	}
	return min(unsolicited+p.maxBurst, maxWriteTransfer)
}

// maxWriteTransfer caps writeTransfer for targets with huge bursts.
const maxWriteTransfer = 4 << 20

// ErrUnaligned is returned for I/O whose offset or length is not a
// multiple of the block size.
var ErrUnaligned = errors.New("iscsi: I/O not aligned to the block size")

// Device is a LUN as a jobs.Device. It is safe for concurrent use: every
// ReadAt and WriteAt becomes one or more commands, pipelined in the
// session's CmdSN window with those of other callers.
type Device struct {
	s             *Session
	blockSize     int
	readTransfer  int
	writeTransfer int
	readOnly      bool
	slots         chan struct{} // a token per command in flight
	size          atomic.Int64
}

var (
	_ jobs.Device    = (*Device)(nil)
	_ jobs.Refresher = (*Device)(nil)
)

// Open logs in and prepares the LUN: TEST UNIT READY absorbs the new
// session's UNIT ATTENTION, READ CAPACITY(16) sizes it, the Block Limits
// page caps the transfer size. readOnly refuses writes locally.
func Open(ctx context.Context, cfg Config, readOnly bool) (*Device, error) {
	s, err := Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d, err := open(ctx, s, readOnly)
	if err != nil {
		s.Close()
		return nil, err
	}
	return d, nil
}

func open(ctx context.Context, s *Session, readOnly bool) (*Device, error) {
	if err := s.TestUnitReady(ctx); err != nil {
		return nil, err
	}
	blocks, bs, err := s.ReadCapacity(ctx)
	if err != nil {
		return nil, err
	}
	limit, err := s.maxTransferBlocks(ctx)
	if err != nil {
		return nil, err
	}
	d := &Device{s: s, blockSize: bs, readOnly: readOnly, slots: make(chan struct{}, s.cfg.QueueDepth)}
	round := func(n int) int {
		if limit > 0 {
			n = int(min(int64(n), int64(limit)*int64(bs)))
		}
		return max(n/bs*bs, bs)
	}
	d.readTransfer = round(maxReadTransfer)
	d.writeTransfer = round(writeTransfer(s.negotiated()))
	d.size.Store(int64(blocks) * int64(bs))
	return d, nil
}

// Session is the device's iSCSI session.
func (d *Device) Session() *Session { return d.s }

// Refresh re-reads the capacity (after an online extend). A changed block
// size is an error: nothing written so far would line up.
func (d *Device) Refresh(ctx context.Context) error {
	blocks, bs, err := d.s.ReadCapacity(ctx)
	if err != nil {
		return err
	}
	if bs != d.blockSize {
		return jobs.Permanentf("iscsi: block size changed from %d to %d", d.blockSize, bs)
	}
	d.size.Store(int64(blocks) * int64(bs))
	return nil
}

// Size implements jobs.Device: the capacity as of Open or the last Refresh.
func (d *Device) Size() int64 { return d.size.Load() }

// BlockSize implements jobs.Device.
func (d *Device) BlockSize() int { return d.blockSize }

// ReadAt implements io.ReaderAt with READ(16) commands. It fails with
// ErrUnaligned for unaligned I/O.
func (d *Device) ReadAt(p []byte, off int64) (int, error) { return d.rw(p, off, false) }

// WriteAt implements io.WriterAt with WRITE(16) commands. It fails with
// ErrUnaligned for unaligned I/O, permanently on a read-only device.
func (d *Device) WriteAt(p []byte, off int64) (int, error) { return d.rw(p, off, true) }

func (d *Device) rw(p []byte, off int64, write bool) (int, error) {
	bs := int64(d.blockSize)
	if off%bs != 0 || int64(len(p))%bs != 0 {
		return 0, ErrUnaligned
	}
	if off < 0 || off+int64(len(p)) > d.Size() {
		return 0, fmt.Errorf("iscsi: %d bytes at %d: past the end of the LUN (%d bytes)", len(p), off, d.Size())
	}
	if write && d.readOnly {
		return 0, jobs.Permanentf("iscsi: write to a read-only attachment")
	}
	chunk := d.readTransfer
	if write {
		chunk = d.writeTransfer
	}
	if len(p) <= chunk {
		return len(p), d.io(p, off, write)
	}
	// Split into commands, QueueDepth of them in flight.
	n := (len(p) + chunk - 1) / chunk
	next := make(chan int, n)
	for i := range n {
		next <- i * chunk
	}
	close(next)
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	for range min(n, cap(d.slots)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range next {
				if err := d.io(p[o:min(o+chunk, len(p))], off+int64(o), write); err != nil {
					once.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return len(p), nil
}

// io runs one command, waiting for one of the device's QueueDepth slots.
func (d *Device) io(p []byte, off int64, write bool) error {
	select {
	case d.slots <- struct{}{}:
	case <-d.s.ctx.Done():
		return ErrClosed
	}
	defer func() { <-d.slots }()
	lba := uint64(off / int64(d.blockSize))
	if write {
		return d.s.Write16(d.s.ctx, p, lba, d.blockSize)
	}
	return d.s.Read16(d.s.ctx, p, lba, d.blockSize)
}

// Flush implements jobs.Device with SYNCHRONIZE CACHE(16); it is a no-op on
// a read-only device.
func (d *Device) Flush(ctx context.Context) error {
	if d.readOnly {
		return nil
	}
	return d.s.SyncCache(ctx)
}

// Close logs out. It does not flush.
func (d *Device) Close() error { return d.s.Close() }
