package blockio

import (
	"context"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"

	"github.com/cinderport/cinderport/jobs"
)

// Defaults of the copy engine: 1 MiB per device I/O, 8 in flight. Memory is
// (Depth + 2) × ChunkSize whatever the image size.
const (
	DefaultChunkSize = 1 << 20
	DefaultDepth     = 8
)

// Copier is the copy engine: it reads a stream into a bounded set of
// buffers, hashes each buffer with md5 and the os_hash on two goroutines,
// and keeps Depth aligned writes in flight on the device, so reading,
// hashing and writing overlap. It satisfies jobs.Copier.
type Copier struct {
	// ChunkSize is the bytes per device I/O; it is rounded up to a multiple
	// of the device's block size. 0 means DefaultChunkSize.
	ChunkSize int
	// Depth is the number of device I/Os in flight. 0 means DefaultDepth.
	Depth int
}

var _ jobs.Copier = (*Copier)(nil)

func (c *Copier) geometry(dev jobs.Device) (chunk, depth, bs int) {
	bs = dev.BlockSize()
	if bs <= 0 {
		bs = 512
	}
	chunk = c.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	chunk = (chunk + bs - 1) / bs * bs
	depth = c.Depth
	if depth <= 0 {
		depth = DefaultDepth
	}
	return chunk, depth, bs
}

// buffer is one chunk on its way through the pipeline. refs counts the
// stages (md5, os_hash, device) still using it.
type buffer struct {
	b    []byte
	n    int
	off  int64
	dev  jobs.Device
	mark bool // a checkpoint is due where this buffer ends
	refs atomic.Int32
}

// pipe is the shared state of one Fill or Drain.
type pipe struct {
	free    chan *buffer
	pending sync.WaitGroup // buffers dispatched and not yet released
	stages  sync.WaitGroup // the stage goroutines
	errMu   sync.Mutex
	err     error
}

func newPipe(n, size int) *pipe {
	p := &pipe{free: make(chan *buffer, n)}
	for range n {
		p.free <- &buffer{b: make([]byte, size)}
	}
	return p
}

func (p *pipe) fail(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.errMu.Unlock()
}

func (p *pipe) failed() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

func (p *pipe) release(b *buffer) {
	if b.refs.Add(-1) == 0 {
		p.pending.Done()
		p.free <- b
	}
}

// hashStage feeds every buffer, in order, to w.
func (p *pipe) hashStage(in <-chan *buffer, w io.Writer) {
	p.stages.Add(1)
	go func() {
		defer p.stages.Done()
		for b := range in {
			w.Write(b.b[:b.n]) // hash.Hash.Write never fails
			p.release(b)
		}
	}()
}

// drain waits until every dispatched buffer went through all stages.
func (p *pipe) drain() error {
	p.pending.Wait()
	return p.failed()
}

// fit shrinks the chunk and the depth to an image of size bytes, so a
// small image does not allocate (and clear) the buffers of a large one.
func fit(size int64, chunk, depth, bs int) (int, int) {
	if size <= 0 {
		return chunk, depth
	}
	if aligned := (size + int64(bs) - 1) / int64(bs) * int64(bs); aligned < int64(chunk) {
		chunk = int(aligned)
	}
	return chunk, int(min(int64(depth), (size+int64(chunk)-1)/int64(chunk)))
}

// Fill implements jobs.Copier.
//
// Checkpoints do not stop the pipeline: the reader marks the buffer that
// ends at a checkpoint, each hash stage snapshots its state as it passes
// that buffer, and once every write below the mark has completed the device
// is flushed and the checkpoint saved while later writes go on. When the
// copy stops early — the source fails or ctx is cancelled — the writes in
// flight finish and a last checkpoint is taken where they end, so the next
// attempt reads again only what never reached the device; a finished copy
// takes one at its end.
func (c *Copier) Fill(ctx context.Context, dev jobs.Device, src io.Reader, req jobs.FillRequest) (jobs.Digest, error) {
	chunk, depth, bs := c.geometry(dev)
	var off int64
	if req.Resume != nil {
		off = req.Resume.Offset
	}
	// A checkpoint at the image's end (the copy finished, the job did not)
	// may be unaligned: nothing is left to write.
	if off < 0 || off%int64(bs) != 0 && (req.SizeHint == 0 || off != req.SizeHint) {
		return jobs.Digest{}, jobs.Permanentf("resume offset %d is not a multiple of the block size %d", off, bs)
	}
	if req.SizeHint > 0 {
		chunk, depth = fit(req.SizeHint-off, chunk, depth, bs)
	}
	h, err := newImageHashes(req.HashAlgo, req.Resume)
	if err != nil {
		return jobs.Digest{}, err
	}

	p := newPipe(depth+2, chunk)
	cp := newCheckpointer(ctx, dev, off, req.Checkpoint)
	md5In := make(chan *buffer, depth+2)
	osIn := make(chan *buffer, depth+2)
	writes := make(chan *buffer, depth+2)
	for _, stage := range []struct {
		in   <-chan *buffer
		hash hash.Hash
		md5  bool
	}{{md5In, h.md5, true}, {osIn, h.os, false}} {
		p.stages.Add(1)
		go func() {
			defer p.stages.Done()
			for b := range stage.in {
				stage.hash.Write(b.b[:b.n]) // hash.Hash.Write never fails
				if b.mark {
					cp.snapshot(b.off+int64(b.n), stage.md5, stage.hash)
				}
				p.release(b)
			}
		}()
	}
	for range depth {
		p.stages.Add(1)
		go func() {
			defer p.stages.Done()
			for b := range writes {
				if p.failed() == nil {
					n := (b.n + bs - 1) / bs * bs
					clear(b.b[b.n:n])
					if _, err := b.dev.WriteAt(b.b[:n], b.off); err != nil {
						p.fail(fmt.Errorf("write %d bytes at offset %d: %w", n, b.off, err))
					} else {
						cp.wrote(b.off, b.off+int64(b.n))
					}
				}
				p.release(b)
			}
		}()
	}

	nextCheckpoint := off + req.CheckpointEvery
	stoppedEarly := false // by the source or ctx, with the writes in flight intact
	err = func() error {
		for {
			if err := p.failed(); err != nil {
				return err
			}
			if err := cp.failed(); err != nil {
				return err
			}
			if ctx.Err() != nil {
				stoppedEarly = true
				return context.Cause(ctx)
			}
			var b *buffer
			select {
			case b = <-p.free:
			case <-ctx.Done():
				stoppedEarly = true
				return context.Cause(ctx)
			}
			n, rerr := io.ReadFull(src, b.b)
			eof := rerr == io.EOF || rerr == io.ErrUnexpectedEOF
			if rerr != nil && !eof {
				// A partial buffer of a failed read is not written: the
				// offset stays aligned and the retry reads it again.
				p.free <- b
				stoppedEarly = true
				return fmt.Errorf("read source at offset %d: %w", off, rerr)
			}
			if n == 0 {
				p.free <- b
				return nil
			}
			if end := off + int64((n+bs-1)/bs*bs); end > dev.Size() {
				if err := p.drain(); err != nil {
					p.free <- b
					return err
				}
				if req.Grow == nil {
					p.free <- b
					return jobs.Permanentf("image is larger than the volume (%d bytes)", dev.Size())
				}
				grown, err := cp.pause(func() (jobs.Device, error) { return req.Grow(ctx, dev, end) })
				if err != nil {
					p.free <- b
					return fmt.Errorf("grow volume to %d bytes: %w", end, err)
				}
				if grown.Size() < end {
					p.free <- b
					return fmt.Errorf("volume grown to %d bytes, need %d", grown.Size(), end)
				}
				dev = grown
			}
			b.n, b.off, b.dev, b.mark = n, off, dev, false
			off += int64(n)
			if req.CheckpointEvery > 0 && !eof && off >= nextCheckpoint {
				b.mark = true
				cp.expect(off)
				nextCheckpoint = off + req.CheckpointEvery
			}
			b.refs.Store(3)
			p.pending.Add(1)
			md5In <- b
			osIn <- b
			writes <- b
			if req.Progress != nil {
				req.Progress(off)
			}
			if eof {
				return nil
			}
		}
	}()
	close(md5In)
	close(osIn)
	close(writes)
	p.stages.Wait()
	cerr := cp.close()
	if werr := p.failed(); werr != nil {
		return jobs.Digest{}, werr // the write's own error, even when the copy stopped early
	}
	if err == nil {
		err = cerr
	}
	if err != nil {
		if stoppedEarly && cerr == nil && off%int64(bs) == 0 {
			cp.final(off, h)
		}
		return jobs.Digest{}, err
	}
	// The finished copy is a checkpoint too, with its hash states: a job
	// that fails after it (detaching, finishing) resumes at the end and
	// reads nothing again. An image shorter than the checkpoint interval
	// skips it: a retry re-reads less than the interval allows anyway, and
	// small jobs would pay a journal commit for nothing.
	if off >= req.CheckpointEvery {
		cp.final(off, h)
	}
	return h.digest(off), nil
}

// Drain implements jobs.Copier.
func (c *Copier) Drain(ctx context.Context, dev jobs.Device, dst io.Writer, req jobs.DrainRequest) (jobs.Digest, error) {
	chunk, depth, bs := c.geometry(dev)
	start, end := req.Offset, req.Offset+req.Length
	alignedEnd := (end + int64(bs) - 1) / int64(bs) * int64(bs)
	if start < 0 || req.Length < 0 || alignedEnd > dev.Size() {
		return jobs.Digest{}, jobs.Permanentf("range %d+%d is outside the device (%d bytes)", start, req.Length, dev.Size())
	}
	var h *imageHashes
	if req.HashAlgo != "" {
		var err error
		if h, err = newImageHashes(req.HashAlgo, nil); err != nil {
			return jobs.Digest{}, err
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	type read struct {
		buf  *buffer
		err  error
		done chan struct{}
	}
	p := newPipe(depth+2, chunk)
	work := make(chan *read, depth)
	order := make(chan *read, depth+2)
	p.stages.Add(1)
	go func() { // scheduler: hands out aligned reads in order, bounded by the buffer pool
		defer p.stages.Done()
		defer close(work)
		defer close(order)
		for off := start - start%int64(bs); off < alignedEnd; off += int64(chunk) {
			var b *buffer
			select {
			case b = <-p.free:
			case <-ctx.Done():
				return
			}
			b.off, b.n = off, int(min(int64(chunk), alignedEnd-off))
			r := &read{buf: b, done: make(chan struct{})}
			work <- r
			order <- r
		}
	}()
	for range depth {
		p.stages.Add(1)
		go func() {
			defer p.stages.Done()
			for r := range work {
				if ctx.Err() == nil {
					if _, err := dev.ReadAt(r.buf.b[:r.buf.n], r.buf.off); err != nil {
						r.err = fmt.Errorf("read %d bytes at offset %d: %w", r.buf.n, r.buf.off, err)
					}
				}
				close(r.done)
			}
		}()
	}

	var md5In, osIn chan *buffer
	if h != nil {
		md5In, osIn = make(chan *buffer, depth+2), make(chan *buffer, depth+2)
		p.hashStage(md5In, h.md5)
		p.hashStage(osIn, h.os)
	}
	var done int64
	var err error
	for r := range order {
		<-r.done
		b := r.buf
		if err == nil && r.err != nil {
			err = r.err
		}
		if err == nil && ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		if err != nil {
			cancel(err)
			p.free <- b
			continue
		}
		lo, hi := max(start-b.off, 0), min(end-b.off, int64(b.n))
		data := b.b[lo:hi]
		if _, werr := dst.Write(data); werr != nil {
			err = fmt.Errorf("write image bytes at %d: %w", b.off+lo, werr)
			cancel(err)
			p.free <- b
			continue
		}
		done += int64(len(data))
		if req.Progress != nil {
			req.Progress(done)
		}
		if h == nil {
			p.free <- b
			continue
		}
		// Hash the trimmed slice: shift it to the front of the buffer.
		copy(b.b, data)
		b.n = len(data)
		b.refs.Store(2)
		p.pending.Add(1)
		md5In <- b
		osIn <- b
	}
	if h != nil {
		close(md5In)
		close(osIn)
	}
	p.stages.Wait()
	if err != nil {
		return jobs.Digest{}, err
	}
	if h == nil {
		return jobs.Digest{Bytes: done}, nil
	}
	return h.digest(done), nil
}
