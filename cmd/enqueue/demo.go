package main

import (
	"context"
	"crypto/md5"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cinderport/cinderport/internal/embedded"
	"github.com/cinderport/cinderport/jobs"
)

// demo generates an incompressible image, uploads it through the whole
// pipeline, downloads it back through a worker, and checks both hashes.
func (c *cli) demo(ctx context.Context, args []string) int {
	var sizeFlag string
	var keep bool
	fa := &flagsWithArgs{Set: c.flags("demo", "demo [--size 256MiB] [flags]")}
	fa.StringVar(&sizeFlag, "size", "256MiB", "size of the generated image")
	fa.BoolVar(&keep, "keep", false, "keep the volume (default: delete it at the end)")
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	size, err := parseSize(sizeFlag)
	if err != nil || size <= 0 {
		fmt.Fprintf(c.stderr, "enqueue demo: --size: %v\n", err)
		return exitUsage
	}
	if err := c.resolve(); err != nil {
		return c.fail("%v", err)
	}
	dir, err := os.MkdirTemp("", "cinderport-demo-")
	if err != nil {
		return c.fail("%v", err)
	}
	defer os.RemoveAll(dir)
	out := c.stdout

	fmt.Fprintf(out, "== generating a %s image of random bytes\n", human(size))
	src := filepath.Join(dir, "image.raw")
	want, err := generate(src, size)
	if err != nil {
		return c.fail("generate image: %v", err)
	}
	fmt.Fprintf(out, "   md5    %s\n   sha512 %s…\n", want.MD5, want.HashValue[:32])

	fmt.Fprintln(out, "== upload: staging → queue → worker → volume")
	o := uploadOpts{verify: true, wait: true, file: src}
	o.job = jobs.Job{Version: jobs.Version, ID: newID(), Kind: jobs.KindUpload, ImageID: newID(), Size: size, OSHashAlgo: "sha512"}
	o.job.Source = &jobs.Object{Bucket: c.bucketName(), Key: "uploads/" + o.job.ImageID}
	stageStart := time.Now()
	if err := c.stageFile(ctx, &o); err != nil {
		return c.fail("%v", err)
	}
	staged := time.Since(stageStart)
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	jobStart := time.Now()
	if _, err := c.q.Enqueue(ctx, o.job); err != nil {
		return c.fail("enqueue: %v", err)
	}
	ev, err := c.follow(ctx, o.job.ID, "upload ")
	if err != nil {
		return c.fail("%v", err)
	}
	jobTook := time.Since(jobStart)
	if ev.State != jobs.StateCompleted || ev.Result == nil {
		return c.fail("upload job %s %s: %s", o.job.ID, ev.State, ev.Error)
	}
	res := *ev.Result

	fmt.Fprintln(out, "== download: volume → worker HTTP API → file")
	back := filepath.Join(dir, "image.back")
	got, err := c.fetch(ctx, res.VolumeID, back)
	if err != nil {
		return c.fail("%v", err)
	}
	ok := got.Digest == want && res.Checksum == want.MD5 && res.OSHashValue == want.HashValue && res.Size == size

	mbps := func(n int64, d time.Duration) float64 { return float64(n) / 1e6 / max(d.Seconds(), 1e-3) }
	fmt.Fprintln(out, "== summary")
	fmt.Fprintf(out, "   location        %s\n", res.Location)
	fmt.Fprintf(out, "   volume_id       %s\n", res.VolumeID)
	fmt.Fprintf(out, "   image size      %d bytes (%s)\n", res.Size, human(res.Size))
	fmt.Fprintf(out, "   md5             %s  (source %s, download %s)\n", res.Checksum, match(res.Checksum == want.MD5), match(got.MD5 == want.MD5))
	fmt.Fprintf(out, "   sha512          %s…  (source %s, download %s)\n", res.OSHashValue[:32], match(res.OSHashValue == want.HashValue), match(got.HashValue == want.HashValue))
	fmt.Fprintf(out, "   staging put     %6.2fs  %7.1f MB/s\n", staged.Seconds(), mbps(size, staged))
	fmt.Fprintf(out, "   upload job      %6.2fs  %7.1f MB/s  (enqueue → completed)\n", jobTook.Seconds(), mbps(size, jobTook))
	fmt.Fprintf(out, "   download        %6.2fs  %7.1f MB/s\n", got.took.Seconds(), mbps(got.Bytes, got.took))
	if rss := workerPeakRSS(c.dataDir); rss > 0 {
		fmt.Fprintf(out, "   worker peak RSS %s (the whole all-in-one process: NATS, S3, worker)\n", human(rss))
	}
	if !keep {
		del := jobs.Job{Version: jobs.Version, ID: newID(), Kind: jobs.KindDelete, VolumeID: res.VolumeID}
		if _, err := c.q.Enqueue(ctx, del); err == nil {
			if ev, err := c.follow(ctx, del.ID, "delete"); err == nil && ev.State == jobs.StateCompleted {
				fmt.Fprintf(out, "   cleanup         volume %s deleted\n", res.VolumeID)
			}
		}
	}
	if !ok {
		fmt.Fprintln(out, "== FAILED: the image did not come back identical")
		return exitFailed
	}
	fmt.Fprintln(out, "== OK: the image came back identical")
	return exitOK
}

func match(ok bool) string {
	if ok {
		return "match"
	}
	return "MISMATCH"
}

// generate writes size pseudo-random (incompressible) bytes to path and
// returns their hashes.
func generate(path string, size int64) (jobs.Digest, error) {
	f, err := os.Create(path)
	if err != nil {
		return jobs.Digest{}, err
	}
	defer f.Close()
	hm, hs := md5.New(), sha512.New()
	r := rand.NewChaCha8([32]byte{byte(time.Now().UnixNano())})
	if _, err := io.CopyN(io.MultiWriter(f, hm, hs), r, size); err != nil {
		return jobs.Digest{}, err
	}
	if err := f.Close(); err != nil {
		return jobs.Digest{}, err
	}
	return jobs.Digest{Bytes: size, MD5: hex.EncodeToString(hm.Sum(nil)), HashAlgo: "sha512", HashValue: hex.EncodeToString(hs.Sum(nil))}, nil
}

// workerPeakRSS reads the embedded worker's peak resident set (VmHWM) from
// /proc, or returns 0.
func workerPeakRSS(dataDir string) int64 {
	ep, err := embedded.ReadEndpoints(dataDir)
	if err != nil || ep.PID == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", ep.PID))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
