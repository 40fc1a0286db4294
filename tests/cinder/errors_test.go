package cinder_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/cinder"
	"github.com/cinderport/cinderport/jobs"
)

// TestQuotaExceeded: a project whose quota is too small gets permanent
// errors (Cinder's 413), for a create and for an extend, naming the volume.
func TestQuotaExceeded(t *testing.T) {
	l := labFor(t)
	ctx := ctxFor(t)
	p := l.CreateProject(t, fmt.Sprintf("quota-%d", rand.Uint32()))
	l.SetQuota(t, p.ID, map[string]int{"gigabytes": 1, "volumes": 2})
	cfg := labConfig(l)
	cfg.Username, cfg.Password, cfg.ProjectName = p.User, p.Password, p.Name
	c := newClient(t, cfg)

	_, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-too-big", SizeGiB: 2})
	if !jobs.IsPermanent(err) || !strings.Contains(err.Error(), "image-too-big") || !strings.Contains(err.Error(), "413") {
		t.Fatalf("create over quota: %v, want a permanent 413 naming the volume", err)
	}
	v, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-fits", SizeGiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.DeleteVolume(context.WithoutCancel(ctx), v.ID) })
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	err = c.ExtendVolume(ctx, v.ID, 2)
	if !jobs.IsPermanent(err) || !strings.Contains(err.Error(), v.ID) {
		t.Fatalf("extend over quota: %v, want a permanent error naming the volume", err)
	}
	if got, err := c.GetVolume(ctx, v.ID); err != nil || got.Status != "available" || got.SizeGiB != 1 {
		t.Fatalf("after a refused extend: %+v, %v", got, err)
	}
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	l.WaitNoLeaks(t)
}

// TestAttachVolumeBeingDeleted: Cinder refuses an attachment of a volume in
// status "deleting" with a 400 like any transitional state; the client does
// not retry it: the volume will never be attachable. The error is permanent
// and wraps jobs.ErrNotFound (the volume is as good as gone).
func TestAttachVolumeBeingDeleted(t *testing.T) {
	l := labFor(t)
	ctx := ctxFor(t)
	cfg := labConfig(l)
	cfg.AttachmentRetryAttempts = 3
	c := newClient(t, cfg)
	v, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-being-deleted", SizeGiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	release := l.HoldVolumeDeletes(t)
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, v.ID, "deleting"); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []jobs.AttachMode{jobs.ReadWrite, jobs.ReadOnly} {
		_, err := c.Attach(ctx, v.ID, mode)
		if !jobs.IsPermanent(err) || !errors.Is(err, jobs.ErrNotFound) || !strings.Contains(err.Error(), v.ID) {
			t.Errorf("attach (%s) a volume being deleted: %v, want a permanent error wrapping ErrNotFound and naming the volume", mode, err)
		}
	}
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		t.Errorf("delete a volume being deleted: %v", err)
	}
	release()
	if _, err := c.WaitVolume(ctx, v.ID, "deleted"); !errors.Is(err, jobs.ErrNotFound) {
		t.Fatalf("wait for the deletion to end: %v", err)
	}
	l.WaitNoLeaks(t)
}

// syncBuffer collects log output written from the test's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestAttachWhileAttached: a second attachment of a non-multiattach volume
// is refused while the first exists (the volume is reserved or in use). The
// client retries; when the first is deleted meanwhile the retry succeeds,
// and when it is not, the client gives up with a retryable error that says
// when to come back.
func TestAttachWhileAttached(t *testing.T) {
	l := labFor(t)
	ctx := ctxFor(t)
	cfg := labConfig(l)
	cfg.AttachmentRetryAttempts = 3
	cfg.AttachmentRetryInterval = 100 * time.Millisecond
	c := newClient(t, cfg)
	v, err := c.CreateVolume(ctx, jobs.VolumeSpec{Name: "image-busy", SizeGiB: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.DeleteVolume(context.WithoutCancel(ctx), v.ID) })
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	first, err := c.Attach(ctx, v.ID, jobs.ReadWrite)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Attach(ctx, v.ID, jobs.ReadOnly)
	if err == nil || jobs.IsPermanent(err) || jobs.RetryDelay(err) <= 0 || !strings.Contains(err.Error(), v.ID) {
		t.Fatalf("attach a volume attached elsewhere: %v, want a retryable error with a delay, naming the volume", err)
	}

	// Now the holder lets go while the second attachment is being retried.
	var logs syncBuffer
	cfg.AttachmentRetryAttempts = 10
	cfg.AttachmentRetryInterval = 200 * time.Millisecond
	patient := newClient(t, cfg, cinder.WithLogger(zerolog.New(&logs).Level(zerolog.DebugLevel)))
	type result struct {
		att jobs.Attachment
		err error
	}
	done := make(chan result, 1)
	go func() {
		att, err := patient.Attach(ctx, v.ID, jobs.ReadOnly)
		done <- result{att, err}
	}()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(logs.String(), "retrying") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Detach(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("attach once the first attachment is gone: %v", r.err)
	}
	if !strings.Contains(logs.String(), "attachment refused while the volume is busy") {
		t.Error("the second attachment succeeded without having been refused first")
	}
	if err := c.Detach(ctx, r.att.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitVolume(ctx, v.ID, "available"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	l.WaitNoLeaks(t)
}
