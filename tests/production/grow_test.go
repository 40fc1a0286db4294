package production

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cinderport/cinderport/tests/harness"
)

// TestUploadGrowsOnline uploads 1.5 GiB of unknown size on a worker told
// not to trust the staged object's size: the volume starts at 1 GiB and is
// extended online (Cinder 3.42+) while attached — Cinder's tgt helper
// re-creates the target, which drops the initiator's session; the
// initiator logs in again and re-reads the capacity — in one step, and the
// image arrives whole.
func TestUploadGrowsOnline(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := newStack(t)
	w := s.worker("grow", "--trust-staged-size=false")
	jobID, imageID := ids(t, "")
	im := newImage(400, giB+giB/2)
	s.stage(ctx, im, "grow/"+imageID)
	start := time.Now()
	r := s.run(ctx, w, "upload", "--object", im.object(), "--job-id", jobID, "--image-id", imageID)
	t.Logf("1.5 GiB of unknown size uploaded in %.2f s", time.Since(start).Seconds())
	s.deleteAtEnd(w, r.VolumeID)
	s.checkUpload(im, r, expect{jobID: jobID, imageID: imageID, sizeGiB: 2})

	created := logLines(w, "created volume")
	if len(created) != 1 || created[0]["size_gib"] != float64(1) {
		t.Errorf("volume created as %v, want once at 1 GiB", created)
	}
	grows := logLines(w, "growing volume")
	for _, g := range grows {
		t.Logf("grew from %v to %v GiB, online %v", g["from_gib"], g["to_gib"], g["online"])
		if g["online"] != true {
			t.Errorf("the volume was grown offline: %v", g)
		}
	}
	count, secs := harness.VolumeCalls(nil, metrics(t, w))
	if len(grows) != 1 || count["extend"] != 1 {
		t.Errorf("%d growth steps and %v extend calls for 1.5 GiB from 1 GiB, want 1 (doubling)", len(grows), count["extend"])
	}
	if count["attach"] != 1 {
		t.Errorf("%v attachments made for one online growth, want 1", count["attach"])
	}
	t.Logf("extend (with the target's re-creation): %.2f s; iscsi session events %v", secs["extend"], sessionEvents(metrics(t, w)))
	if len(logLines(w, "iscsi session reinstated")) == 0 {
		t.Errorf("no session was reinstated: did the extend not re-create the target?")
	}

	url := s.signURL(ctx, w, r.VolumeID)
	s.checkDownload(url, im)
	s.checkRange(url, r.VolumeID, im, giB-10, giB+10)
}

// sessionEvents are the worker's counts of iSCSI session recoveries.
func sessionEvents(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for series, v := range m {
		if name, labels, ok := strings.Cut(series, "{"); ok && name == "cinderport_iscsi_session_errors_total" {
			out[harness.Label(labels, "event")] = v
		}
	}
	return out
}
