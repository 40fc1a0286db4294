package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// killRuns is how many uploads are each killed once.
const killRuns = 30

// killPhase is where in a job a run kills its worker.
type killPhase int

const (
	killSetup    killPhase = iota // creating or attaching the volume
	killMidCopy                   // 5–85 % of the image read
	killNearEnd                   // 90–99.9 % read
	killFinalize                  // flushing, detaching, or writing the metadata
)

func (p killPhase) String() string {
	return [...]string{"create/attach", "mid-copy", "near the end", "finalize"}[p]
}

// TestSIGKILLDuringUploads kills the worker with SIGKILL once during each
// of 30 uploads of a 512 MiB image, at a moment drawn from a seeded RNG in
// one of four phases (create/attach, mid-copy, near the end, finalize —
// in turn), restarts it on the same data directory, and checks each job:
// it completes, exactly once (one volume named after its image, created at
// most once), with the image's hashes, its bytes in the volume's backing
// file, and no attachment or tgtd target left; then the volume is deleted
// with a delete job. Over all runs, the bytes the worker read from staging
// (counted by a proxy in front of MinIO) stay within 1.2 × the image bytes:
// resumed jobs continue from their checkpoints.
func TestSIGKILLDuringUploads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	r := addRow(t, "worker SIGKILLed at a random moment of a 512 MiB upload, restarted")
	s := newStack(t, startNATS(t))
	im := s.stage(ctx, 1, 512*miB, "kill/image.raw")
	w := s.worker("killed")
	seed := uint64(20261203)
	if v := os.Getenv("CINDERPORT_FAULT_SEED"); v != "" {
		if _, err := fmt.Sscan(v, &seed); err != nil {
			fatalf(t, "CINDERPORT_FAULT_SEED=%q: %v", v, err)
		}
	}
	rng := rand.New(rand.NewPCG(seed, 6))
	t.Logf("kill moments from seed %d (CINDERPORT_FAULT_SEED)", seed)
	for i := range killRuns {
		r.runs++
		jobID, imageID := fmt.Sprintf("job-kill-%02d", i), fmt.Sprintf("img-kill-%02d", i)
		phase := killPhase(i % 4)
		base := s.proxy.Bytes()
		runStart := time.Now()
		s.upload(ctx, w, im, jobID, imageID)
		at, err := killAt(ctx, s, rng, phase, jobID, base, im.size)
		if err != nil && !errors.Is(err, errEnded) {
			fatalf(t, "run %d: %v", i, err)
		}
		w.Kill()
		t.Logf("run %2d: SIGKILL %s after %.1f s (%s; %v)", i, phase, time.Since(runStart).Seconds(), at, err)
		if err := w.Start(); err != nil {
			fatalf(t, "run %d: restart the worker: %v", i, err)
		}
		res := s.waitEnd(ctx, jobID)
		r.read += s.proxy.Bytes() - base
		t.Logf("%s: %d MiB read from staging for a %d MiB image", jobID, (s.proxy.Bytes()-base)>>20, im.size>>20)
		t.Logf("run %2d: completed %.1f s after its enqueue", i, time.Since(runStart).Seconds())
		s.finishRun(ctx, r, w, im, res, jobID, imageID)
	}
	if r.read > r.images*12/10 {
		errorf(t, "the worker read %d MiB from staging for %d MiB of images: more than 1.2 ×", r.read>>20, r.images>>20)
	}
	s.checkNoLeaks(r, "img-kill-")
}

// killAt waits for the moment the run kills its worker — a step, or a
// number of staging bytes read, drawn from rng within phase — and says
// what it waited for. errEnded: the job finished first.
func killAt(ctx context.Context, s *stack, rng *rand.Rand, phase killPhase, jobID string, base, size int64) (string, error) {
	switch phase {
	case killSetup, killFinalize:
		steps := []jobs.Step{jobs.StepCreating, jobs.StepAttaching}
		if phase == killFinalize {
			steps = []jobs.Step{jobs.StepFlushing, jobs.StepDetaching, jobs.StepFinishing}
		}
		step := steps[rng.IntN(len(steps))]
		delay := time.Duration(rng.IntN(300)) * time.Millisecond
		if _, err := s.atStep(ctx, jobID, step); err != nil {
			return "at step " + string(step), err
		}
		time.Sleep(delay) // a random moment within the step, not a synchronisation
		return fmt.Sprintf("%v into step %s", delay, step), nil
	default:
		lo, hi := 0.05, 0.85
		if phase == killNearEnd {
			lo, hi = 0.90, 0.999
		}
		n := int64((lo + rng.Float64()*(hi-lo)) * float64(size))
		return fmt.Sprintf("at %d MiB read", n>>20), s.atBytes(ctx, jobID, base, n)
	}
}
