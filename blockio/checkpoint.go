package blockio

import (
	"context"
	"encoding"
	"fmt"
	"hash"
	"sync"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// checkpointTimeout bounds one checkpoint's flush and save. They run
// detached from the job's context: a checkpoint that has begun is worth
// finishing even while the job is being interrupted.
const checkpointTimeout = 2 * time.Minute

// checkpointer saves an upload's checkpoints while its pipeline runs. The
// writers report the byte ranges they completed, the hash stages their
// state at each due checkpoint; a checkpoint is saved — device flushed
// first — once every byte below it is written and both states are in.
type checkpointer struct {
	ctx  context.Context
	save func(context.Context, jobs.Checkpoint) error

	mu       sync.Mutex
	frontier int64           // every byte below has been written
	ahead    map[int64]int64 // writes completed past the frontier: start → end
	marks    []*mark         // due checkpoints, in order
	err      error
	kick     chan struct{}
	done     chan struct{}

	saveMu sync.Mutex  // held while flushing and saving, and while the device is replaced
	dev    jobs.Device // the device to flush; guarded by saveMu
	saved  int64       // the last saved offset; guarded by saveMu
}

type mark struct {
	off     int64
	md5, os []byte
	have    int
}

// newCheckpointer starts the saving goroutine; with no save function it
// does nothing at all.
func newCheckpointer(ctx context.Context, dev jobs.Device, off int64, save func(context.Context, jobs.Checkpoint) error) *checkpointer {
	cp := &checkpointer{ctx: ctx, save: save, frontier: off, saved: off, dev: dev, ahead: map[int64]int64{},
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	if save == nil {
		close(cp.done)
		return cp
	}
	go func() {
		defer close(cp.done)
		for range cp.kick {
			cp.saveReady()
		}
	}()
	return cp
}

func (cp *checkpointer) poke() {
	select {
	case cp.kick <- struct{}{}:
	default:
	}
}

func (cp *checkpointer) failed() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.err
}

func (cp *checkpointer) fail(err error) {
	cp.mu.Lock()
	if cp.err == nil {
		cp.err = err
	}
	cp.mu.Unlock()
}

// expect registers a checkpoint due at off; the reader calls it in order.
func (cp *checkpointer) expect(off int64) {
	if cp.save == nil {
		return
	}
	cp.mu.Lock()
	cp.marks = append(cp.marks, &mark{off: off})
	cp.mu.Unlock()
}

// snapshot records a hash's state at off, where a hash stage just
// finished the marked buffer.
func (cp *checkpointer) snapshot(off int64, isMD5 bool, h hash.Hash) {
	if cp.save == nil {
		return
	}
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		cp.fail(fmt.Errorf("save hash state at %d: %w", off, err))
		return
	}
	cp.mu.Lock()
	for _, m := range cp.marks {
		if m.off == off {
			if isMD5 {
				m.md5 = state
			} else {
				m.os = state
			}
			m.have++
		}
	}
	cp.mu.Unlock()
	cp.poke()
}

// wrote records a completed write of [off, end).
func (cp *checkpointer) wrote(off, end int64) {
	if cp.save == nil {
		return
	}
	cp.mu.Lock()
	if off != cp.frontier {
		cp.ahead[off] = end
	} else {
		cp.frontier = end
		for {
			e, ok := cp.ahead[cp.frontier]
			if !ok {
				break
			}
			delete(cp.ahead, cp.frontier)
			cp.frontier = e
		}
	}
	cp.mu.Unlock()
	cp.poke()
}

// ready removes and returns the newest due checkpoint whose bytes are all
// written and whose hash states are both in; older ones are superseded.
func (cp *checkpointer) ready() *mark {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var best *mark
	i := 0
	for ; i < len(cp.marks) && cp.marks[i].off <= cp.frontier && cp.marks[i].have == 2; i++ {
		best = cp.marks[i]
	}
	cp.marks = cp.marks[i:]
	return best
}

func (cp *checkpointer) saveReady() {
	cp.saveMu.Lock()
	defer cp.saveMu.Unlock()
	cp.saveReadyLocked()
}

func (cp *checkpointer) saveReadyLocked() {
	if m := cp.ready(); m != nil && cp.failed() == nil {
		if err := cp.persist(m.off, m.md5, m.os); err != nil {
			cp.fail(err)
		}
	}
}

// persist flushes the device and saves a checkpoint at off; saveMu is
// held. Offsets only move forward.
func (cp *checkpointer) persist(off int64, md5State, osState []byte) error {
	if off <= cp.saved {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(cp.ctx), checkpointTimeout)
	defer cancel()
	if err := cp.dev.Flush(ctx); err != nil {
		return fmt.Errorf("flush at checkpoint %d: %w", off, err)
	}
	if err := cp.save(ctx, jobs.Checkpoint{Offset: off, MD5State: md5State, HashState: osState}); err != nil {
		return fmt.Errorf("save checkpoint %d: %w", off, err)
	}
	cp.saved = off
	return nil
}

// pause saves what is due, then runs grow with no checkpoint in progress,
// and makes the device grow returns the one later checkpoints flush. The
// pipeline is drained when it is called.
func (cp *checkpointer) pause(grow func() (jobs.Device, error)) (jobs.Device, error) {
	cp.saveMu.Lock()
	defer cp.saveMu.Unlock()
	if cp.save != nil {
		cp.saveReadyLocked()
		if err := cp.failed(); err != nil {
			return nil, err
		}
	}
	dev, err := grow()
	if err == nil {
		cp.dev = dev
	}
	return dev, err
}

// close stops the saving goroutine once every due checkpoint is saved and
// returns the first failure.
func (cp *checkpointer) close() error {
	if cp.save == nil {
		return nil
	}
	close(cp.kick)
	<-cp.done
	cp.saveReady()
	return cp.failed()
}

// final saves a checkpoint at off, where a copy stopped early after every
// write it started had completed: the hashes have consumed exactly the
// bytes below off. It reports whether it saved one.
func (cp *checkpointer) final(off int64, h *imageHashes) bool {
	if cp.save == nil {
		return false
	}
	cp.mu.Lock()
	complete := cp.frontier == off && cp.err == nil
	cp.mu.Unlock()
	if !complete {
		return false
	}
	md5State, osState, err := h.state()
	if err != nil {
		return false
	}
	cp.saveMu.Lock()
	defer cp.saveMu.Unlock()
	return cp.persist(off, md5State, osState) == nil
}
