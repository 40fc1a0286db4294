package e2e

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/staging/notify"
	"github.com/cinderport/cinderport/tests/harness"
)

// putObject streams size pseudo-random bytes (seeded) into MinIO with
// metadata, in parts of partSize (0: one PUT), and returns the notification
// event the bridge will see and the bytes' md5.
func putObject(t *testing.T, mc *minio.Client, bucket, key string, size int64, seed byte, partSize uint64, meta map[string]string) (notify.Event, string) {
	t.Helper()
	var k [32]byte
	k[0] = seed
	h := md5.New()
	r := io.TeeReader(io.LimitReader(rand.NewChaCha8(k), size), h)
	opts := minio.PutObjectOptions{UserMetadata: meta, PartSize: partSize, DisableContentSha256: true}
	if partSize == 0 {
		opts.DisableMultipart = true
	}
	info, err := mc.PutObject(context.Background(), bucket, key, r, size, opts)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return notify.Event{Bucket: bucket, Key: key, ETag: info.ETag, VersionID: info.VersionID}, hex.EncodeToString(h.Sum(nil))
}

// notificationsSettled waits until the bridge took every notification up
// to at least seq from its stream, and returns the stream's last sequence.
func notificationsSettled(t *testing.T, js jetstream.JetStream, after uint64, within time.Duration) uint64 {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := js.Stream(context.Background(), queue.NotificationStream)
		if err == nil {
			info, err := st.Info(context.Background())
			if err == nil && info.State.LastSeq > after && info.State.Msgs == 0 {
				return info.State.LastSeq
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no notification after #%d was handled within %v", after, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestBucketNotificationsBecomeUploadJobs(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB multipart upload: not in -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	natsURL := startNATS(t)
	m := harness.StartMinIO(t, "MINIO_NOTIFY_NATS_ENABLE_CINDERPORT=on",
		"MINIO_NOTIFY_NATS_ADDRESS_CINDERPORT="+strings.TrimPrefix(natsURL, "nats://"),
		"MINIO_NOTIFY_NATS_SUBJECT_CINDERPORT="+queue.DefaultNotificationSubject,
		"MINIO_NOTIFY_NATS_JETSTREAM_CINDERPORT=on",
		"MINIO_NOTIFY_NATS_QUEUE_DIR_CINDERPORT="+t.TempDir())
	mc, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	if err := mc.MakeBucket(ctx, "stage", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--nats-url", natsURL, "--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey,
		"--s3-secret-key", m.SecretKey, "--bucket", "stage", "--watch-prefix", "incoming/",
		"--watch-arn", "arn:minio:sqs::CINDERPORT:nats"}
	dataDir := t.TempDir()
	w := startWorker(t, dataDir, flags...)
	q, nc := openQueue(t, natsURL)
	js, _ := jetstream.New(nc)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(w.Logs(), "notification bridge running"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the bridge did not start:\n%s", w.Logs())
		}
	}

	// 100 MiB under the watched prefix, with a URL-unfriendly key and the
	// image id in its metadata: exactly one completed upload.
	ev, sum := putObject(t, mc, "stage", "incoming/img one+two%.raw", 100<<20, 21, 0, map[string]string{"Image-Id": "img-100"})
	jobID := notify.JobID(ev)
	done := waitFor(t, q, jobID, 2*time.Minute, "end", terminal)
	if done.State != jobs.StateCompleted || done.ImageID != "img-100" || done.Result == nil || done.Result.Size != 100<<20 || done.Result.Checksum != sum {
		t.Fatalf("job of the 100 MiB object: %+v", done)
	}
	last := notificationsSettled(t, js, 0, time.Minute)
	// The same content again: same eTag, no new job.
	if again, _ := putObject(t, mc, "stage", "incoming/img one+two%.raw", 100<<20, 21, 0, map[string]string{"Image-Id": "img-100"}); again.ETag != ev.ETag {
		t.Fatalf("eTag %s, then %s", ev.ETag, again.ETag)
	}
	last = notificationsSettled(t, js, last, time.Minute)
	if !strings.Contains(w.Logs(), "a duplicate, no new job") {
		t.Error("the bridge did not report the repeated notification as a duplicate")
	}
	if info, _ := q.DeadLetters(ctx); len(info) != 0 {
		t.Errorf("dead letters: %+v", info)
	}
	if v := w.VolumeFiles(); len(v) != 1 {
		t.Errorf("%d volumes after putting the same object twice, want 1", len(v))
	}
	// Outside the prefix: nothing.
	putObject(t, mc, "stage", "elsewhere/x.raw", 1<<20, 22, 0, nil)

	// 1 GiB as a multipart upload, the image id taken from the key.
	const imageID = "6f1c2a4e-8d3b-4f7a-9e21-0c5d7b9a3e14"
	ev, sum = putObject(t, mc, "stage", "incoming/"+imageID+".raw", 1<<30, 23, 64<<20, nil)
	if !strings.Contains(ev.ETag, "-") {
		t.Fatalf("eTag %s: not a multipart upload", ev.ETag)
	}
	done = waitFor(t, q, notify.JobID(ev), 4*time.Minute, "end", terminal)
	if done.State != jobs.StateCompleted || done.ImageID != imageID || done.Result.Size != 1<<30 || done.Result.Checksum != sum {
		t.Fatalf("job of the 1 GiB multipart object: %+v", done)
	}
	if !strings.Contains(w.Logs(), "s3:ObjectCreated:CompleteMultipartUpload") {
		t.Error("no CompleteMultipartUpload notification in the bridge's log")
	}
	last = notificationsSettled(t, js, last, time.Minute)

	// A notification that arrives while no bridge runs is kept for the next.
	w.Stop()
	ev, sum = putObject(t, mc, "stage", "incoming/after-restart.raw", 4<<20, 24, 0, nil)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		st, _ := js.Stream(ctx, queue.NotificationStream)
		info, _ := st.Info(ctx)
		if info.State.LastSeq > last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("MinIO did not deliver the notification")
		}
	}
	w = startWorker(t, dataDir, flags...)
	done = waitFor(t, q, notify.JobID(ev), 2*time.Minute, "end", terminal)
	if done.State != jobs.StateCompleted || done.ImageID != "after-restart" || done.Result.Checksum != sum {
		t.Fatalf("job of the object put while the bridge was down: %+v", done)
	}
	if v := w.VolumeFiles(); len(v) != 3 {
		t.Errorf("%d volumes, want 3", len(v))
	}
}
