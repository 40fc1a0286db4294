package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cinderport/cinderport/internal/embedded"
	"github.com/cinderport/cinderport/internal/envflag"
	"github.com/cinderport/cinderport/jobs"
)

// config is everything the worker is told. Empty NATS URL, S3 endpoint and
// Cinder settings select the embedded default for that part.
type config struct {
	dataDir   string
	name      string
	zone      string
	store     string
	slots     int
	httpAddr  string
	httpCert  string
	httpKey   string
	logLevel  string
	pprof     bool
	logFormat string

	natsURL    string
	natsCreds  string
	natsCA     string
	natsCert   string
	natsKey    string
	natsListen string
	replicas   int
	ackWait    time.Duration
	maxDeliver int
	grace      time.Duration

	s3Endpoint, s3AccessKey, s3SecretKey, s3Region, bucket string
	s3TLS                                                  bool
	s3CA                                                   string

	cinderConfig  string // a glance-api.conf-style file with a [glance_store] section
	cinderSection string
	getenv        func(string) string // the worker's environment, for OS_* and clouds.yaml
	osCloud       string
	initiatorIQN  string
	connector     string

	checkpointEvery int64
	maxImageSize    int64
	trustStagedSize bool

	reconcileEvery time.Duration
	reconcileGrace time.Duration
	reconcileDry   bool

	downloadKeyFile string
	downloadAuth    string
	downloadRoles   string

	watchPrefix, watchSubject, watchARN string
}

const usageHead = `Usage: worker [flags]

Runs cinderport jobs. Every flag can also be set with the CINDERPORT_* variable shown.
With no --nats-url, --s3-endpoint or OpenStack credentials, the worker runs all-in-one:
an in-process nats-server, an in-process S3 endpoint and volumes as local files, all under
--data-dir, and writes its endpoints to <data-dir>/endpoints.json for the enqueue CLI.

OpenStack credentials come from --cinder-config (the glance_store option names:
cinder_store_auth_address, cinder_store_user_name, ...), from OS_CLOUD (clouds.yaml),
or from OS_AUTH_URL and the other OS_* variables.

Flags:
`

func parseConfig(args, env []string, stderr io.Writer) (config, error) {
	var c config
	fs := envflag.New("worker", "CINDERPORT_", env, stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usageHead); fs.PrintDefaults() }
	host, _ := os.Hostname()
	fs.String(&c.dataDir, "data-dir", embedded.DefaultDataDir(), "the worker's state: journal, and for the embedded default its NATS store, staging and volumes")
	fs.String(&c.name, "name", host, "this worker's name in events and logs")
	fs.String(&c.zone, "zone", jobs.DefaultZone, "the zone whose jobs this worker takes")
	fs.String(&c.store, "store", "", "store name: locations are cinder://STORE/VOLUME_ID (default: cinder://VOLUME_ID)")
	fs.Int(&c.slots, "concurrency", 2, "jobs run at once")
	fs.String(&c.httpAddr, "http-addr", "127.0.0.1:8780", "HTTP API (health, readiness, metrics, downloads) listen address")
	fs.String(&c.httpCert, "http-tls-cert", "", "serve the HTTP API over TLS with this certificate (PEM; with --http-tls-key)")
	fs.String(&c.httpKey, "http-tls-key", "", "the HTTP API's TLS private key (PEM)")
	fs.String(&c.downloadAuth, "download-auth", "signed-url", "how downloads authenticate, comma separated: signed-url (HMAC with --download-key-file), keystone (X-Auth-Token checked against Keystone; needs Cinder credentials)")
	fs.String(&c.downloadKeyFile, "download-key-file", "", "download signing keys, one hex key per line, the first signs (default: <data-dir>/download.key, created if missing)")
	fs.String(&c.downloadRoles, "download-roles", "admin,service", "keystone download auth: a token needs one of these roles")
	fs.Bool(&c.pprof, "pprof", false, "serve Go runtime profiles on the HTTP API under /debug/pprof/ (for diagnosis; keep the API on a private address)")
	fs.String(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.String(&c.logFormat, "log-format", "auto", "json, console, or auto (console on a terminal)")
	fs.String(&c.natsURL, "nats-url", "", "NATS server URL(s), comma separated; empty: run nats-server in-process")
	fs.String(&c.natsCreds, "nats-creds", "", "NATS credentials file")
	fs.String(&c.natsCA, "nats-tls-ca", "", "CA bundle that signed the NATS servers' certificates (enables TLS)")
	fs.String(&c.natsCert, "nats-tls-cert", "", "client certificate for NATS (PEM; with --nats-tls-key)")
	fs.String(&c.natsKey, "nats-tls-key", "", "client private key for NATS (PEM)")
	fs.String(&c.natsListen, "nats-listen", "127.0.0.1:0", "embedded default: where the in-process nats-server listens")
	fs.Int(&c.replicas, "stream-replicas", 1, "replicas of the JetStream streams and status bucket (3 on a 3-node cluster)")
	fs.Duration(&c.ackWait, "ack-wait", 60*time.Second, "JetStream AckWait; running jobs send a heartbeat every third of it")
	fs.Int(&c.maxDeliver, "max-deliver", 5, "attempts per job before it is dead-lettered")
	fs.Duration(&c.grace, "shutdown-grace", 30*time.Second, "on SIGTERM, how long running jobs may finish before they are interrupted and handed back")
	fs.String(&c.s3Endpoint, "s3-endpoint", "", "S3 staging endpoint host:port; empty: run an S3 endpoint in-process")
	fs.String(&c.s3AccessKey, "s3-access-key", "", "S3 access key")
	fs.String(&c.s3SecretKey, "s3-secret-key", "", "S3 secret key")
	fs.String(&c.s3Region, "s3-region", "", "S3 region")
	fs.Bool(&c.s3TLS, "s3-tls", false, "use HTTPS for S3")
	fs.String(&c.s3CA, "s3-tls-ca", "", "CA bundle for the S3 endpoint's certificate (implies --s3-tls)")
	fs.String(&c.bucket, "bucket", "cinderport-staging", "staging bucket (created in the embedded default)")
	fs.String(&c.cinderConfig, "cinder-config", "", "a glance-api.conf (or a file with its [glance_store] section): Cinder credentials and options under glance_store's cinder option names")
	fs.String(&c.cinderSection, "cinder-config-section", "", "the section of --cinder-config to read (default glance_store; with Glance multi-store, the store's name)")
	fs.String(&c.initiatorIQN, "initiator-iqn", "", "this host's iSCSI initiator name (default: generated once and kept in the journal)")
	fs.String(&c.connector, "connector", "userspace", "how iSCSI volumes attach: userspace (built-in initiator, no privileges) or kernel (iscsiadm)")
	fs.Int64(&c.checkpointEvery, "checkpoint-every", 64<<20, "bytes copied between durable upload checkpoints (they do not stall the copy; a retry re-reads at most this much)")
	fs.Duration(&c.reconcileEvery, "reconcile-every", 10*time.Minute, "how often leaked attachments and volumes are looked for (also once at start-up)")
	fs.Duration(&c.reconcileGrace, "reconcile-grace", time.Hour, "a volume of a failed, cancelled or silent job is deleted only after this long")
	fs.Bool(&c.reconcileDry, "reconcile-dry-run", false, "only log what the reconciler would detach and delete")
	fs.Bool(&c.trustStagedSize, "trust-staged-size", true, "size the volume of an upload of unknown size (size 0) from the staged object's size; false: start at 1 GiB and grow the volume as data arrives (doubling; online where Cinder allows), for staging stores whose object sizes are not final")
	fs.Int64(&c.maxImageSize, "max-image-size", 0, "refuse uploads larger than this many bytes (0: the job format's limit, 64 TiB)")
	fs.String(&c.watchPrefix, "watch-prefix", "", "run the notification bridge: objects created under this prefix of --bucket become upload jobs (e.g. incoming/)")
	fs.String(&c.watchSubject, "watch-subject", "cinderport.s3.events", "with --watch-prefix: the NATS subject the S3 server publishes bucket notifications on")
	fs.String(&c.watchARN, "watch-arn", "", "with --watch-prefix: make --bucket notify this S3 target of created objects (MinIO: arn:minio:sqs::<ID>:nats)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, errUsage
		}
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	c.getenv = fs.Getenv
	c.osCloud = fs.Getenv("OS_CLOUD")
	if c.osCloud == "" && fs.Getenv("OS_AUTH_URL") != "" {
		c.osCloud = "env"
	}
	return c, c.validate()
}

// downloadMethods lists --download-auth's methods.
func (c config) downloadMethods() []string {
	var out []string
	for _, m := range strings.Split(c.downloadAuth, ",") {
		if m = strings.TrimSpace(m); m != "" {
			out = append(out, m)
		}
	}
	return out
}

// embeddedVolumes reports whether volumes are local files.
func (c config) embeddedVolumes() bool { return c.cinderConfig == "" && c.osCloud == "" }

func (c config) validate() error {
	var errs []error
	if c.slots < 1 || c.slots > 256 {
		errs = append(errs, fmt.Errorf("--concurrency must be 1..256, got %d", c.slots))
	}
	if c.ackWait < 5*time.Second {
		errs = append(errs, fmt.Errorf("--ack-wait must be at least 5s, got %v", c.ackWait))
	}
	if c.replicas < 1 || c.replicas > 5 {
		errs = append(errs, fmt.Errorf("--stream-replicas must be 1..5, got %d", c.replicas))
	}
	if c.maxDeliver < 1 {
		errs = append(errs, fmt.Errorf("--max-deliver must be at least 1"))
	}
	if c.connector != "userspace" && c.connector != "kernel" {
		errs = append(errs, fmt.Errorf("--connector must be userspace or kernel, got %q", c.connector))
	}
	if (c.s3Endpoint == "") != (c.s3AccessKey == "" && c.s3SecretKey == "") {
		errs = append(errs, errors.New("--s3-endpoint, --s3-access-key and --s3-secret-key go together"))
	}
	if (c.httpCert == "") != (c.httpKey == "") {
		errs = append(errs, errors.New("--http-tls-cert and --http-tls-key go together"))
	}
	if (c.natsCert == "") != (c.natsKey == "") {
		errs = append(errs, errors.New("--nats-tls-cert and --nats-tls-key go together"))
	}
	if c.reconcileEvery < time.Minute || c.reconcileGrace < time.Minute {
		errs = append(errs, errors.New("--reconcile-every and --reconcile-grace must be at least 1m"))
	}
	if c.maxImageSize < 0 || c.maxImageSize > jobs.MaxImageSize {
		errs = append(errs, fmt.Errorf("--max-image-size must be 0..%d", jobs.MaxImageSize))
	}
	for _, m := range c.downloadMethods() {
		if m != "signed-url" && m != "keystone" {
			errs = append(errs, fmt.Errorf("--download-auth: unknown method %q (want signed-url, keystone)", m))
		}
		if m == "keystone" && c.embeddedVolumes() {
			errs = append(errs, errors.New("--download-auth keystone needs Keystone: set --cinder-config or OS_CLOUD/OS_AUTH_URL"))
		}
	}
	if len(c.downloadMethods()) == 0 {
		errs = append(errs, errors.New("--download-auth: name at least one method; downloads are never unauthenticated"))
	}
	if c.watchPrefix == "" && c.watchARN != "" {
		errs = append(errs, errors.New("--watch-arn needs --watch-prefix"))
	}
	if strings.HasPrefix(c.watchPrefix, "/") || strings.ContainsAny(c.watchSubject, " \t*>") || c.watchSubject == "" {
		errs = append(errs, fmt.Errorf("--watch-prefix must not start with / and --watch-subject must be a plain subject"))
	}
	if c.checkpointEvery < 1<<20 {
		errs = append(errs, fmt.Errorf("--checkpoint-every must be at least 1 MiB"))
	}
	// The job validator owns the rules for zone and store names.
	j := jobs.Job{Version: jobs.Version, ID: "x", Kind: jobs.KindDelete, VolumeID: "x", Zone: c.zone, Store: c.store}
	if err := j.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--zone/--store: %w", err))
	}
	return errors.Join(errs...)
}
