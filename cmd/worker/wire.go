package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/blockio/iscsi"
	"github.com/cinderport/cinderport/blockio/kernel"
	"github.com/cinderport/cinderport/cinder"
	"github.com/cinderport/cinderport/cinder/local"
	"github.com/cinderport/cinderport/internal/embedded"
	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/jobs/queue/natsembed"
	"github.com/cinderport/cinderport/metrics"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/staging/s3local"
	"github.com/cinderport/cinderport/state"
)

// deps are the adapters the worker runs on.
type deps struct {
	nc        *nats.Conn
	volumes   jobs.Volumes
	connector jobs.Connector
	staging   *staging.Client
	// cinder is set when volumes are Cinder's (it also validates Keystone
	// tokens for downloads).
	cinder *cinder.Client
	// endpoints is set when any part runs embedded: the enqueue CLI on this
	// machine reads it from the data dir.
	endpoints *embedded.Endpoints
}

// wire builds the adapters: the configured services, or the embedded
// default for each one that is not configured.
func wire(ctx context.Context, c config, log zerolog.Logger, journal *state.Journal, m *metrics.Metrics, cleanups *[]func()) (deps, error) {
	var d deps
	natsURL := c.natsURL
	if natsURL == "" {
		host, port, err := splitHostPort(c.natsListen)
		if err != nil {
			return d, fmt.Errorf("--nats-listen: %w", err)
		}
		srv, err := natsembed.Start(natsembed.Options{Dir: filepath.Join(c.dataDir, "nats"), Host: host, Port: port, Name: c.name})
		if err != nil {
			return d, err
		}
		*cleanups = append(*cleanups, srv.Shutdown)
		natsURL = srv.ClientURL()
		d.endpoints = &embedded.Endpoints{NATSURL: natsURL}
		log.Info().Str("url", natsURL).Msg("embedded nats-server started")
	}
	nc, err := queue.Connect(ctx, natsURL, queue.ConnectOptions{Name: "cinderport-worker-" + c.name, CredsFile: c.natsCreds,
		RootCAs: c.natsCA, CertFile: c.natsCert, KeyFile: c.natsKey})
	if err != nil {
		return d, fmt.Errorf("connect to NATS: %w", err)
	}
	*cleanups = append(*cleanups, nc.Close)
	d.nc = nc

	s3 := staging.Config{Endpoint: c.s3Endpoint, AccessKey: c.s3AccessKey, SecretKey: c.s3SecretKey, Region: c.s3Region,
		Secure: c.s3TLS || c.s3CA != "", CAFile: c.s3CA}
	if c.s3Endpoint == "" {
		s3.AccessKey, s3.SecretKey = "cinderport-"+s3local.RandomKey(8), s3local.RandomKey(40)
		srv, err := s3local.New(filepath.Join(c.dataDir, "staging"), s3.AccessKey, s3.SecretKey, log.With().Str("component", "s3local").Logger())
		if err != nil {
			return d, err
		}
		if err := srv.Listen("127.0.0.1:0"); err != nil {
			return d, err
		}
		*cleanups = append(*cleanups, func() { srv.Close() })
		s3.Endpoint = srv.Addr()
		if d.endpoints == nil {
			d.endpoints = &embedded.Endpoints{NATSURL: natsURL}
		}
		d.endpoints.S3Endpoint, d.endpoints.S3AccessKey, d.endpoints.S3SecretKey = s3.Endpoint, s3.AccessKey, s3.SecretKey
		log.Info().Str("endpoint", s3.Endpoint).Msg("embedded S3 endpoint started")
	}
	if d.staging, err = staging.New(s3); err != nil {
		return d, err
	}
	if c.s3Endpoint == "" {
		if err := d.staging.EnsureBucket(ctx, c.bucket); err != nil {
			return d, err
		}
	}

	router := blockio.Router{"local": blockio.FileConnector{}}
	d.connector = router
	if c.embeddedVolumes() {
		vols, err := local.Open(filepath.Join(c.dataDir, "volumes"), local.Options{Host: c.name})
		if err != nil {
			return d, err
		}
		d.volumes = vols
		return d, nil
	}
	ccfg, err := c.cinderSettings()
	if err != nil {
		return d, err
	}
	if c.initiatorIQN != "" {
		ccfg.Connector.InitiatorName = c.initiatorIQN
	} else if c.connector == "kernel" {
		// Cinder must export the volume to the name iscsid logs in with.
		if ccfg.Connector.InitiatorName, err = kernel.InitiatorName(kernel.DefaultInitiatorFile); err != nil {
			return d, fmt.Errorf("--connector kernel: %w (or set --initiator-iqn)", err)
		}
	}
	cl, err := cinder.New(ctx, ccfg, cinder.WithHostStore(journal), cinder.WithLogger(log.With().Str("component", "cinder").Logger()))
	if err != nil {
		return d, fmt.Errorf("cinder: %w", err)
	}
	d.volumes, d.cinder = cl, cl
	if c.connector == "kernel" {
		kc, err := kernel.NewConnector(kernel.Config{Log: log.With().Str("component", "iscsiadm").Logger()})
		if err != nil {
			return d, err
		}
		router["iscsi"] = kc
		return d, nil
	}
	ic, err := iscsi.NewConnector(iscsi.Config{InitiatorName: cl.Connector().InitiatorName,
		Log: log.With().Str("component", "iscsi").Logger(), OnEvent: m.SessionEvent})
	if err != nil {
		return d, err
	}
	router["iscsi"] = ic
	return d, nil
}

// cinderSettings reads the Cinder configuration: --cinder-config (a
// glance-api.conf's store section), else OS_CLOUD's clouds.yaml entry, else
// the OS_* variables.
func (c config) cinderSettings() (cinder.Config, error) {
	if c.cinderConfig != "" {
		return cinder.LoadGlanceConfig(c.cinderConfig, c.cinderSection)
	}
	return cinder.FromEnv(c.getenv)
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	if n == 0 {
		n = -1 // nats-server: a random port
	}
	return h, n, nil
}
