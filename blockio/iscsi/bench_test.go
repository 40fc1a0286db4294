package iscsi

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/tests/harness"
)

// tunedTarget are target settings that let an initiator stream: large
// data segments, unsolicited data, a larger first burst.
var tunedTarget = map[string]string{
	"MaxRecvDataSegmentLength": "262144",
	"InitialR2T":               "No",
	"FirstBurstLength":         "262144",
}

// BenchmarkWrite1GiB writes 1 GiB to a fresh tgtd LUN per variant and
// iteration, all durable: our initiator from memory (WriteAt + Flush), the
// production path (blockio.Copier Fill with md5 + sha512, then Flush), and
// qemu-img convert from a file with -t writeback (its flush at the end);
// qemu-img's default -t unsafe (no flush) is reported for reference. The
// page cache is synced before each run, so each pays for its own data.
// Run it with -benchtime=1x -count=N: every figure is per iteration.
//
//	go test -run '^$' -bench Write1GiB -benchtime=1x -count=5 ./blockio/iscsi
func BenchmarkWrite1GiB(b *testing.B) {
	qemu := harness.Need(b, "qemu-img", "qemu-img (Debian qemu-utils and qemu-block-extra)")
	const size = 1 << 30
	data := randomBuf(size, 42)
	src := filepath.Join(b.TempDir(), "src.img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		b.Fatal(err)
	}
	d := harness.StartTgtd(b)
	for _, v := range []struct {
		name   string
		params map[string]string
	}{{"defaults", nil}, {"tuned", tunedTarget}} {
		b.Run(v.name, func(b *testing.B) {
			fresh := func() harness.Target {
				tg := d.AddTarget(b, size, harness.TargetOptions{Params: v.params})
				syscall.Sync()
				return tg
			}
			var ours, fill, qemuWB, qemuUnsafe time.Duration
			for i := 0; i < b.N; i++ {
				tg := fresh()
				ours += timed(b, func() { writeAll(b, tg, data) })
				d.RemoveTarget(b, tg)

				tg = fresh()
				qemuWB += timed(b, func() { qemuConvert(b, qemu, src, tg, "writeback") })
				d.RemoveTarget(b, tg)

				tg = fresh()
				fill += timed(b, func() { fillHashed(b, tg, data) })
				d.RemoveTarget(b, tg)

				tg = fresh()
				qemuUnsafe += timed(b, func() { qemuConvert(b, qemu, src, tg, "unsafe") })
				d.RemoveTarget(b, tg)
			}
			n := float64(b.N)
			mbps := func(t time.Duration) float64 { return size / 1e6 / (t.Seconds() / n) }
			b.ReportMetric(ours.Seconds()/n, "ours-s")
			b.ReportMetric(qemuWB.Seconds()/n, "qemu-s")
			b.ReportMetric(fill.Seconds()/n, "fill-s")
			b.ReportMetric(qemuUnsafe.Seconds()/n, "qemu-unsafe-s")
			b.ReportMetric(mbps(ours), "ours-MB/s")
			b.ReportMetric(mbps(qemuWB), "qemu-MB/s")
			b.ReportMetric(mbps(fill), "fill-MB/s")
			b.ReportMetric(ours.Seconds()/qemuWB.Seconds(), "ours/qemu")
			b.ReportMetric(fill.Seconds()/qemuWB.Seconds(), "fill/qemu")
		})
	}
}

func timed(b *testing.B, f func()) time.Duration {
	b.Helper()
	start := time.Now()
	f()
	return time.Since(start)
}

// writeAll logs in, writes data at 0 with one WriteAt (split into commands
// in flight together), flushes and logs out.
func writeAll(b *testing.B, tg harness.Target, data []byte) {
	b.Helper()
	ctx := context.Background()
	dev, err := Open(ctx, cfgFor(tg, Auth{}), false)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.WriteAt(data, 0); err != nil {
		b.Fatal(err)
	}
	if err := dev.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

// fillHashed is the upload path: the copy engine with md5 + sha512.
func fillHashed(b *testing.B, tg harness.Target, data []byte) {
	b.Helper()
	ctx := context.Background()
	dev, err := Open(ctx, cfgFor(tg, Auth{}), false)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	dg, err := (&blockio.Copier{}).Fill(ctx, dev, bytes.NewReader(data), jobs.FillRequest{HashAlgo: "sha512"})
	if err != nil {
		b.Fatal(err)
	}
	if dg.Bytes != int64(len(data)) {
		b.Fatalf("filled %d bytes", dg.Bytes)
	}
	if err := dev.Flush(ctx); err != nil {
		b.Fatal(err)
	}
}

// qemuConvert writes src to the LUN with qemu-img (libiscsi) with the given
// cache mode: writeback flushes at the end, unsafe does not.
func qemuConvert(tb testing.TB, qemu, src string, tg harness.Target, cache string) {
	tb.Helper()
	out, err := exec.Command(qemu, "convert", "-n", "-f", "raw", "-O", "raw", "-t", cache, src, tg.URL()).CombinedOutput()
	if err != nil {
		tb.Fatalf("qemu-img convert to %s: %v: %s", tg.URL(), err, out)
	}
}

// BenchmarkRead1GiB downloads a 1 GiB LUN (tgtd defaults) into a local file
// per iteration: ours through the copy engine's Drain (8 reads of 1 MiB in
// flight, no hashing), qemu-img convert for reference; neither syncs the
// file. Run it with -benchtime=1x -count=N.
func BenchmarkRead1GiB(b *testing.B) {
	qemu := harness.Need(b, "qemu-img", "qemu-img (Debian qemu-utils and qemu-block-extra)")
	const size = 1 << 30
	d := harness.StartTgtd(b)
	tg := d.AddTarget(b, size, harness.TargetOptions{})
	writeAll(b, tg, randomBuf(size, 43))
	dir := b.TempDir()
	var ours, peer time.Duration
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(dir, "ours.img")
		syscall.Sync()
		ours += timed(b, func() { drainTo(b, tg, dst) })
		os.Remove(dst)
		dst = filepath.Join(dir, "qemu.img")
		syscall.Sync()
		peer += timed(b, func() {
			if out, err := exec.Command(qemu, "convert", "-f", "raw", "-O", "raw", tg.URL(), dst).CombinedOutput(); err != nil {
				b.Fatalf("qemu-img convert from %s: %v: %s", tg.URL(), err, out)
			}
		})
		os.Remove(dst)
	}
	n := float64(b.N)
	b.ReportMetric(ours.Seconds()/n, "ours-s")
	b.ReportMetric(peer.Seconds()/n, "qemu-s")
	b.ReportMetric(size/1e6/(ours.Seconds()/n), "ours-MB/s")
	b.ReportMetric(size/1e6/(peer.Seconds()/n), "qemu-MB/s")
	b.ReportMetric(ours.Seconds()/peer.Seconds(), "ours/qemu")
}

func drainTo(b *testing.B, tg harness.Target, path string) {
	b.Helper()
	dev, err := Open(context.Background(), cfgFor(tg, Auth{}), true)
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := (&blockio.Copier{}).Drain(context.Background(), dev, f, jobs.DrainRequest{Length: dev.Size()}); err != nil {
		b.Fatal(err)
	}
}
