package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cinderport/cinderport/tests/harness"
	"golang.org/x/sys/unix"
)

// upload is one timed upload of an image.
type upload struct {
	wall   time.Duration
	data   float64 // seconds moving bytes (cinderport: copy + flush)
	ticks  []Tick
	phases phases             // cinderport only
	count  map[string]float64 // cinderport: Cinder calls per op
	secs   map[string]float64 // cinderport: their seconds
	hwm    int64              // cinderport: the worker's VmHWM
	rss    int64              // cinderport: the largest VmRSS sampled
	tries  int                // qemu-img: runs it took (a stalled one is killed)
	limit  time.Duration      // qemu-img: when a run counts as stalled
}

// BenchmarkTransfer uploads each size (-bench.sizes) of incompressible
// bytes staged in MinIO three ways — dd conv=fsync from a local file (the
// raw limit), qemu-img convert from MinIO over HTTP to a tgtd LUN, and a
// cinderport upload job through the real Cinder — then downloads the first
// size back over the worker's HTTP API and with qemu-img from the LUN. It
// reports wall and data-phase times, the job's control-plane steps and
// Cinder calls, the worker's peak memory, and the throughput over time of
// the largest upload.
func BenchmarkTransfer(b *testing.B) {
	if b.N > 1 {
		b.Skip("runs once: use -benchtime 1x")
	}
	var list []int64
	for _, f := range strings.Split(*sizes, ",") {
		n, err := parseSize(f)
		if err != nil {
			b.Fatalf("-bench.sizes: %v", err)
		}
		list = append(list, n)
	}
	largest := slices.Max(list)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
	defer cancel()
	s := newStack(b)

	up := report.section(10, "Upload: staged object → volume, incompressible bytes, durable",
		"size", "how", "wall s", "MB/s", "× qemu-img", "data phase s", "data MB/s", "data × qemu-img")
	up.note("MB = 10⁶ bytes. **dd**: `dd bs=1M conv=fsync` from a local file holding the same bytes to a file on the same filesystem " +
		"(the raw limit: no network, no hashing). **qemu-img**: `qemu-img convert -n -f raw -O raw -t writeback http://…/bucket/key iscsi://…` " +
		"(curl driver reading MinIO anonymously; libiscsi to a harness tgtd LUN with tgtd defaults, backing file on the same filesystem as the " +
		"lab's volumes; -t writeback makes it flush the LUN at the end, so it is as durable as the others); its data phase is its wall time. " +
		"**cinderport**: `enqueue upload --wait` from the CLI's start to its result (queue, Cinder create/attach/detach/finalize, copy with " +
		"md5 + sha512, flush); its data phase is the runner's copying + flushing steps. The × columns divide by qemu-img's time (below 1: faster). " +
		"Each run starts after a sync of the page cache; qemu-img and cinderport take turns going first (qemu-img first for the first size), " +
		"dd goes last.")
	cpl := report.section(12, "Upload with the real Cinder: control plane beside data, per job (seconds)",
		"size", "job wall", "queue + CLI", "stat + find", "create", "wait available", "attach", "copy", "flush", "detach", "finalize",
		"control plane", "data")
	cpl.note("From the worker's debug step logs and its Cinder call metrics: **stat + find** is stat-ing the staged object and looking " +
		"for an earlier attempt's volume; **create** the volume's create call; **wait available** polling the volume until it is available " +
		"(glance_store's backoff: 0.5 s, doubling); **attach** the attachment's create, the iSCSI login and the attachment's completion; " +
		"**copy** reading MinIO, md5 + sha512 and writing the LUN (with a flush at every 64 MiB checkpoint); **flush** the last flush; " +
		"**detach** the logout and the attachment's deletion; **finalize** the image metadata, the read-only flag and the result. " +
		"**control plane** is everything but copy and flush, which are **data**; **queue + CLI** is the job's wall time less the runner's " +
		"(the CLI's start, NATS, the result's delivery).")
	calls := report.section(13, "Upload with the real Cinder: Cinder API calls per job (worker /metrics)", "size", "op", "calls", "seconds")
	mem := report.section(40, "Worker memory during uploads (a fresh worker process per upload)",
		"size", "peak RSS MiB (VmHWM)", "largest VmRSS sampled MiB")
	dls := report.section(20, "Download: volume → local file (no fsync on either side)",
		"size", "how", "wall s", "MB/s", "× qemu-img", "host CPU s", "tgtd CPU s", "reader CPU s", "client CPU s")
	dls.note("**cinderport, first GET** is a signed GET on the worker's HTTP API, written to a file in 1 MiB writes: it includes looking the volume up " +
		"and attaching it read-only through Cinder (attachment create, iSCSI login; the completion runs beside the first reads). " +
		"**cinderport, again** repeats it while the worker keeps the idle attachment (5 s). " +
		"**qemu-img**: `qemu-img convert -n --image-opts driver=raw,size=<image size>,file.driver=iscsi,… -O raw file` " +
		"from the harness LUN qemu-img wrote (same bytes, tgtd defaults), the image's bytes only. " +
		"Every copy overwrites a file of the image's size already in the page cache (clean), so that none pays for the guest's page allocation. " +
		"The first GET and qemu-img start after a sync, with the image's bytes evicted from the page cache (the volume's file and the LUN's, fadvise DONTNEED). " +
		"Every copy's md5 is checked after its timing. " +
		"**host CPU s** is the CPU time the whole host spent during the copy (all processes and kernel threads, from /proc/stat); " +
		"**tgtd**, **reader** and **client CPU s** split out the target's, that of the process that read the LUN (the worker, or qemu-img) " +
		"and that of the HTTP client writing the file (this benchmark; qemu-img is its own client).")

	for i, size := range list {
		name := sizeName(size)
		im := &image{seed: uint64(1000 + i), size: size}
		s.stage(ctx, im)
		w := s.worker(fmt.Sprintf("bench-%d", i))
		// The two compared take turns going first; the raw limit goes last.
		var qemu, ours upload
		var lun harness.Target
		var volumeID string
		if i%2 == 0 {
			qemu, lun = s.qemuUpload(im)
			ours, volumeID = s.cinderportUpload(ctx, w, im, fmt.Sprintf("%s-%d", s.run, i))
		} else {
			ours, volumeID = s.cinderportUpload(ctx, w, im, fmt.Sprintf("%s-%d", s.run, i))
			qemu, lun = s.qemuUpload(im)
		}
		raw := s.rawCopy(im)

		q := qemu.wall.Seconds()
		mbps := func(sec float64) float64 { return float64(size) / 1e6 / sec }
		up.add(name, "dd (raw limit)", raw.wall.Seconds(), mbps(raw.wall.Seconds()), raw.wall.Seconds()/q,
			raw.wall.Seconds(), mbps(raw.wall.Seconds()), raw.wall.Seconds()/q)
		up.add(name, "qemu-img", q, mbps(q), 1.0, q, mbps(q), 1.0)
		if qemu.tries > 1 {
			up.note("qemu-img's %s upload stalled: its first run was killed after %v, the figure is its second run.", name, qemu.limit.Round(time.Second))
		}
		ow := ours.wall.Seconds()
		up.add(name, "cinderport (hashing on)", ow, mbps(ow), ow/q, ours.data, mbps(ours.data), ours.data/q)
		report.target("upload "+name+": job wall time vs qemu-img", "≤ 1.0×",
			fmt.Sprintf("%.2f× (%.2f s vs %.2f s; data phase %.2f×)", ow/q, ow, q, ours.data/q), ow <= q)

		st, wait := ours.phases.steps, ours.secs["wait"]
		control := st["before"] + st["creating"] + st["attaching"] + st["detaching"] + st["finishing"]
		cpl.add(name, ow, ow-ours.phases.total, st["before"], st["creating"], wait, st["attaching"]-wait, st["copying"], st["flushing"],
			st["detaching"], st["finishing"], control, ours.data)
		ops := make([]string, 0, len(ours.count))
		for op := range ours.count {
			ops = append(ops, op)
		}
		slices.Sort(ops)
		for _, op := range ops {
			if ours.count[op] > 0 {
				calls.add(name, op, int(ours.count[op]), ours.secs[op])
			}
		}
		mem.add(name, float64(ours.hwm)/(1<<20), float64(ours.rss)/(1<<20))
		if size == largest {
			report.target("worker peak RSS during the "+name+" upload", "≤ 100 MiB",
				fmt.Sprintf("%.1f MiB", float64(ours.hwm)/(1<<20)), ours.hwm <= 100<<20)
			report.mu.Lock()
			report.Series["cinderport upload job"] = ours.ticks
			report.Series["qemu-img convert"] = qemu.ticks
			report.Series["dd conv=fsync"] = raw.ticks
			report.ChartTitle = fmt.Sprintf("%s upload: MB/s into the target file (thin: %d ms samples, thick: %.2g s mean)",
				name, sampleInterval.Milliseconds(), float64(2*smooth+1)*sampleInterval.Seconds())
			report.mu.Unlock()
			b.ReportMetric(float64(ours.hwm)/(1<<20), "peak-RSS-MiB")
		}
		b.ReportMetric(ow/q, "upload-"+strings.ReplaceAll(name, " ", "")+"/qemu")

		if i == 0 {
			s.downloads(ctx, dls, w, volumeID, lun, im)
		}
		s.deleteVolume(ctx, w, volumeID)
		s.tgtd.RemoveTarget(b, lun)
		s.unstage(ctx, im)
		w.Stop()
	}
}

// rawCopy times dd conv=fsync of the image from a local file to another on
// the same filesystem.
func (s *stack) rawCopy(im *image) upload {
	b := s.b
	b.Helper()
	src, dst := filepath.Join(s.dir, "raw-src.img"), filepath.Join(s.dir, "raw-dst.img")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(f, im.reader()); err != nil {
		b.Fatalf("write %s: %v", src, err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	defer os.Remove(src)
	defer os.Remove(dst)
	syscall.Sync()
	smp := startSampler(func() string { return dst }, 0)
	start := time.Now()
	out, err := exec.Command("dd", "if="+src, "of="+dst, "bs=1M", "conv=fsync", "status=none").CombinedOutput()
	wall := time.Since(start)
	ticks := smp.end()
	if err != nil {
		b.Fatalf("dd: %v: %s", err, out)
	}
	s.checkMD5("dd's copy", dst, im)
	return upload{wall: wall, data: wall.Seconds(), ticks: ticks}
}

// volumeBytes is the size of the volume an image gets: whole GiB.
func volumeBytes(size int64) int64 { return (size + 1<<30 - 1) >> 30 << 30 }

// qemuUpload times qemu-img convert from the staged object over HTTP to a
// fresh LUN of the image's volume size; the LUN is returned for the
// download and removed by the caller.
//
// qemu-img's HTTP driver (curl) has been seen to stall for good on this
// host: a run that outlives a generous deadline (2 minutes plus 10 MB/s) is
// killed and, once, run again on a fresh LUN; the report says so.
func (s *stack) qemuUpload(im *image) (upload, harness.Target) {
	b := s.b
	b.Helper()
	limit := 2*time.Minute + time.Duration(im.size/10e6)*time.Second
	for try := 1; ; try++ {
		tg := s.tgtd.AddTarget(b, volumeBytes(im.size), harness.TargetOptions{})
		syscall.Sync()
		smp := startSampler(func() string { return tg.Path }, 0)
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		start := time.Now()
		out, err := exec.CommandContext(ctx, s.qemu, "convert", "-n", "-f", "raw", "-O", "raw", "-t", "writeback", s.url(im), tg.URL()).CombinedOutput()
		wall := time.Since(start)
		stalled := ctx.Err() != nil
		cancel()
		ticks := smp.end()
		if stalled && try == 1 {
			b.Logf("qemu-img convert %s → %s still running after %v: killed, running it again", s.url(im), tg.URL(), limit)
			s.tgtd.RemoveTarget(b, tg)
			continue
		}
		if err != nil {
			b.Fatalf("qemu-img convert %s → %s (try %d, %v): %v: %s", s.url(im), tg.URL(), try, wall.Round(time.Second), err, out)
		}
		s.checkMD5("qemu-img's LUN", tg.Path, im)
		return upload{wall: wall, data: wall.Seconds(), ticks: ticks, tries: try, limit: limit}, tg
	}
}

// cinderportUpload times an upload job of the staged image from the CLI's
// start to its result, on a worker that runs nothing else.
func (s *stack) cinderportUpload(ctx context.Context, w *harness.Worker, im *image, id string) (upload, string) {
	b := s.b
	b.Helper()
	jobID, imageID := "job-"+id, "img-"+id
	before := metrics(b, w)
	files := s.volumeFiles()
	syscall.Sync()
	smp := startSampler(s.newVolumeFile(files), w.Pid())
	start := time.Now()
	out := s.enqueue(ctx, w, "upload", "--object", benchBucket+"/"+im.key, "--size", strconv.FormatInt(im.size, 10),
		"--job-id", jobID, "--image-id", imageID, "--wait", "--output", "json")
	wall := time.Since(start)
	ticks := smp.end()
	hwm, err := w.PeakRSS()
	if err != nil {
		b.Fatalf("worker peak RSS: %v", err)
	}
	var r result
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.VolumeID == "" {
		b.Fatalf("job result %q: %v", out, err)
	}
	if r.Size != im.size || r.Checksum != im.md5 || r.OSHashAlgo != "sha512" || r.OSHashValue != im.sha512 {
		b.Fatalf("job result %+v: want %d bytes, md5 %s, sha512 %.16s…", r, im.size, im.md5, im.sha512)
	}
	count, secs := harness.VolumeCalls(before, metrics(b, w))
	p := jobPhases(b, w, jobID)
	return upload{wall: wall, data: p.steps["copying"] + p.steps["flushing"], ticks: ticks, phases: p,
		count: count, secs: secs, hwm: hwm, rss: smp.rss}, r.VolumeID
}

// downloadRounds is how many times the downloads are timed; the median is
// reported. Ours and qemu-img's take turns going first.
const downloadRounds = 3

// downloads times the image's download over the worker's HTTP API (the
// first GET, which attaches, and one more on the lingering attachment) and
// qemu-img's from the LUN it wrote, downloadRounds times.
func (s *stack) downloads(ctx context.Context, sec *Section, w *harness.Worker, volumeID string, lun harness.Target, im *image) {
	b := s.b
	b.Helper()
	url := s.signURL(ctx, w, volumeID)
	// get downloads the image into dst and returns how long it took, and
	// how long until its first byte.
	get := func(dst string) (total, firstByte time.Duration) {
		start := time.Now()
		resp, err := http.Get(url)
		if err != nil {
			b.Fatalf("download: %v", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(resp.Body)
			b.Fatalf("download: %s: %s", resp.Status, msg)
		}
		f, err := os.OpenFile(dst, os.O_WRONLY, 0) // prefilled: not truncated
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 1<<20) // 1 MiB writes, as qemu-img makes (io.Copy would write 32 KiB)
		n, err := io.ReadAtLeast(resp.Body, buf, 1)
		firstByte = time.Since(start)
		if err == nil {
			_, err = f.Write(buf[:n])
		}
		if err == nil {
			_, err = io.CopyBuffer(struct{ io.Writer }{f}, resp.Body, buf)
		}
		if err != nil {
			b.Fatalf("download: %v", err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start), firstByte
	}
	first, again := filepath.Join(s.dir, "dl-first.img"), filepath.Join(s.dir, "dl-again.img")
	dst := filepath.Join(s.dir, "dl-qemu.img")
	// Every copy overwrites a file of the image's size whose pages are
	// already in the page cache, clean: a copy into a new file spends
	// most of its time having the guest allocate pages, which on this
	// kind of VM varied by seconds from one run to the next (and made
	// qemu-img 1 s slower after a global drop of the page cache).
	for _, p := range []string{first, again, dst} {
		if err := prefill(p, im.size); err != nil {
			b.Fatal(err)
		}
	}
	defer os.Remove(first)
	defer os.Remove(again)
	defer os.Remove(dst)
	// The first GET and qemu-img's read start with the image's bytes out
	// of the page cache: the LUN qemu-img reads and the volume the worker
	// reads are both files tgtd serves through it, and a run with a warm
	// cache measured 820 MB/s for qemu-img from memory. Only those two
	// files are evicted: dropping the whole cache would also evict the
	// code of Cinder, Keystone and qemu-img, a cost no steady-state
	// service pays. (The second GET follows at once, within the idle
	// attachment's 5 s.)
	volFile := s.lab.VolumeFile(volumeID)
	var evicted error
	var cold, ttfb, warm, q []time.Duration
	var coldCPU, warmCPU, qCPU []cpuUse
	var attach []attachTimes
	ours := func(round int) {
		// A first GET needs the previous round's attachment gone.
		deadline := time.Now().Add(time.Minute)
		for logCount(w, "detached after downloads", volumeID) < round {
			if time.Now().After(deadline) {
				b.Fatalf("round %d: the previous round's download attachment is still there after a minute", round)
			}
			time.Sleep(100 * time.Millisecond)
		}
		evicted = evict(volFile, lun.Path)
		m := markCPU(w.Pid())
		c, t := get(first)
		coldCPU = append(coldCPU, m.since())
		m = markCPU(w.Pid())
		a, _ := get(again)
		warmCPU = append(warmCPU, m.since())
		s.checkMD5("download", first, im)
		s.checkMD5("download again", again, im)
		cold, ttfb, warm = append(cold, c), append(ttfb, t), append(warm, a)
		if at, ok := downloadAttach(w, volumeID); ok {
			attach = append(attach, at)
		}
	}
	theirs := func() {
		evict(volFile, lun.Path)
		// The image's bytes only, as the worker serves them, not the whole LUN.
		src := fmt.Sprintf("driver=raw,size=%d,file.driver=iscsi,file.transport=tcp,file.portal=%s,file.target=%s,file.lun=%d",
			im.size, lun.Portal, lun.IQN, lun.LUN)
		cmd := exec.Command(s.qemu, "convert", "-n", "--image-opts", src, "-O", "raw", dst)
		m := markCPU(0)
		start := time.Now()
		out, err := cmd.CombinedOutput()
		q = append(q, time.Since(start))
		if err != nil {
			b.Fatalf("qemu-img convert %s → file: %v: %s", lun.URL(), err, out)
		}
		u := m.since()
		u.copier = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
		qCPU = append(qCPU, u)
		s.checkMD5("qemu-img's download", dst, im)
	}
	for round := range downloadRounds {
		if round%2 == 0 {
			ours(round)
			theirs()
		} else {
			theirs()
			ours(round)
		}
	}

	name := sizeName(im.size)
	mbps := func(d time.Duration) float64 { return float64(im.size) / 1e6 / d.Seconds() }
	med := func(d []time.Duration) time.Duration { return percentile(slices.Clone(d), 0.5) }
	spread := func(d []time.Duration) string {
		d = slices.Clone(d)
		slices.Sort(d)
		return fmt.Sprintf("%.2f–%.2f", d[0].Seconds(), d[len(d)-1].Seconds())
	}
	mc, mt, mw, mq := med(cold), med(ttfb), med(warm), med(q)
	if len(attach) > 0 {
		var a, c []time.Duration
		for _, at := range attach {
			a = append(a, time.Duration(at.Attach*1e6))
			c = append(c, time.Duration(at.Connect*1e6))
		}
		sec.note("Medians of %d rounds (range in seconds: qemu-img %s, first GET %s, again %s). The first GET's first byte came after %.2f s: "+
			"the volume's lookup, the Cinder attachment (%.2f s in the worker's log) and the iSCSI login (%.2f s); qemu-img's LUN needs none.",
			downloadRounds, spread(q), spread(cold), spread(warm), mt.Seconds(), med(a).Seconds(), med(c).Seconds())
	}
	if evicted != nil {
		sec.note("The image's bytes could not be evicted from the page cache (%v): each read may be served from memory.", evicted)
	}
	cq, cc, cw := medCPU(qCPU), medCPU(coldCPU), medCPU(warmCPU)
	sec.add(name, "qemu-img", mq.Seconds(), mbps(mq), 1.0, cq.host, cq.tgtd, cq.copier, nil)
	sec.add(name, "cinderport, first GET", mc.Seconds(), mbps(mc), mc.Seconds()/mq.Seconds(), cc.host, cc.tgtd, cc.copier, cc.client)
	sec.add(name, "cinderport, again", mw.Seconds(), mbps(mw), mw.Seconds()/mq.Seconds(), cw.host, cw.tgtd, cw.copier, cw.client)
	cores := runtime.NumCPU()
	sec.note("CPU (medians): qemu-img's copy cost the host %.2f CPU-s, the kept attachment's %.2f (%.2f×): the worker's HTTP hop adds "+
		"the worker's reads and sends beside a client that reads and writes like qemu-img. On %d cores a copy cannot take less than "+
		"its CPU time / %d: %.2f s for qemu-img's, %.2f s for the kept attachment's.",
		cq.host, cw.host, cw.host/cq.host, cores, cores, cq.host/float64(cores), cw.host/float64(cores))
	report.target("download "+name+" vs qemu-img", "≤ 1.0×",
		fmt.Sprintf("%.2f× first GET (%.2f s vs %.2f s, %.2f s to its first byte); %.2f× on the kept attachment, which cost the host %.2f× qemu-img's CPU",
			mc.Seconds()/mq.Seconds(), mc.Seconds(), mq.Seconds(), mt.Seconds(), mw.Seconds()/mq.Seconds(), cw.host/cq.host), mc <= mq)
	b.ReportMetric(mc.Seconds()/mq.Seconds(), "download/qemu")
}

// medCPU is the median of each field of u.
func medCPU(u []cpuUse) cpuUse {
	return cpuUse{medianOf(u, func(c cpuUse) float64 { return c.host }), medianOf(u, func(c cpuUse) float64 { return c.tgtd }),
		medianOf(u, func(c cpuUse) float64 { return c.copier }), medianOf(u, func(c cpuUse) float64 { return c.client })}
}

// attachTimes is the worker's account of a download attachment, in ms.
type attachTimes struct {
	Attach, Connect float64
}

// logCount counts the worker's log lines with message msg for volumeID.
func logCount(w *harness.Worker, msg, volumeID string) int {
	n := 0
	for _, line := range strings.Split(w.Logs(), "\n") {
		if strings.Contains(line, `"message":"`+msg+`"`) && strings.Contains(line, volumeID) {
			n++
		}
	}
	return n
}

// downloadAttach reads how long the worker's last download attachment of
// volumeID took, from its logs.
func downloadAttach(w *harness.Worker, volumeID string) (attachTimes, bool) {
	var last attachTimes
	found := false
	for _, line := range strings.Split(w.Logs(), "\n") {
		var m struct {
			attachTimes
			Message  string `json:"message"`
			VolumeID string `json:"volume_id"`
		}
		if !strings.Contains(line, "attached for downloads") || json.Unmarshal([]byte(line), &m) != nil || m.VolumeID != volumeID {
			continue
		}
		last, found = m.attachTimes, true
	}
	return last, found
}

// prefill writes a file of n zero bytes and syncs it: its pages stay in
// the page cache, clean.
func prefill(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for off := int64(0); off < n; off += int64(len(zero)) {
		if _, err := f.Write(zero[:min(int64(len(zero)), n-off)]); err != nil {
			return err
		}
	}
	return f.Sync()
}

// evict writes every dirty page back (so that the timed read does not
// compete with writeback) and drops the files' pages from the page cache,
// so that the next timed read of them comes from the disk.
func evict(paths ...string) error {
	syscall.Sync()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = unix.Fdatasync(int(f.Fd()))
		if err == nil {
			err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("evict %s: %w", p, err)
		}
	}
	return nil
}
