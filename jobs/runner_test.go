package jobs_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/cinder/local"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/staging/s3local"
	"github.com/cinderport/cinderport/state"
)

// rig is a runner on the embedded default's adapters: local volumes, the
// file connector, the in-process S3 endpoint and a bbolt journal.
type rig struct {
	runner  *jobs.Runner
	vols    *local.Volumes
	staging *staging.Client
}

func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	vols, err := local.Open(filepath.Join(dir, "volumes"), local.Options{Host: "rig"})
	if err != nil {
		t.Fatal(err)
	}
	journal, err := state.Open(filepath.Join(dir, "journal.db"), state.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { journal.Close() })
	ak, sk := "rig-"+s3local.RandomKey(8), s3local.RandomKey(40)
	srv, err := s3local.New(filepath.Join(dir, "s3"), ak, sk, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	st, err := staging.New(staging.Config{Endpoint: srv.Addr(), AccessKey: ak, SecretKey: sk})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(context.Background(), "stage"); err != nil {
		t.Fatal(err)
	}
	r := &jobs.Runner{Volumes: vols, Connector: blockio.Router{"local": blockio.FileConnector{}}, Staging: st,
		Journal: journal, Copier: &blockio.Copier{}, Log: zerolog.Nop()}
	return &rig{runner: r, vols: vols, staging: st}
}

func (g *rig) stage(t *testing.T, key string, size int) ([]byte, string) {
	t.Helper()
	b := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(size)}).Read(b)
	if _, err := g.staging.Put(context.Background(), jobs.Object{Bucket: "stage", Key: key}, bytes.NewReader(b), int64(size)); err != nil {
		t.Fatal(err)
	}
	sum := md5.Sum(b)
	return b, hex.EncodeToString(sum[:])
}

// TestUploadClearsStaleAttachments: an earlier attempt created the volume
// and attached it, then died before journaling the attachment. The retry
// adopts the volume, deletes the stale attachment and completes.
func TestUploadClearsStaleAttachments(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // without the cleanup, the wait for "available" hangs
	defer cancel()
	g := newRig(t)
	_, sum := g.stage(t, "img", 3<<20+5)
	job := jobs.Job{Version: 1, ID: "stale-1", Kind: jobs.KindUpload, ImageID: "img-1", Source: &jobs.Object{Bucket: "stage", Key: "img"}}
	job.Normalize()
	v, err := g.vols.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-img-1", SizeGiB: 1,
		Metadata: map[string]string{jobs.MetaJobID: "stale-1", jobs.MetaImageID: "img-1", jobs.MetaStore: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.vols.Attach(ctx, v.ID, jobs.ReadWrite); err != nil {
		t.Fatal(err)
	}
	res, err := g.runner.Run(ctx, job, 2)
	if err != nil {
		t.Fatalf("retry over a stale attachment: %v", err)
	}
	if res.VolumeID != v.ID || res.Checksum != sum {
		t.Errorf("result %+v: want the adopted volume %s and md5 %s", res, v.ID, sum)
	}
	if n := g.vols.Attachments(); n != 0 {
		t.Errorf("%d attachments left", n)
	}
	if all, _ := g.vols.FindVolumes(ctx, map[string]string{jobs.MetaJobID: "stale-1"}); len(all) != 1 {
		t.Errorf("%d volumes for the job, want 1", len(all))
	}
}
