package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/cinder"
	"github.com/cinderport/cinderport/internal/embedded"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/httpapi"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/metrics"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/state"
)

func newLogger(c config, stderr io.Writer) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(c.logLevel)
	if err != nil || c.logLevel == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level: want debug, info, warn or error, got %q", c.logLevel)
	}
	var w io.Writer = stderr
	console := c.logFormat == "console"
	if c.logFormat == "auto" {
		if f, ok := stderr.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				console = true
			}
		}
	} else if c.logFormat != "json" && c.logFormat != "console" {
		return zerolog.Nop(), fmt.Errorf("--log-format: want json, console or auto, got %q", c.logFormat)
	}
	if console {
		w = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Str("worker", c.name).Logger(), nil
}

// serve runs the worker until ctx is cancelled, then shuts down in order:
// stop taking jobs, let running jobs finish within the grace period (then
// interrupt and hand them back), stop the HTTP API, release attachments,
// close the journal and the embedded servers.
func serve(ctx context.Context, c config, stdout, stderr io.Writer) error {
	log, err := newLogger(c, stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	journal, err := state.Open(filepath.Join(c.dataDir, "journal.db"), state.Options{})
	if err != nil {
		return err
	}
	defer journal.Close()

	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()

	m := metrics.New()
	deps, err := wire(ctx, c, log, journal, m, &cleanups)
	if err != nil {
		return err
	}
	q, err := queue.Open(ctx, deps.nc, queue.Config{Replicas: c.replicas, AckWait: c.ackWait, MaxDeliver: c.maxDeliver, Worker: c.name,
		AsyncError: func(jobID string, err error) {
			log.Warn().Err(err).Str("job_id", jobID).Msg("record a job's status")
		}})
	if err != nil {
		return fmt.Errorf("open the job queue: %w", err)
	}

	volumes, connector, events := m.Volumes(deps.volumes), m.Connector(deps.connector), m.Events(q)
	copier := &blockio.Copier{}
	downloads := &jobs.Downloads{Volumes: volumes, Connector: connector, Copier: copier, Log: log, Store: storeTag(c)}
	runner := &jobs.Runner{Evict: downloads.Evict,
		Volumes: volumes, Connector: connector, Staging: deps.staging, Journal: journal,
		Copier: copier, Events: events, Log: log,
		Config: jobs.RunnerConfig{Worker: c.name, Store: c.store, CheckpointEvery: c.checkpointEvery, MaxImageSize: c.maxImageSize,
			TrustStagedSize: &c.trustStagedSize},
	}
	worker := &jobs.Worker{Runner: runner, Events: events, Log: log,
		Config: jobs.WorkerConfig{Name: c.name, MaxAttempts: c.maxDeliver, Heartbeat: c.ackWait / 3}}

	auth, err := downloadAuth(c, deps.cinder)
	if err != nil {
		return err
	}
	api := &httpapi.Server{Downloads: downloads, Log: log, Auth: auth, Metrics: m.Handler(), Profiling: c.pprof, Ready: func(ctx context.Context) error {
		if !deps.nc.IsConnected() {
			return errors.New("NATS is not connected")
		}
		if _, err := deps.staging.Stat(ctx, jobs.Object{Bucket: c.bucket, Key: "readyz-probe"}); err != nil && !errors.Is(err, jobs.ErrNotFound) {
			return fmt.Errorf("S3 staging: %w", err)
		}
		if _, err := deps.volumes.Capabilities(ctx); err != nil {
			return fmt.Errorf("volume service: %w", err)
		}
		return nil
	}}
	ln, err := net.Listen("tcp", c.httpAddr)
	if err != nil {
		return fmt.Errorf("HTTP API: %w", err)
	}
	srv := &http.Server{Handler: m.HTTP(api.Handler(), httpapi.Route), ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes: 64 << 10, IdleTimeout: 2 * time.Minute}
	httpDone := make(chan error, 1)
	httpURL := "http://" + ln.Addr().String()
	if c.httpCert != "" {
		httpURL = "https://" + ln.Addr().String()
		go func() { httpDone <- srv.ServeTLS(ln, c.httpCert, c.httpKey) }()
	} else {
		go func() { httpDone <- srv.Serve(ln) }()
	}

	if deps.endpoints != nil {
		ep := *deps.endpoints
		ep.HTTPURL, ep.PID, ep.Bucket = httpURL, os.Getpid(), c.bucket
		if err := ep.Write(c.dataDir); err != nil {
			return err
		}
		defer embedded.RemoveEndpoints(c.dataDir)
	}
	log.Info().Str("zone", c.zone).Int("concurrency", c.slots).Str("http", httpURL).
		Bool("embedded", deps.endpoints != nil).Msg("worker ready")

	reconciler := &jobs.Reconciler{Volumes: volumes, Journal: journal, Statuses: q, Log: log.With().Str("component", "reconciler").Logger(),
		Store: storeTag(c), Running: q.Running, Grace: c.reconcileGrace, DryRun: c.reconcileDry}
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Minute)
	if _, err := reconciler.Run(rctx); err != nil {
		log.Warn().Err(err).Msg("start-up reconciliation")
	}
	rcancel()

	// Jobs run under their own context: a shutdown first stops taking jobs
	// and gives running ones the grace period, then interrupts them.
	jobCtx, interrupt := context.WithCancel(context.WithoutCancel(ctx))
	defer interrupt()
	advisories := make(chan error, 1)
	go func() { advisories <- q.WatchMaxDeliveries(jobCtx) }()
	reconciled := make(chan struct{})
	go func() {
		defer close(reconciled)
		t := time.NewTicker(c.reconcileEvery)
		defer t.Stop()
		for {
			select {
			case <-jobCtx.Done():
				return
			case <-t.C:
				if _, err := reconciler.Run(jobCtx); err != nil && jobCtx.Err() == nil {
					log.Warn().Err(err).Msg("reconciliation")
				}
			}
		}
	}()
	consumeDone := make(chan error, 1)
	go func() {
		consumeDone <- q.Consume(ctx, c.zone, c.slots, func(_ context.Context, d jobs.Delivery) {
			d, done := m.Delivery(d)
			defer done()
			worker.Handle(jobCtx, d)
		})
	}()
	bridgeDone := make(chan error, 1)
	if c.watchPrefix != "" {
		go func() { bridgeDone <- runBridge(ctx, c, q, deps.staging, log) }()
	} else {
		bridgeDone <- nil
	}

	var consumeErr error
	select {
	case <-ctx.Done():
		log.Info().Dur("grace", c.grace).Msg("shutting down: no new jobs; running jobs may finish")
		select {
		case consumeErr = <-consumeDone:
		case <-time.After(c.grace):
			log.Warn().Msg("grace period over: interrupting running jobs and handing them back")
			interrupt()
			consumeErr = <-consumeDone
		}
	case consumeErr = <-consumeDone:
		log.Error().Err(consumeErr).Msg("job consumer stopped")
	}
	interrupt()
	<-advisories
	<-reconciled
	if err := <-bridgeDone; err != nil {
		log.Error().Err(err).Msg("notification bridge")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.Flush(sctx); err != nil {
		log.Warn().Err(err).Msg("flush job statuses")
	}
	srv.Shutdown(sctx)
	<-httpDone
	downloads.Close()
	log.Info().Msg("worker stopped")
	if consumeErr != nil && !errors.Is(consumeErr, context.Canceled) {
		return consumeErr
	}
	return nil
}

var _ jobs.Staging = (*staging.Client)(nil)

// downloadAuth builds the download API's authenticator from
// --download-auth: never none.
func downloadAuth(c config, keystone *cinder.Client) (httpapi.Authenticator, error) {
	var methods httpapi.AnyOf
	for _, method := range c.downloadMethods() {
		switch method {
		case "signed-url":
			var keys [][]byte
			var err error
			if c.downloadKeyFile != "" {
				keys, err = httpapi.LoadKeys(c.downloadKeyFile)
			} else {
				keys, err = httpapi.EnsureKeyFile(filepath.Join(c.dataDir, "download.key"))
			}
			if err != nil {
				return nil, err
			}
			methods = append(methods, httpapi.SignedURLs{Keys: keys})
		case "keystone":
			var roles []string
			for _, r := range strings.Split(c.downloadRoles, ",") {
				if r = strings.TrimSpace(r); r != "" {
					roles = append(roles, r)
				}
			}
			methods = append(methods, &httpapi.KeystoneTokens{Validator: tokenValidator{keystone}, Roles: roles})
		}
	}
	return methods, nil
}

// storeTag is the store name this worker's volumes carry (MetaStore).
func storeTag(c config) string {
	if c.store != "" {
		return c.store
	}
	return "default"
}

// tokenValidator checks download tokens with the Keystone the Cinder client
// authenticates against.
type tokenValidator struct{ c *cinder.Client }

func (v tokenValidator) ValidateToken(ctx context.Context, token string) (httpapi.Token, error) {
	info, err := v.c.ValidateToken(ctx, token)
	if errors.Is(err, cinder.ErrInvalidToken) {
		return httpapi.Token{}, fmt.Errorf("%w: %v", httpapi.ErrUnauthenticated, err)
	}
	if err != nil {
		return httpapi.Token{}, err
	}
	return httpapi.Token{ProjectID: info.ProjectID, Roles: info.Roles, ExpiresAt: info.ExpiresAt}, nil
}
