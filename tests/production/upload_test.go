package production

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cinderport/cinderport/tests/harness"
)

// TestUploadSizes uploads images around the GiB boundaries — and one of
// unknown size, which the worker sizes from the staged object — checks
// each volume through the lab, downloads each back whole and by range,
// reads one with four clients at once on one attachment, and exports one
// back into staging.
func TestUploadSizes(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	w := s.worker("sizes", "--concurrency", "2")
	// A store's volumes belong to that store's workers, in a zone of their own
	// (zones are also availability zones: the lab has nova).
	ws := s.worker("sizes-store", "--store", "glance-cinder", "--zone", "nova")
	cases := []struct {
		name         string
		size         int64
		unknown      bool
		store, owner string
		concurrent   bool // four clients download it at once
		export       bool
	}{
		{name: "1B", size: 1},
		{name: "1MiB", size: miB, store: "glance-cinder", owner: "6f1b2c3d4e5f40718293a4b5c6d7e8f9"},
		{name: "1GiB-1", size: giB - 1},
		{name: "1GiB+1", size: giB + 1, export: true},
		{name: "300MiB-unknown-size", size: 300 * miB, unknown: true, concurrent: true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			s := s.with(t)
			jobID, imageID := ids(t, "")
			im := newImage(uint64(100+i), c.size)
			s.stage(ctx, im, "sizes/"+imageID)
			args := []string{"upload", "--object", im.object(), "--job-id", jobID, "--image-id", imageID}
			if !c.unknown {
				args = append(args, "--size", strconv.FormatInt(c.size, 10))
			}
			w, storeArgs := w, []string(nil)
			if c.store != "" {
				w, storeArgs = ws, []string{"--store", c.store, "--zone", "nova"}
				args = append(args, storeArgs...)
			}
			if c.owner != "" {
				args = append(args, "--owner", c.owner)
			}
			start := time.Now()
			r := s.run(ctx, w, args...)
			t.Logf("%s uploaded in %.2f s: %s", c.name, time.Since(start).Seconds(), r.Location)
			s.deleteAtEnd(w, r.VolumeID, storeArgs...)
			s.checkUpload(im, r, expect{jobID: jobID, imageID: imageID, store: c.store, owner: c.owner})

			url := s.signURL(ctx, w, r.VolumeID)
			s.checkDownload(url, im)
			s.checkRange(url, r.VolumeID, im, im.size-1, im.size-1)
			if im.size > 2*miB {
				// Across a chunk boundary, and the last block's tail.
				s.checkRange(url, r.VolumeID, im, miB-100, miB+4096+7)
				s.checkRange(url, r.VolumeID, im, im.size-5000, im.size-1)
			}
			if c.concurrent {
				s.concurrentDownloads(url, r.VolumeID, im, 4)
			}
			if c.export {
				s.checkExport(ctx, w, r.VolumeID, im, "exports/"+imageID)
			}
		})
	}
}

// TestUpload1GiB uploads exactly 1 GiB on a worker of its own, checks it
// like TestUploadSizes does, and reports where the job's time goes: the
// runner's steps (from its debug logs' elapsed times) and every Cinder
// call (from the worker's /metrics). It is not parallel, so that the
// figures are the job's alone.
func TestUpload1GiB(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := newStack(t)
	w := s.worker("one-gib")
	jobID, imageID := ids(t, "")
	im := newImage(7, giB)
	s.stage(ctx, im, "one-gib/"+imageID)
	start := time.Now()
	r := s.run(ctx, w, "upload", "--object", im.object(), "--job-id", jobID, "--image-id", imageID, "--size", strconv.FormatInt(giB, 10))
	wall := time.Since(start)
	s.deleteAtEnd(w, r.VolumeID)
	s.checkUpload(im, r, expect{jobID: jobID, imageID: imageID})
	// Scraped now: only the start-up reconciliation (find) and this job
	// called Cinder so far.
	count, secs := harness.VolumeCalls(nil, metrics(t, w))
	url := s.signURL(ctx, w, r.VolumeID)
	dl := time.Now()
	s.checkDownload(url, im)
	t.Logf("download of 1 GiB over HTTP, compared as it arrives: %.2f s (%.0f MB/s)", time.Since(dl).Seconds(), float64(giB)/1e6/time.Since(dl).Seconds())
	s.checkRange(url, r.VolumeID, im, giB-4096, giB-1)

	// The runner's steps, in order, with the time since the run started.
	var steps []string
	var at []float64
	for _, l := range logLines(w, "step") {
		if l["job_id"] == jobID {
			steps = append(steps, fmt.Sprint(l["step"]))
			at = append(at, l["elapsed"].(float64)/1e3)
		}
	}
	var total float64
	for _, l := range logLines(w, "upload complete") {
		if l["job_id"] == jobID {
			total = l["seconds"].(float64)
		}
	}
	if len(steps) == 0 || total == 0 {
		t.Fatalf("no step timings in the worker's logs (steps %v, total %v)", steps, total)
	}
	at = append(at, total)
	t.Logf("1 GiB upload job: %.2f s in the runner, %.2f s from enqueue to result (%.0f MB/s end to end)", total, wall.Seconds(), float64(giB)/1e6/wall.Seconds())
	t.Logf("  %-10s %6.3f s  (stat the staged object, look for an earlier volume)", "before", at[0])
	for i, st := range steps {
		t.Logf("  %-10s %6.3f s", st, at[i+1]-at[i])
	}
	var cinder float64
	for _, op := range sortedKeys(count) {
		t.Logf("  cinder %-20s %2.0f call(s) %6.3f s", op, count[op], secs[op])
		cinder += secs[op]
	}
	t.Logf("  cinder calls in all: %.2f s of %.2f s", cinder, total)
	b := map[string]float64{}
	for i, st := range steps {
		b[st] = at[i+1] - at[i]
	}
	for _, name := range []string{"creating", "attaching", "copying", "flushing", "detaching", "finishing"} {
		if _, ok := b[name]; !ok {
			t.Errorf("the job never went through step %s (steps %v)", name, steps)
		}
	}
	t.Logf("  copy throughput: %.0f MB/s", float64(giB)/1e6/b["copying"])
}

// concurrentDownloads reads the image with n clients at once and checks,
// through the lab while they read, that the worker holds a single
// read-only attachment of the volume for all of them.
func (s *stack) concurrentDownloads(url, volumeID string, im *image, n int) {
	t := s.t
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("%s", resp.Status)
				return
			}
			if err := harness.SameBytes(resp.Body, im.reader(), im.size); err != nil {
				errs <- err
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	most, seen := 0, 0
	modes := map[string]bool{}
poll:
	for {
		conns := s.lab.Connections(t, volumeID)
		most = max(most, len(conns))
		if len(conns) > 0 {
			seen++
		}
		for _, c := range conns {
			modes[c.Mode] = true
		}
		select {
		case <-done:
			break poll
		case <-time.After(100 * time.Millisecond):
		}
	}
	close(errs)
	for err := range errs {
		t.Errorf("concurrent download: %v", err)
	}
	if seen == 0 {
		t.Errorf("the downloads ended before the lab could see their attachment: nothing was checked")
	}
	if most != 1 || len(modes) != 1 || !modes["ro"] {
		t.Errorf("%d concurrent downloads: up to %d attachments of the volume at once, modes %v; want one, read-only", n, most, modes)
	}
	t.Logf("%d concurrent downloads of %d MiB: one read-only attachment (seen in %d polls)", n, im.size>>20, seen)
}
