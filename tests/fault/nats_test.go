package fault

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/tests/harness"
)

// TestNATSNodeLost runs two workers on a 3-node NATS cluster with every
// stream and bucket replicated three times, enqueues four 256 MiB uploads,
// and shuts down the node that leads the jobs stream once the first job is
// copying: every job completes exactly once, with its image's bytes and
// hashes, and nothing leaks.
func TestNATSNodeLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r := addRow(t, "NATS node (jobs stream leader) killed mid-job, 3-node cluster, R3")
	cl, err := natsembed.StartCluster(t.TempDir(), 3)
	if err != nil {
		fatalf(t, "NATS cluster: %v", err)
	}
	t.Cleanup(cl.Shutdown)
	s := newStack(t, cl.URLs())
	im := s.stage(ctx, 5, 256*miB, "nats/image.raw")
	workers := []*harness.Worker{s.worker("nats-1", "--stream-replicas", "3"), s.worker("nats-2", "--stream-replicas", "3")}
	base := s.proxy.Bytes()
	var ids [][2]string
	for i := range 4 {
		jobID, imageID := fmt.Sprintf("job-nats-%d", i), fmt.Sprintf("img-nats-%d", i)
		s.upload(ctx, workers[i%2], im, jobID, imageID)
		ids = append(ids, [2]string{jobID, imageID})
		r.runs++
	}
	if _, err := s.atStep(ctx, ids[0][0], jobs.StepCopying); err != nil {
		fatalf(t, "waiting for the first copy: %v", err)
	}
	if err := s.atBytes(ctx, ids[0][0], base, im.size/4); err != nil {
		fatalf(t, "waiting for a quarter of an image to be read: %v", err)
	}
	leader := jobsLeader(ctx, t, s)
	for _, srv := range cl.Servers {
		if srv.Name() == leader {
			srv.Shutdown()
			t.Logf("shut down %s, the leader of stream %s", leader, queue.JobsStream)
		}
	}
	for _, id := range ids {
		res := s.waitEnd(ctx, id[0])
		// Either worker may have finished it.
		w := workers[0]
		if logLines(workers[1], "job completed", id[0]) > 0 {
			w = workers[1]
		}
		s.finishRun(ctx, r, w, im, res, id[0], id[1])
	}
	r.read = s.proxy.Bytes() - base
	for _, id := range ids {
		created := 0
		for _, w := range workers {
			created += logLines(w, "created volume", id[0])
		}
		if created > 1 {
			errorf(t, "%s: the workers created %d volumes for it", id[0], created)
		}
	}
	s.checkNoLeaks(r, "img-nats-")
}

// jobsLeader names the node that leads the jobs stream.
func jobsLeader(ctx context.Context, t *testing.T, s *stack) string {
	t.Helper()
	js, err := jetstream.New(s.nc)
	if err != nil {
		fatalf(t, "%v", err)
	}
	st, err := js.Stream(ctx, queue.JobsStream)
	if err != nil {
		fatalf(t, "stream %s: %v", queue.JobsStream, err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
		fatalf(t, "stream %s has no leader: %+v %v", queue.JobsStream, info, err)
	}
	return info.Cluster.Leader
}
