// Command enqueue is cinderport's client: it stages image files, enqueues
// upload, export and delete jobs, follows them, downloads images through a
// worker, and inspects the queue.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Environ(), os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK        = 0
	exitFailed    = 1 // the job or the request failed
	exitUsage     = 2
	exitDuplicate = 3 // the job id was enqueued before: nothing new was queued
)

func run(ctx context.Context, args, env []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	c := &cli{env: env, stdin: stdin, stdout: stdout, stderr: stderr}
	cmds := map[string]func(context.Context, []string) int{
		"upload":   c.upload,
		"download": c.download,
		"export":   c.export,
		"delete":   c.delete,
		"status":   c.status,
		"watch":    c.watch,
		"cancel":   c.cancel,
		"dead":     c.dead,
		"demo":     c.demo,
		"probe":    c.probe,
		"sign-url": c.signURL,
	}
	f, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "enqueue: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	return f(ctx, args[1:])
}

const usage = `enqueue — stage images, enqueue cinderport jobs, follow them, download images.

Usage:
  enqueue upload   --file PATH | --object BUCKET/KEY  [--image-id ID] [--wait] [flags]
  enqueue download VOLUME_ID [-o FILE]              stream an image from a worker (Range-capable API)
  enqueue sign-url VOLUME_ID [--url-ttl 1h]         print a signed download URL (for clients without credentials)
  enqueue export   VOLUME_ID --object BUCKET/KEY    write a volume's image back into staging
  enqueue delete   VOLUME_ID [--wait]               delete an image volume of this store
  enqueue status   JOB_ID                           the job's latest state
  enqueue watch    JOB_ID                           follow a job until it ends
  enqueue cancel   JOB_ID [--wait=false]            stop a running job (cleaned up), or drop a queued one
  enqueue dead list | replay JOB_ID|SEQ|--all       dead-lettered jobs (reason, attempts), and putting them back
  enqueue demo     [--size 256MiB]                  upload a generated image, download it, verify it
  enqueue probe    URL                              exit 0 if URL answers 200 (container health checks)

Every command takes --help for its flags. Connection flags have CINDERPORT_* variables;
with none given, enqueue uses the embedded worker that last ran in --data-dir.

Exit status: 0 done, 1 the job or request failed, 2 bad usage, 3 duplicate job id (not enqueued again).
`
