package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

func open(t *testing.T, path string) *Journal {
	t.Helper()
	j, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestConditionalSaves(t *testing.T) {
	ctx := context.Background()
	j := open(t, filepath.Join(t.TempDir(), "j.db"))
	defer j.Close()
	if _, err := j.Load(ctx, "a"); !errors.Is(err, jobs.ErrNotFound) {
		t.Fatalf("load missing: %v", err)
	}
	r1, err := j.Save(ctx, jobs.Record{JobID: "a", Step: jobs.StepAccepted})
	if err != nil || r1.Rev != 1 {
		t.Fatalf("create: rev %d, %v", r1.Rev, err)
	}
	if _, err := j.Save(ctx, jobs.Record{JobID: "a"}); !errors.Is(err, jobs.ErrConflict) {
		t.Fatalf("second create: %v, want conflict", err)
	}
	r1.Step, r1.VolumeID = jobs.StepCopying, "vol-1"
	r2, err := j.Save(ctx, r1)
	if err != nil || r2.Rev != 2 {
		t.Fatalf("update: rev %d, %v", r2.Rev, err)
	}
	if _, err := j.Save(ctx, r1); !errors.Is(err, jobs.ErrConflict) {
		t.Fatalf("stale update: %v, want conflict", err)
	}
	got, err := j.Load(ctx, "a")
	if err != nil || got.VolumeID != "vol-1" || got.Step != jobs.StepCopying || got.Rev != 2 {
		t.Fatalf("load: %+v %v", got, err)
	}
	list, _ := j.List(ctx)
	if len(list) != 1 {
		t.Fatalf("list: %d records", len(list))
	}
	if err := j.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := j.Delete(ctx, "a"); err != nil {
		t.Fatalf("delete missing: %v", err)
	}
}

func TestPruneAndMeta(t *testing.T) {
	ctx := context.Background()
	j := open(t, filepath.Join(t.TempDir(), "j.db"))
	defer j.Close()
	j.Save(ctx, jobs.Record{JobID: "old-done", Outcome: "completed", Updated: time.Now().Add(-48 * time.Hour)})
	j.Save(ctx, jobs.Record{JobID: "old-running", Updated: time.Now().Add(-48 * time.Hour)})
	j.Save(ctx, jobs.Record{JobID: "new-done", Outcome: "completed", Updated: time.Now()})
	if n, err := j.Prune(ctx, 24*time.Hour); err != nil || n != 1 {
		t.Fatalf("prune: %d, %v", n, err)
	}
	if _, err := j.Load(ctx, "old-running"); err != nil {
		t.Errorf("prune removed an unfinished job: %v", err)
	}
	if _, err := j.Meta(ctx, "iqn"); !errors.Is(err, jobs.ErrNotFound) {
		t.Fatalf("missing meta: %v", err)
	}
	j.SetMeta(ctx, "iqn", "iqn.2026-11.io.cinderport:host")
	if v, _ := j.Meta(ctx, "iqn"); v != "iqn.2026-11.io.cinderport:host" {
		t.Fatalf("meta: %q", v)
	}
}

func TestSecondOpenerFailsClearly(t *testing.T) {
	p := filepath.Join(t.TempDir(), "j.db")
	j := open(t, p)
	defer j.Close()
	// bbolt's flock is per open file description: a second Open in this
	// process contends like a second process would.
	if _, err := Open(p, Options{LockTimeout: 100 * time.Millisecond}); err == nil {
		t.Fatal("a second opener got the journal")
	}
}

// TestCrashKeepsCommittedRecords runs a child that saves records as fast as
// it can and is SIGKILLed; every record it reported saved must be there.
func TestCrashKeepsCommittedRecords(t *testing.T) {
	if p := os.Getenv("STATE_CRASH_CHILD"); p != "" {
		j, err := Open(p, Options{})
		if err != nil {
			os.Exit(3)
		}
		for i := 0; ; i++ {
			if _, err := j.Save(context.Background(), jobs.Record{JobID: "job-" + strconv.Itoa(i), Step: jobs.StepCopying}); err != nil {
				os.Exit(4)
			}
			fmt.Println(i)
		}
	}
	path := filepath.Join(t.TempDir(), "j.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashKeepsCommittedRecords$")
	cmd.Env = append(os.Environ(), "STATE_CRASH_CHILD="+path)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	last := -1
	deadline := time.Now().Add(10 * time.Second)
	var acc []byte
	for last < 50 && time.Now().Before(deadline) {
		n, err := out.Read(buf)
		acc = append(acc, buf[:n]...)
		for {
			i := indexByte(acc, '\n')
			if i < 0 {
				break
			}
			if v, err := strconv.Atoi(string(acc[:i])); err == nil {
				last = v
			}
			acc = acc[i+1:]
		}
		if err != nil {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if last < 0 {
		t.Fatal("child saved nothing")
	}
	j := open(t, path)
	defer j.Close()
	for i := 0; i <= last; i++ {
		if _, err := j.Load(context.Background(), "job-"+strconv.Itoa(i)); err != nil {
			t.Fatalf("record %d of %d lost after SIGKILL: %v", i, last, err)
		}
	}
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
