package fault

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// outage is how long a server stays away.
const outage = 20 * time.Second

// TestMinIOOutage kills MinIO (SIGKILL: its connections drop mid-response)
// while a 512 MiB upload reads from it, keeps it away for 20 s and starts
// it again: the job retries from its checkpoint and completes with the
// image's bytes and hashes; nothing is left attached or exported.
func TestMinIOOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	r := addRow(t, "MinIO down 20 s in the middle of a 512 MiB upload")
	s := newStack(t, startNATS(t))
	im := s.stage(ctx, 2, 512*miB, "outage/minio.raw")
	w := s.worker("minio-outage")
	jobID, imageID := "job-minio-outage", "img-minio-outage"
	base := s.proxy.Bytes()
	s.upload(ctx, w, im, jobID, imageID)
	r.runs++
	if err := s.atBytes(ctx, jobID, base, im.size/3); err != nil {
		fatalf(t, "waiting for a third of the image to be read: %v", err)
	}
	s.minio.Kill()
	time.Sleep(outage) // the outage itself
	if err := s.minio.Start(); err != nil {
		fatalf(t, "restart MinIO: %v", err)
	}
	res := s.waitEnd(ctx, jobID)
	r.read += s.proxy.Bytes() - base
	t.Logf("%s: %d MiB read from staging for a %d MiB image; %d connection(s) to MinIO refused during the outage",
		jobID, (s.proxy.Bytes()-base)>>20, im.size>>20, s.proxy.Refused())
	if s.proxy.Refused() == 0 {
		errorf(t, "the worker never tried to reach MinIO while it was down: the outage missed the upload")
	}
	s.finishRun(ctx, r, w, im, res, jobID, imageID)
	s.checkNoLeaks(r, imageID)
}

// TestTgtdConnectionsCut closes the iSCSI connections to the volume's
// target in the lab's tgtd twice while a 512 MiB upload writes to it (a
// third and two thirds of the image read from staging): the initiator
// reconnects, or the job retries from its checkpoint, and completes.
func TestTgtdConnectionsCut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	r := addRow(t, "tgtd connections cut twice mid-write (512 MiB upload)")
	s := newStack(t, startNATS(t))
	im := s.stage(ctx, 3, 512*miB, "outage/tgtd.raw")
	w := s.worker("tgtd-cut")
	jobID, imageID := "job-tgtd-cut", "img-tgtd-cut"
	base := s.proxy.Bytes()
	s.upload(ctx, w, im, jobID, imageID)
	r.runs++
	ev, err := s.atStep(ctx, jobID, jobs.StepCopying)
	if err != nil {
		fatalf(t, "waiting for the copy: %v", err)
	}
	cut := 0
	for _, frac := range []int64{1, 2} {
		if err := s.atBytes(ctx, jobID, base, im.size*frac/3); err != nil {
			fatalf(t, "waiting for %d/3 of the image to be read: %v", frac, err)
		}
		n, err := s.lab.CutVolumeConnections(ev.VolumeID)
		if err != nil {
			fatalf(t, "cut the connections to volume %s: %v", ev.VolumeID, err)
		}
		t.Logf("cut %d connection(s) at %d MiB read", n, (s.proxy.Bytes()-base)>>20)
		cut += n
	}
	if cut == 0 {
		errorf(t, "no connection was cut: the fault never happened")
	}
	res := s.waitEnd(ctx, jobID)
	r.read += s.proxy.Bytes() - base
	t.Logf("%s: %d MiB read from staging for a %d MiB image", jobID, (s.proxy.Bytes()-base)>>20, im.size>>20)
	s.finishRun(ctx, r, w, im, res, jobID, imageID)
	s.checkNoLeaks(r, imageID)
}

// TestCinderAPIOutage stops cinder-api (uwsgi and its workers) for 20 s
// during an upload's Cinder phases: once right after the volume was
// created (the job waits for it and attaches it), once when the copy is
// done (the job detaches and writes the image's metadata). Each job rides
// the outage out and completes; nothing is left attached or exported.
func TestCinderAPIOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r := addRow(t, "cinder-api down 20 s (after the volume's creation; at detach/finish)")
	s := newStack(t, startNATS(t))
	im := s.stage(ctx, 4, 256*miB, "outage/cinder.raw")
	w := s.worker("cinder-outage")
	for i, step := range []jobs.Step{jobs.StepAttaching, jobs.StepDetaching} {
		jobID, imageID := fmt.Sprintf("job-cinder-outage-%d", i), fmt.Sprintf("img-cinder-outage-%d", i)
		base := s.proxy.Bytes()
		s.upload(ctx, w, im, jobID, imageID)
		r.runs++
		if _, err := s.atStep(ctx, jobID, step); err != nil {
			fatalf(t, "waiting for step %s: %v", step, err)
		}
		if err := s.lab.StopService("cinder-api"); err != nil {
			fatalf(t, "%v", err)
		}
		stopped := time.Now()
		time.Sleep(outage) // the outage itself
		if err := s.lab.StartService("cinder-api"); err != nil {
			fatalf(t, "restart cinder-api: %v", err)
		}
		t.Logf("%s: cinder-api down for %.1f s from step %s", jobID, time.Since(stopped).Seconds(), step)
		res := s.waitEnd(ctx, jobID)
		r.read += s.proxy.Bytes() - base
		t.Logf("%s: %d MiB read from staging for a %d MiB image", jobID, (s.proxy.Bytes()-base)>>20, im.size>>20)
		s.finishRun(ctx, r, w, im, res, jobID, imageID)
	}
	s.checkNoLeaks(r, "img-cinder-outage-")
}
