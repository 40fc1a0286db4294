package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/jobs"
)

// newID returns a random UUIDv4-shaped id.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func parseObject(s string) (jobs.Object, error) {
	bucket, key, ok := strings.Cut(s, "/")
	if !ok || bucket == "" || key == "" {
		return jobs.Object{}, fmt.Errorf("object %q: want BUCKET/KEY", s)
	}
	return jobs.Object{Bucket: bucket, Key: key}, nil
}

// uploadOpts are the flags of upload.
type uploadOpts struct {
	file, object, jobID, size string
	job                       jobs.Job
	wait, verify              bool
}

func (c *cli) uploadFlags(o *uploadOpts) *flagsWithArgs {
	fs := c.flags("upload", "upload --file PATH | --object BUCKET/KEY [flags]")
	fs.StringVar(&o.file, "file", "", "stage this local file first (to BUCKET/uploads/IMAGE_ID), then enqueue it")
	fs.StringVar(&o.object, "object", "", "an object already in staging, as BUCKET/KEY")
	fs.StringVar(&o.job.ImageID, "image-id", "", "the Glance image id (default: a new UUID)")
	fs.StringVar(&o.jobID, "job-id", "", "the job id, which is also its de-duplication key (default: a new UUID)")
	fs.StringVar(&o.size, "size", "", "the image size in bytes (e.g. 1048576, 2GiB); 0 or unset: unknown (with --file: the file's size)")
	fs.StringVar(&o.job.Checksum, "checksum", "", "expected md5 (hex); the job fails if the image differs")
	fs.StringVar(&o.job.OSHashAlgo, "os-hash-algo", "sha512", "os_hash algorithm: sha256, sha384 or sha512")
	fs.StringVar(&o.job.OSHashValue, "os-hash-value", "", "expected os_hash (hex)")
	fs.StringVar(&o.job.VolumeType, "volume-type", "", "Cinder volume type")
	fs.StringVar(&o.job.Zone, "zone", "", "zone: the queue partition (and availability zone) the job runs in (default: default)")
	fs.StringVar(&o.job.Store, "store", "", "store name: locations become cinder://STORE/VOLUME_ID")
	fs.StringVar(&o.job.Owner, "owner", "", "image owner (project id), recorded as image_owner")
	fs.BoolVar(&o.job.DeleteSource, "delete-source", false, "delete the staged object once the image is stored")
	fs.BoolVar(&o.wait, "wait", false, "wait for the job to end, with progress; exit non-zero if it failed")
	fs.BoolVar(&o.verify, "verify", true, "with --file: hash the file while staging it and make the worker check both hashes")
	return &flagsWithArgs{Set: fs}
}

func (c *cli) upload(ctx context.Context, args []string) int {
	var o uploadOpts
	fs := c.uploadFlags(&o)
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if (o.file == "") == (o.object == "") {
		fmt.Fprintln(c.stderr, "enqueue upload: give exactly one of --file and --object")
		return exitUsage
	}
	if o.size != "" {
		n, err := parseSize(o.size)
		if err != nil {
			fmt.Fprintf(c.stderr, "enqueue upload: --size: %v\n", err)
			return exitUsage
		}
		o.job.Size = n
	}
	if err := c.resolve(); err != nil {
		return c.fail("%v", err)
	}
	if o.job.ImageID == "" {
		o.job.ImageID = newID()
	}
	o.job.ID = o.jobID
	if o.job.ID == "" {
		o.job.ID = newID()
	}
	o.job.Kind, o.job.Version = jobs.KindUpload, jobs.Version
	if o.object != "" {
		src, err := parseObject(o.object)
		if err != nil {
			fmt.Fprintf(c.stderr, "enqueue upload: %v\n", err)
			return exitUsage
		}
		o.job.Source = &src
	} else {
		o.job.Source = &jobs.Object{Bucket: c.bucketName(), Key: "uploads/" + o.job.ImageID}
	}
	if err := o.job.Validate(); err != nil {
		return c.fail("%v", err)
	}
	start := time.Now()
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	// A job id that already ran is reported before anything is staged: its
	// staged object may be in use.
	if ev, err := c.q.Status(ctx, o.job.ID); err == nil && ev.State != jobs.StateQueued {
		return c.duplicate(ctx, o.job, &ev, o.wait, start)
	}
	if o.file != "" {
		if err := c.stageFile(ctx, &o); err != nil {
			return c.fail("%v", err)
		}
	}
	return c.enqueueAndWait(ctx, o.job, o.wait, start)
}

// stageFile puts the file into staging, hashing it on the way.
func (c *cli) stageFile(ctx context.Context, o *uploadOpts) error {
	f, err := os.Open(o.file)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if o.job.Size == 0 {
		o.job.Size = st.Size()
	} else if o.job.Size != st.Size() {
		return fmt.Errorf("--size %d but %s is %d bytes", o.job.Size, o.file, st.Size())
	}
	sc, err := c.stagingClient(ctx)
	if err != nil {
		return err
	}
	if err := sc.EnsureBucket(ctx, o.job.Source.Bucket); err != nil {
		return fmt.Errorf("staging bucket %s: %w", o.job.Source.Bucket, err)
	}
	b := newBar(c.stderr, "staging ", st.Size(), c.progress)
	var r io.Reader = &countingReader{r: f, progress: func(n int64) { b.update(n, "") }}
	var ih *blockio.ImageHasher
	if o.verify {
		if ih, err = blockio.NewImageHasher("sha512"); err != nil {
			return err
		}
		r = io.TeeReader(r, ih)
	}
	if _, err := sc.Put(ctx, *o.job.Source, r, st.Size()); err != nil {
		return fmt.Errorf("stage %s as %s: %w", o.file, o.job.Source, err)
	}
	b.update(st.Size(), "staged")
	b.finish()
	if o.verify {
		dg := ih.Digest()
		sum := dg.MD5
		if o.job.Checksum != "" && o.job.Checksum != sum {
			return fmt.Errorf("%s has md5 %s, not the --checksum %s", o.file, sum, o.job.Checksum)
		}
		o.job.Checksum = sum
		if o.job.OSHashAlgo == "sha512" {
			v := dg.HashValue
			if o.job.OSHashValue != "" && o.job.OSHashValue != v {
				return fmt.Errorf("%s has sha512 %s, not the --os-hash-value given", o.file, v)
			}
			o.job.OSHashValue = v
		}
	}
	return nil
}

type countingReader struct {
	r        io.Reader
	n        int64
	progress func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.progress(c.n)
	return n, err
}

// enqueueAndWait enqueues job and, with wait, follows it to its end.
func (c *cli) enqueueAndWait(ctx context.Context, job jobs.Job, wait bool, start time.Time) int {
	res, err := c.q.Enqueue(ctx, job)
	if err != nil {
		return c.fail("enqueue job %s: %v", job.ID, err)
	}
	if res.Duplicate {
		return c.duplicate(ctx, job, res.Status, wait, start)
	}
	if !wait {
		if c.output == "json" {
			c.printJSON(map[string]any{"job_id": job.ID, "image_id": job.ImageID, "kind": job.Kind, "seq": res.Seq})
		} else {
			fmt.Fprintf(c.stdout, "enqueued %s job %s\n", job.Kind, job.ID)
		}
		return exitOK
	}
	ev, err := c.follow(ctx, job.ID, string(job.Kind))
	if err != nil {
		return c.fail("%v", err)
	}
	return c.report(job, ev, time.Since(start), false)
}

// duplicate reports a job id that was enqueued before — within the
// de-duplication window, or known by its status (st) — and with wait
// follows that job. The exit status is exitDuplicate unless the job failed.
func (c *cli) duplicate(ctx context.Context, job jobs.Job, st *jobs.Event, wait bool, start time.Time) int {
	if st != nil {
		fmt.Fprintf(c.stderr, "enqueue: job %s is a duplicate: it exists already (%s), nothing new was queued\n", job.ID, st.State)
	} else {
		fmt.Fprintf(c.stderr, "enqueue: job %s is a duplicate: it was enqueued before (within the de-duplication window), nothing new was queued\n", job.ID)
	}
	if !wait {
		if c.output == "json" {
			out := map[string]any{"job_id": job.ID, "duplicate": true}
			if st != nil {
				out["state"] = st.State
			}
			c.printJSON(out)
		}
		return exitDuplicate
	}
	ev, err := c.follow(ctx, job.ID, string(job.Kind))
	if err != nil {
		return c.fail("%v", err)
	}
	return c.report(job, ev, time.Since(start), true)
}

func (c *cli) report(job jobs.Job, ev jobs.Event, took time.Duration, duplicate bool) int {
	if ev.State != jobs.StateCompleted {
		if c.output == "json" {
			c.printJSON(map[string]any{"job_id": job.ID, "state": ev.State, "error": ev.Error})
		}
		fmt.Fprintf(c.stderr, "enqueue: job %s %s: %s\n", job.ID, ev.State, ev.Error)
		return exitFailed
	}
	r := ev.Result
	if r == nil {
		r = &jobs.Result{}
	}
	if c.output == "json" {
		c.printJSON(r)
	} else {
		w := c.stdout
		if r.Location != "" {
			fmt.Fprintf(w, "location:      %s\n", r.Location)
		}
		fmt.Fprintf(w, "volume_id:     %s\n", r.VolumeID)
		fmt.Fprintf(w, "size:          %d (%s)\n", r.Size, human(r.Size))
		if r.Checksum != "" {
			fmt.Fprintf(w, "checksum:      %s (md5)\n", r.Checksum)
			fmt.Fprintf(w, "os_hash:       %s %s\n", r.OSHashAlgo, r.OSHashValue)
		}
		fmt.Fprintf(w, "took:          %.2fs (%.1f MB/s end to end)\n", took.Seconds(), float64(r.Size)/1e6/max(took.Seconds(), 1e-3))
	}
	if duplicate {
		return exitDuplicate
	}
	return exitOK
}

func (c *cli) volumeJob(ctx context.Context, name string, args []string, kind jobs.Kind) int {
	var jobID, object, zone, store string
	var wait bool
	fs := c.flags(name, name+" VOLUME_ID [flags]")
	fs.StringVar(&jobID, "job-id", "", "the job id (default: a new UUID)")
	fs.StringVar(&zone, "zone", "", "the zone whose workers take the job (default: default)")
	fs.StringVar(&store, "store", "", "the store the volume belongs to (workers only touch their own store's volumes)")
	fs.BoolVar(&wait, "wait", false, "wait for the job to end")
	if kind == jobs.KindExport {
		fs.StringVar(&object, "object", "", "where to write the image, as BUCKET/KEY (required)")
	}
	fa := &flagsWithArgs{Set: fs}
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	if fa.NArg() != 1 {
		fmt.Fprintf(c.stderr, "enqueue %s: give one VOLUME_ID\n", name)
		return exitUsage
	}
	job := jobs.Job{Version: jobs.Version, ID: jobID, Kind: kind, VolumeID: fa.Arg(0), Zone: zone, Store: store}
	if job.ID == "" {
		job.ID = newID()
	}
	if kind == jobs.KindExport {
		t, err := parseObject(object)
		if err != nil {
			fmt.Fprintf(c.stderr, "enqueue export: --object: %v\n", err)
			return exitUsage
		}
		job.Target = &t
	}
	if err := job.Validate(); err != nil {
		return c.fail("%v", err)
	}
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	return c.enqueueAndWait(ctx, job, wait, time.Now())
}

func (c *cli) export(ctx context.Context, args []string) int {
	return c.volumeJob(ctx, "export", args, jobs.KindExport)
}

func (c *cli) delete(ctx context.Context, args []string) int {
	return c.volumeJob(ctx, "delete", args, jobs.KindDelete)
}

func (c *cli) status(ctx context.Context, args []string) int {
	fa := &flagsWithArgs{Set: c.flags("status", "status JOB_ID [flags]")}
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	if fa.NArg() != 1 {
		fmt.Fprintln(c.stderr, "enqueue status: give one JOB_ID")
		return exitUsage
	}
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	ev, err := c.q.Status(ctx, fa.Arg(0))
	if errors.Is(err, jobs.ErrNotFound) {
		return c.fail("no job %s", fa.Arg(0))
	}
	if err != nil {
		return c.fail("status of job %s: %v", fa.Arg(0), err)
	}
	c.printEvent(ev)
	if ev.State == jobs.StateFailed || ev.State == jobs.StateCancelled {
		return exitFailed
	}
	return exitOK
}

func (c *cli) printEvent(ev jobs.Event) {
	if c.output == "json" {
		c.printJSON(ev)
		return
	}
	line := fmt.Sprintf("%s  %-9s", ev.JobID, ev.State)
	if ev.Step != "" {
		line += " step=" + string(ev.Step)
	}
	if ev.Bytes > 0 || ev.Total > 0 {
		line += fmt.Sprintf(" %s/%s", human(ev.Bytes), human(ev.Total))
		if ev.Total > 0 && !ev.State.Terminal() {
			line += fmt.Sprintf(" (%.1f%%)", 100*float64(ev.Bytes)/float64(ev.Total))
		}
	}
	if ev.Rate > 0 {
		line += fmt.Sprintf(" %s/s", human(int64(ev.Rate)))
	}
	if ev.Attempt > 0 {
		line += " attempt=" + strconv.Itoa(ev.Attempt)
	}
	if ev.Worker != "" {
		line += " worker=" + ev.Worker
	}
	if ev.Result != nil && ev.Result.Location != "" {
		line += " location=" + ev.Result.Location
	}
	if ev.Error != "" {
		line += " error=" + strconv.Quote(ev.Error)
	}
	fmt.Fprintln(c.stdout, line)
}

func (c *cli) watch(ctx context.Context, args []string) int {
	fa := &flagsWithArgs{Set: c.flags("watch", "watch JOB_ID [flags]")}
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	if fa.NArg() != 1 {
		fmt.Fprintln(c.stderr, "enqueue watch: give one JOB_ID")
		return exitUsage
	}
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	var last jobs.Event
	err := c.q.Watch(ctx, fa.Arg(0), func(ev jobs.Event) bool {
		last = ev
		c.printEvent(ev)
		return !ev.State.Terminal()
	})
	if err != nil {
		return c.fail("watch job %s: %v", fa.Arg(0), err)
	}
	if last.State != jobs.StateCompleted {
		return exitFailed
	}
	return exitOK
}

func (c *cli) dead(ctx context.Context, args []string) int {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		fmt.Fprintln(c.stderr, "enqueue dead: list | replay JOB_ID|SEQ | replay --all")
		return exitUsage
	}
	var all bool
	fa := &flagsWithArgs{Set: c.flags("dead "+args[0], "dead list | dead replay JOB_ID|SEQ|--all [flags]")}
	if args[0] == "replay" {
		fa.BoolVar(&all, "all", false, "replay every dead letter")
	}
	if err := fa.Parse(args[1:]); err != nil {
		return exitUsage
	}
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	dls, err := c.q.DeadLetters(ctx)
	if err != nil {
		return c.fail("list dead letters: %v", err)
	}
	if args[0] == "list" {
		if c.output == "json" {
			c.printJSON(dls)
			return exitOK
		}
		for _, d := range dls {
			fmt.Fprintf(c.stdout, "%d\t%s\t%s\tattempts=%d\t%s\n", d.Seq, d.Time.Format(time.RFC3339), d.JobID, d.Attempts, d.Reason)
		}
		return exitOK
	}
	if !all {
		if fa.NArg() != 1 {
			fmt.Fprintln(c.stderr, "enqueue dead replay: give one JOB_ID or SEQ (from dead list), or --all")
			return exitUsage
		}
		return c.replayOne(ctx, fa.Arg(0))
	}
	for _, d := range dls {
		if err := c.q.Replay(ctx, d.Seq); err != nil {
			return c.fail("replay dead letter %d: %v", d.Seq, err)
		}
		fmt.Fprintf(c.stdout, "replayed dead letter %d (job %s)\n", d.Seq, d.JobID)
	}
	return exitOK
}

// replayOne replays the dead letter of a job id, or the dead letter with
// that sequence number.
func (c *cli) replayOne(ctx context.Context, arg string) int {
	seq, err := c.q.ReplayJob(ctx, arg)
	if errors.Is(err, jobs.ErrNotFound) {
		n, perr := strconv.ParseUint(arg, 10, 64)
		if perr != nil {
			return c.fail("no dead letter of job %s", arg)
		}
		if err := c.q.Replay(ctx, n); err != nil {
			return c.fail("replay dead letter %d: %v", n, err)
		}
		fmt.Fprintf(c.stdout, "replayed dead letter %d\n", n)
		return exitOK
	}
	if err != nil {
		return c.fail("replay job %s: %v", arg, err)
	}
	fmt.Fprintf(c.stdout, "replayed dead letter %d (job %s)\n", seq, arg)
	return exitOK
}

func (c *cli) download(ctx context.Context, args []string) int {
	var out string
	fa := &flagsWithArgs{Set: c.flags("download", "download VOLUME_ID [-o FILE] [flags]")}
	fa.StringVar(&out, "o", "-", "write the image here (- for stdout)")
	c.authFlags(fa.Set)
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	if fa.NArg() != 1 {
		fmt.Fprintln(c.stderr, "enqueue download: give one VOLUME_ID")
		return exitUsage
	}
	if err := c.resolve(); err != nil {
		return c.fail("%v", err)
	}
	d, err := c.fetch(ctx, fa.Arg(0), out)
	if err != nil {
		return c.fail("%v", err)
	}
	if out != "-" {
		fmt.Fprintf(c.stderr, "downloaded %s (%d bytes) in %.2fs, %.1f MB/s, md5 %s verified\n",
			human(d.Bytes), d.Bytes, d.took.Seconds(), float64(d.Bytes)/1e6/max(d.took.Seconds(), 1e-3), d.MD5)
	}
	return exitOK
}

type fetched struct {
	jobs.Digest
	took time.Duration
}

// fetch downloads a volume's image from the worker's HTTP API to out,
// checking the byte count and both hashes the worker announces.
func (c *cli) fetch(ctx context.Context, volumeID, out string) (fetched, error) {
	if c.workerURL == "" {
		return fetched{}, errors.New("no worker URL: pass --worker-url or run an embedded worker")
	}
	start := time.Now()
	req, err := c.downloadRequest(ctx, volumeID)
	if err != nil {
		return fetched{}, err
	}
	hc, err := c.httpClient()
	if err != nil {
		return fetched{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fetched{}, fmt.Errorf("download volume %s: %w", volumeID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fetched{}, fmt.Errorf("download volume %s: %s: %s", volumeID, resp.Status, strings.TrimSpace(string(msg)))
	}
	var w io.Writer = c.stdout
	if out != "-" {
		f, err := os.Create(out)
		if err != nil {
			return fetched{}, err
		}
		defer f.Close()
		w = f
	}
	ih, err := blockio.NewImageHasher("sha512")
	if err != nil {
		return fetched{}, err
	}
	b := newBar(c.stderr, "download", resp.ContentLength, c.progress)
	n, err := io.CopyBuffer(io.MultiWriter(w, ih), &countingReader{r: resp.Body, progress: func(n int64) { b.update(n, "") }}, make([]byte, 1<<20))
	d := ih.Digest()
	b.update(n, "")
	b.finish()
	if err != nil {
		return fetched{}, fmt.Errorf("download volume %s: %w", volumeID, err)
	}
	if f, ok := w.(*os.File); ok && out != "-" {
		if err := f.Sync(); err != nil {
			return fetched{}, err
		}
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return fetched{}, fmt.Errorf("download volume %s: got %d of %d bytes", volumeID, n, resp.ContentLength)
	}
	if want := resp.Header.Get("X-Image-Checksum"); want != "" && want != d.MD5 {
		return fetched{}, fmt.Errorf("download volume %s: md5 %s, the worker announced %s", volumeID, d.MD5, want)
	}
	if want := resp.Header.Get("X-Image-Os-Hash-Value"); want != "" && resp.Header.Get("X-Image-Os-Hash-Algo") == "sha512" && want != d.HashValue {
		return fetched{}, fmt.Errorf("download volume %s: sha512 differs from the one the worker announced", volumeID)
	}
	return fetched{Digest: d, took: time.Since(start)}, nil
}
