package blockio

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// memDevice is a jobs.Device in memory that checks alignment like a real
// block device would.
type memDevice struct {
	t       testing.TB
	mu      sync.Mutex
	data    []byte
	bs      int
	failAt  int64 // a write covering this offset fails (if > 0)
	flushes int
}

func newMemDevice(t testing.TB, size int64) *memDevice {
	return &memDevice{t: t, data: make([]byte, size), bs: 512, failAt: -1}
}

func (d *memDevice) check(p []byte, off int64) error {
	if off%int64(d.bs) != 0 || len(p)%d.bs != 0 {
		d.t.Errorf("unaligned I/O: %d bytes at %d", len(p), off)
	}
	if off+int64(len(p)) > int64(len(d.data)) {
		return errors.New("I/O past the end of the device")
	}
	return nil
}

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(p, off); err != nil {
		return 0, err
	}
	if d.failAt >= 0 && off <= d.failAt && d.failAt < off+int64(len(p)) {
		return 0, errors.New("injected write failure")
	}
	return copy(d.data[off:], p), nil
}

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(p, off); err != nil {
		return 0, err
	}
	return copy(p, d.data[off:]), nil
}

func (d *memDevice) Size() int64    { d.mu.Lock(); defer d.mu.Unlock(); return int64(len(d.data)) }
func (d *memDevice) BlockSize() int { return d.bs }
func (d *memDevice) Flush(ctx context.Context) error {
	d.mu.Lock()
	d.flushes++
	d.mu.Unlock()
	return nil
}
func (d *memDevice) Close() error { return nil }

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func wantDigest(b []byte) jobs.Digest {
	m := md5.Sum(b)
	s := sha512.Sum512(b)
	return jobs.Digest{Bytes: int64(len(b)), MD5: hex.EncodeToString(m[:]), HashAlgo: "sha512", HashValue: hex.EncodeToString(s[:])}
}

// oddReader returns at most 7000 bytes per Read, to exercise ReadFull.
type oddReader struct{ r io.Reader }

func (o oddReader) Read(p []byte) (int, error) { return o.r.Read(p[:min(len(p), 7000)]) }

func TestFillSizes(t *testing.T) {
	c := &Copier{ChunkSize: 64 << 10, Depth: 4}
	for _, n := range []int{0, 1, 511, 512, 513, 64<<10 - 1, 64 << 10, 64<<10 + 1, 5*64<<10 + 300} {
		src := randomBytes(n, uint64(n))
		dev := newMemDevice(t, 1<<20)
		for i := range dev.data {
			dev.data[i] = 0xee // the padding must overwrite this with zeros
		}
		got, err := c.Fill(context.Background(), dev, oddReader{bytes.NewReader(src)}, jobs.FillRequest{HashAlgo: "sha512"})
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if got != wantDigest(src) {
			t.Errorf("%d bytes: digest %+v, want %+v", n, got, wantDigest(src))
		}
		if !bytes.Equal(dev.data[:n], src) {
			t.Errorf("%d bytes: device content differs", n)
		}
		if pad := (n + 511) / 512 * 512; n%512 != 0 && !bytes.Equal(dev.data[n:pad], make([]byte, pad-n)) {
			t.Errorf("%d bytes: tail not zero-padded", n)
		}
	}
}

func TestFillResumesFromCheckpoint(t *testing.T) {
	const n = 1<<20 + 12345
	src := randomBytes(n, 7)
	c := &Copier{ChunkSize: 32 << 10, Depth: 3}
	dev := newMemDevice(t, 2<<20)
	var cps []jobs.Checkpoint
	dev.failAt = 700 << 10 // the first attempt dies here
	_, err := c.Fill(context.Background(), dev, bytes.NewReader(src), jobs.FillRequest{
		HashAlgo: "sha512", CheckpointEvery: 200 << 10,
		Checkpoint: func(_ context.Context, cp jobs.Checkpoint) error { cps = append(cps, cp); return nil },
	})
	if err == nil {
		t.Fatal("first attempt: want the injected failure")
	}
	if len(cps) == 0 {
		t.Fatal("no checkpoint taken before the failure")
	}
	last := cps[len(cps)-1]
	if last.Offset > dev.failAt || last.Offset%(32<<10) != 0 {
		t.Fatalf("checkpoint at %d: past the failure or unaligned", last.Offset)
	}
	if dev.flushes < len(cps) {
		t.Errorf("%d checkpoints but %d flushes: a checkpoint must be durable", len(cps), dev.flushes)
	}
	dev.failAt = -1
	got, err := c.Fill(context.Background(), dev, bytes.NewReader(src[last.Offset:]), jobs.FillRequest{HashAlgo: "sha512", Resume: &last})
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got != wantDigest(src) {
		t.Errorf("resumed digest %+v, want %+v", got, wantDigest(src))
	}
	if !bytes.Equal(dev.data[:n], src) {
		t.Error("resumed device content differs")
	}
}

// TestFillCheckpointsItsEnd: a finished copy saves a checkpoint at the
// image's end (unaligned here) with its hash states, from which a later
// attempt — its job failed after the copy — resumes, reads nothing, and
// gets the image's digest.
func TestFillCheckpointsItsEnd(t *testing.T) {
	const n = 300<<10 + 77
	src := randomBytes(n, 9)
	c := &Copier{ChunkSize: 32 << 10, Depth: 3}
	dev := newMemDevice(t, 1<<20)
	var last jobs.Checkpoint
	req := jobs.FillRequest{HashAlgo: "sha512", SizeHint: n, CheckpointEvery: 100 << 10,
		Checkpoint: func(_ context.Context, cp jobs.Checkpoint) error { last = cp; return nil }}
	if _, err := c.Fill(context.Background(), dev, bytes.NewReader(src), req); err != nil {
		t.Fatal(err)
	}
	if last.Offset != n || len(last.MD5State) == 0 || len(last.HashState) == 0 {
		t.Fatalf("last checkpoint at %d with %d+%d bytes of hash state, want one at the end (%d) with both", last.Offset, len(last.MD5State), len(last.HashState), n)
	}
	req.Resume = &last
	got, err := c.Fill(context.Background(), dev, bytes.NewReader(nil), req)
	if err != nil {
		t.Fatalf("resume at the end: %v", err)
	}
	if got != wantDigest(src) {
		t.Errorf("digest resumed at the end %+v, want %+v", got, wantDigest(src))
	}
}

func TestFillGrows(t *testing.T) {
	src := randomBytes(300<<10, 3)
	c := &Copier{ChunkSize: 16 << 10, Depth: 4}
	dev := newMemDevice(t, 64<<10)
	grows := 0
	got, err := c.Fill(context.Background(), dev, bytes.NewReader(src), jobs.FillRequest{
		HashAlgo: "sha512",
		Grow: func(_ context.Context, d jobs.Device, need int64) (jobs.Device, error) {
			grows++
			m := d.(*memDevice)
			m.mu.Lock()
			m.data = append(m.data, make([]byte, max(need, 2*int64(len(m.data)))-int64(len(m.data)))...)
			m.mu.Unlock()
			return m, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != wantDigest(src) || !bytes.Equal(dev.data[:len(src)], src) {
		t.Error("grown copy differs")
	}
	if grows != 3 { // 64 KiB → 128 → 256 → 512
		t.Errorf("%d grow calls, want 3 (doubling)", grows)
	}
}

func TestFillTooLargeWithoutGrow(t *testing.T) {
	c := &Copier{ChunkSize: 4096}
	_, err := c.Fill(context.Background(), newMemDevice(t, 8192), bytes.NewReader(make([]byte, 10000)), jobs.FillRequest{HashAlgo: "sha512"})
	if !jobs.IsPermanent(err) {
		t.Fatalf("got %v, want a permanent error", err)
	}
}

func TestFillSourceErrorAndCancel(t *testing.T) {
	c := &Copier{ChunkSize: 4096}
	boom := errors.New("boom")
	_, err := c.Fill(context.Background(), newMemDevice(t, 1<<20), io.MultiReader(bytes.NewReader(make([]byte, 10000)), iotestErr{boom}), jobs.FillRequest{HashAlgo: "sha256"})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the source's error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Fill(ctx, newMemDevice(t, 1<<20), bytes.NewReader(make([]byte, 10000)), jobs.FillRequest{HashAlgo: "sha256"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

func TestDrainRanges(t *testing.T) {
	dev := newMemDevice(t, 1<<20)
	copy(dev.data, randomBytes(1<<20, 9))
	c := &Copier{ChunkSize: 16 << 10, Depth: 4}
	for _, r := range []struct{ off, n int64 }{{0, 0}, {0, 1}, {0, 1 << 20}, {1, 1000}, {511, 2}, {100000, 300001}, {1<<20 - 1, 1}} {
		var out bytes.Buffer
		got, err := c.Drain(context.Background(), dev, &out, jobs.DrainRequest{Offset: r.off, Length: r.n, HashAlgo: "sha512"})
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		want := dev.data[r.off : r.off+r.n]
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("%+v: bytes differ", r)
		}
		if got != wantDigest(want) {
			t.Errorf("%+v: digest %+v", r, got)
		}
	}
	if _, err := c.Drain(context.Background(), dev, io.Discard, jobs.DrainRequest{Offset: 1 << 20, Length: 1}); !jobs.IsPermanent(err) {
		t.Errorf("range past the end: got %v, want permanent", err)
	}
}

type failWriter struct{ after int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.after -= len(p); w.after < 0 {
		return 0, errors.New("client went away")
	}
	return len(p), nil
}

func TestDrainWriterError(t *testing.T) {
	dev := newMemDevice(t, 1<<20)
	c := &Copier{ChunkSize: 4096, Depth: 4}
	if _, err := c.Drain(context.Background(), dev, &failWriter{after: 50000}, jobs.DrainRequest{Length: 1 << 20, HashAlgo: "sha512"}); err == nil {
		t.Fatal("want the writer's error")
	}
}

func BenchmarkFill(b *testing.B) {
	const n = 256 << 20
	c := &Copier{}
	src := randomBytes(4<<20, 1)
	dev := &nullDevice{size: n}
	b.SetBytes(n)
	for b.Loop() {
		r := io.LimitReader(repeatReader{src}, n)
		if _, err := c.Fill(context.Background(), dev, r, jobs.FillRequest{HashAlgo: "sha512"}); err != nil {
			b.Fatal(err)
		}
	}
}

type repeatReader struct{ b []byte }

func (r repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], r.b)
	}
	return n, nil
}

type nullDevice struct{ size int64 }

func (d *nullDevice) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (d *nullDevice) ReadAt(p []byte, off int64) (int, error)  { return len(p), nil }
func (d *nullDevice) Size() int64                              { return d.size }
func (d *nullDevice) BlockSize() int                           { return 512 }
func (d *nullDevice) Flush(context.Context) error              { return nil }
func (d *nullDevice) Close() error                             { return nil }

// slowDevice delays writes, so several are in flight when checkpoints fall due.
type slowDevice struct {
	*memDevice
	delay time.Duration
}

func (d slowDevice) WriteAt(p []byte, off int64) (int, error) {
	time.Sleep(d.delay)
	return d.memDevice.WriteAt(p, off)
}

// TestCheckpointsAreDurable checks, inside every checkpoint, that each byte
// below its offset is already on the device — with writes still in flight
// behind it, since checkpoints no longer drain the pipeline.
func TestCheckpointsAreDurable(t *testing.T) {
	const n = 3<<20 + 4096
	src := randomBytes(n, 21)
	mem := newMemDevice(t, 4<<20)
	dev := slowDevice{mem, time.Millisecond}
	c := &Copier{ChunkSize: 64 << 10, Depth: 6}
	var offs []int64
	got, err := c.Fill(context.Background(), dev, bytes.NewReader(src), jobs.FillRequest{
		HashAlgo: "sha512", CheckpointEvery: 256 << 10,
		Checkpoint: func(_ context.Context, cp jobs.Checkpoint) error {
			mem.mu.Lock()
			ok := bytes.Equal(mem.data[:cp.Offset], src[:cp.Offset])
			flushed := mem.flushes
			mem.mu.Unlock()
			if !ok {
				t.Errorf("checkpoint %d: the bytes below it are not all on the device", cp.Offset)
			}
			if flushed == 0 {
				t.Errorf("checkpoint %d saved before any flush", cp.Offset)
			}
			if len(offs) > 0 && cp.Offset <= offs[len(offs)-1] {
				t.Errorf("checkpoint %d after %d: offsets must increase", cp.Offset, offs[len(offs)-1])
			}
			offs = append(offs, cp.Offset)
			return nil
		},
	})
	if err != nil || got != wantDigest(src) {
		t.Fatalf("fill: %v, digest %+v", err, got)
	}
	if len(offs) < 4 {
		t.Errorf("%d checkpoints over %d bytes every 256 KiB: %v", len(offs), n, offs)
	}
}

// TestStopEarlyTakesAFinalCheckpoint: a copy cut short by its context or its
// source leaves a checkpoint where its completed writes end, and resuming
// from it gives the same bytes and hashes as an uninterrupted copy.
func TestStopEarlyTakesAFinalCheckpoint(t *testing.T) {
	const n = 2<<20 + 777
	src := randomBytes(n, 33)
	for _, tc := range []struct {
		name string
		stop func(cancel context.CancelFunc) io.Reader
	}{
		{"cancelled", func(cancel context.CancelFunc) io.Reader {
			return &cancelAt{r: bytes.NewReader(src), at: 1<<20 + 320<<10, cancel: cancel}
		}},
		{"source failed", func(context.CancelFunc) io.Reader {
			return io.MultiReader(io.LimitReader(bytes.NewReader(src), 1<<20+320<<10), iotestErr{errors.New("connection reset")})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newMemDevice(t, 4<<20)
			c := &Copier{ChunkSize: 64 << 10, Depth: 4}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var last jobs.Checkpoint
			_, err := c.Fill(ctx, dev, tc.stop(cancel), jobs.FillRequest{HashAlgo: "sha512", CheckpointEvery: 512 << 10,
				Checkpoint: func(_ context.Context, cp jobs.Checkpoint) error { last = cp; return nil }})
			if err == nil {
				t.Fatal("the copy did not stop")
			}
			// Periodic checkpoints fall at 512 KiB and 1 MiB; the final one
			// must be exactly where the reading stopped.
			if last.Offset != 1<<20+320<<10 {
				t.Fatalf("last checkpoint at %d: want the final one, exactly where the reading stopped", last.Offset)
			}
			got, err := c.Fill(context.Background(), dev, bytes.NewReader(src[last.Offset:]), jobs.FillRequest{HashAlgo: "sha512", Resume: &last})
			if err != nil {
				t.Fatalf("resume from %d: %v", last.Offset, err)
			}
			if got != wantDigest(src) || !bytes.Equal(dev.data[:n], src) {
				t.Errorf("resumed from %d: digest or content differs", last.Offset)
			}
		})
	}
}

// cancelAt cancels its context as soon as at bytes have been read.
type cancelAt struct {
	r      io.Reader
	n, at  int
	cancel context.CancelFunc
}

func (c *cancelAt) Read(p []byte) (int, error) {
	if c.n < c.at {
		p = p[:min(len(p), c.at-c.n)]
	}
	k, err := c.r.Read(p)
	if c.n += k; c.n >= c.at {
		c.cancel()
	}
	return k, err
}

// TestFillSmallImageSmallBuffers: buffers follow SizeHint, so a 4 KiB image
// does not allocate the megabytes of the default pipeline.
func TestFillSmallImageSmallBuffers(t *testing.T) {
	src := randomBytes(4096, 5)
	c := &Copier{}
	fill := func(hint int64) uint64 {
		dev := newMemDevice(t, 1<<20)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		if _, err := c.Fill(context.Background(), dev, bytes.NewReader(src), jobs.FillRequest{HashAlgo: "sha512", SizeHint: hint}); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, unknown := fill(4096), fill(0)
	if small > 256<<10 || unknown < 4<<20 {
		t.Errorf("allocated %d bytes with a size hint and %d without: want the hint to keep it small", small, unknown)
	}
}
