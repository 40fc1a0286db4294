// Command worker runs cinderport jobs: it takes upload, export and delete
// jobs from NATS JetStream, moves image bytes between S3 staging and Cinder
// volumes, and serves downloads over HTTP. With nothing configured it runs
// all-in-one: nats-server and an S3 endpoint in-process, volumes as files.
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
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if err != errUsage {
			fmt.Fprintln(os.Stderr, "worker:", err)
		}
		os.Exit(1)
	}
}

var errUsage = fmt.Errorf("usage")

func run(ctx context.Context, args, env []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, env, stderr)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, stdout, stderr)
}
