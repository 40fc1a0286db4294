package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// cancel asks the workers to stop a job. A running job stops within
// moments, is cleaned up and ends as cancelled; a queued one is dropped
// when a worker takes it.
func (c *cli) cancel(ctx context.Context, args []string) int {
	var wait bool
	fa := &flagsWithArgs{Set: c.flags("cancel", "cancel JOB_ID [flags]")}
	fa.BoolVar(&wait, "wait", true, "wait until a running job has stopped, and exit 0 only if it ended as cancelled")
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	if fa.NArg() != 1 {
		fmt.Fprintln(c.stderr, "enqueue cancel: give one JOB_ID")
		return exitUsage
	}
	id := fa.Arg(0)
	if err := c.connect(ctx); err != nil {
		return c.fail("%v", err)
	}
	defer c.close()
	start := time.Now()
	ev, err := c.q.Cancel(ctx, id, "cancelled with enqueue cancel")
	if errors.Is(err, jobs.ErrNotFound) {
		return c.fail("no job %s", id)
	}
	if err != nil {
		return c.fail("cancel job %s: %v", id, err)
	}
	switch {
	case ev.State == jobs.StateCancelled:
		return c.cancelled(id, ev.State, 0, "was cancelled already")
	case ev.State.Terminal():
		c.cancelled(id, ev.State, 0, "has ended already: nothing to cancel")
		return exitFailed
	case ev.State == jobs.StateQueued || ev.State == jobs.StateRetrying || !wait:
		return c.cancelled(id, ev.State, 0, "is to be cancelled: a worker drops it when it takes it")
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var last jobs.Event
	err = c.q.Watch(ctx, id, func(ev jobs.Event) bool {
		last = ev
		return !ev.State.Terminal()
	})
	if err != nil {
		return c.fail("watch job %s: %v", id, err)
	}
	took := time.Since(start)
	if last.State != jobs.StateCancelled {
		c.cancelled(id, last.State, took, "ended "+string(last.State)+" before the cancel took effect")
		return exitFailed
	}
	return c.cancelled(id, last.State, took, "cancelled")
}

func (c *cli) cancelled(id string, st jobs.State, took time.Duration, what string) int {
	if c.output == "json" {
		c.printJSON(map[string]any{"job_id": id, "state": st, "seconds": took.Seconds()})
		return exitOK
	}
	if took > 0 {
		fmt.Fprintf(c.stdout, "job %s %s in %.2fs\n", id, what, took.Seconds())
	} else {
		fmt.Fprintf(c.stdout, "job %s %s\n", id, what)
	}
	return exitOK
}
