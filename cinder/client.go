package cinder

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"github.com/gophercloud/gophercloud/v2/openstack/utils"
	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

// Microversions this client relies on.
const (
	// attachMicroversion: attachments with a mode (3.54), completed with
	// os-complete (3.44). Every request is made at this version when the
	// server has it.
	attachMicroversion = "3.54"
	// onlineExtendMicroversion: extending an in-use volume.
	onlineExtendMicroversion = "3.42"
)

// Client is Cinder for the runner: volumes and attachments in one project,
// over gophercloud. It satisfies jobs.Volumes and is safe for concurrent
// use.
type Client struct {
	cfg       Config
	log       zerolog.Logger
	sc        *gophercloud.ServiceClient
	maxMajor  int
	maxMinor  int
	connector Connector
}

var _ jobs.Volumes = (*Client)(nil)

// Option configures New.
type Option func(*options)

type options struct {
	log   zerolog.Logger
	store HostStore
	httpc *http.Client
}

// WithLogger sets the logger (default: none).
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.log = l } }

// WithHostStore keeps this host's generated initiator name in store when
// Config.Connector.InitiatorName is empty (the worker passes its journal).
func WithHostStore(s HostStore) Option { return func(o *options) { o.store = s } }

// WithHTTPClient makes every request (Keystone's and Cinder's) through c;
// Config's TLS and timeout settings then do not apply.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.httpc = c } }

// New authenticates with Keystone, finds Cinder in the catalog (or at
// Config.EndpointTemplate), discovers its microversions and resolves this
// host's connector. It fails on an invalid configuration, refused
// credentials, a missing endpoint or an unreachable service.
func New(ctx context.Context, cfg Config, opts ...Option) (*Client, error) {
	o := options{log: zerolog.Nop()}
	for _, opt := range opts {
		opt(&o)
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, err := openstack.NewClient(cfg.AuthURL)
	if err != nil {
		return nil, fmt.Errorf("keystone URL %s: %w", cfg.AuthURL, err)
	}
	if o.httpc != nil {
		pc.HTTPClient = *o.httpc
	} else {
		tc, err := cfg.tlsConfig()
		if err != nil {
			return nil, err
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		pc.HTTPClient = http.Client{Transport: tr, Timeout: cfg.RequestTimeout}
	}
	pc.UserAgent.Prepend("cinderport")
	pc.RetryFunc = retryIdempotent(cfg.HTTPRetries, time.Second, o.log)
	pc.RetryBackoffFunc = backoffTooMany
	pc.MaxBackoffRetries = uint(max(cfg.HTTPRetries, 1))
	if err := openstack.Authenticate(ctx, pc, cfg.authOptions()); err != nil {
		return nil, classify("authenticate with Keystone at "+cfg.AuthURL, err)
	}
	endpoint, err := volumeEndpoint(pc, cfg)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: o.log,
		sc: &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: endpoint, Type: "block-storage"}}
	if err := c.discover(ctx); err != nil {
		return nil, err
	}
	if c.connector, err = cfg.Connector.resolve(ctx, endpoint, o.store); err != nil {
		return nil, err
	}
	c.log.Info().Str("endpoint", endpoint).Str("max_microversion", c.maxVersion()).
		Str("microversion", c.sc.Microversion).Str("initiator", c.connector.InitiatorName).
		Str("connector_ip", c.connector.IP).Msg("cinder client ready")
	return c, nil
}

// volumeEndpoint is Cinder's endpoint from the template or the catalog.
func volumeEndpoint(pc *gophercloud.ProviderClient, cfg Config) (string, error) {
	if cfg.EndpointTemplate != "" {
		project, err := tokenProject(pc)
		if err != nil {
			return "", err
		}
		u := strings.NewReplacer("%(tenant)s", project, "%(project_id)s", project, "%(tenant_id)s", project).
			Replace(cfg.EndpointTemplate)
		return gophercloud.NormalizeURL(u), nil
	}
	eo := gophercloud.EndpointOpts{Type: cfg.ServiceType, Aliases: []string{cfg.ServiceType}, Name: cfg.ServiceName,
		Region: cfg.Region, Availability: gophercloud.Availability(cfg.Interface)}
	u, err := pc.EndpointLocator(eo)
	if err != nil {
		return "", fmt.Errorf("find Cinder (%s:%s:%s, region %q) in the catalog: %w",
			cfg.ServiceType, cfg.ServiceName, cfg.Interface, cfg.Region, err)
	}
	return gophercloud.NormalizeURL(u), nil
}

// tokenProject is the id of the project the token is scoped to.
func tokenProject(pc *gophercloud.ProviderClient) (string, error) {
	r, ok := pc.GetAuthResult().(tokens.CreateResult)
	if !ok {
		return "", errors.New("the token does not name its project")
	}
	p, err := r.ExtractProject()
	if err != nil || p == nil || p.ID == "" {
		return "", fmt.Errorf("the token is not scoped to a project: %v", err)
	}
	return p.ID, nil
}

// discover reads Cinder's microversion range from its version document and
// pins requests at 3.54 when available (else at the server's maximum: the
// volume calls work, attachments are refused).
func (c *Client) discover(ctx context.Context) error {
	root, err := utils.BaseVersionedEndpoint(c.sc.Endpoint)
	if err != nil {
		return fmt.Errorf("cinder endpoint %s: %w", c.sc.Endpoint, err)
	}
	versions, err := utils.GetServiceVersions(ctx, c.sc.ProviderClient, root, true)
	if err != nil {
		return classify("discover Cinder's API versions at "+root, err)
	}
	for _, v := range versions {
		if v.Major == 3 {
			c.maxMajor, c.maxMinor = v.MaxMajor, v.MaxMinor
		}
	}
	if c.maxMajor != 3 {
		return fmt.Errorf("cinder at %s does not offer API v3 with microversions", root)
	}
	if c.supports(attachMicroversion) {
		c.sc.Microversion = attachMicroversion
	} else {
		c.sc.Microversion = c.maxVersion()
	}
	return nil
}

func (c *Client) maxVersion() string { return fmt.Sprintf("%d.%d", c.maxMajor, c.maxMinor) }

// supports reports whether the server's maximum microversion is at least v.
func (c *Client) supports(v string) bool {
	major, minor, err := utils.ParseMicroversion(v)
	if err != nil {
		return false
	}
	return c.maxMajor > major || c.maxMajor == major && c.maxMinor >= minor
}

// Capabilities implements jobs.Volumes: online extend needs microversion
// 3.42.
func (c *Client) Capabilities(ctx context.Context) (jobs.Capabilities, error) {
	return jobs.Capabilities{OnlineExtend: c.supports(onlineExtendMicroversion)}, nil
}

// Connector returns this host's connector as sent to Cinder; the iSCSI
// initiator must log in with its InitiatorName.
func (c *Client) Connector() Connector { return c.connector }

// Microversions returns the microversion requests are made at and the
// server's maximum.
func (c *Client) Microversions() (used, serverMax string) { return c.sc.Microversion, c.maxVersion() }

// retryIdempotent retries a request that failed on the way (connection
// refused or reset, timeout) or with a 5xx, up to n times with a delay of
// base doubling to 8 base — but only for methods that are safe to repeat. A
// POST (create, actions) is left to the job's own retry, which finds what
// the first attempt did.
func retryIdempotent(n int, base time.Duration, log zerolog.Logger) gophercloud.RetryFunc {
	return func(ctx context.Context, method, url string, _ *gophercloud.RequestOpts, err error, failCount uint) error {
		if int(failCount) > n || !idempotent(method) || !transient(err) {
			return err
		}
		delay := min(base<<(failCount-1), 8*base)
		logged := err
		if rc, ok := responseError(err); ok {
			logged = newAPIError(rc) // not gophercloud's text: it holds the whole body
		}
		log.Debug().Str("method", method).Uint("attempt", failCount).Dur("delay", delay).Err(logged).Msg("cinder request failed: retrying")
		return sleep(ctx, delay, err)
	}
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// transient reports whether err is a network failure or a 5xx that a
// repeat may not meet.
func transient(err error) bool {
	if rc, ok := responseError(err); ok {
		return rc.Actual >= 500 && rc.Actual != http.StatusNotImplemented
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed)
}

// backoffTooMany waits as a 429 asks (Retry-After, 1 s when absent, at
// most a minute) before gophercloud repeats the request.
func backoffTooMany(ctx context.Context, rc *gophercloud.ErrUnexpectedResponseCode, _ error, _ uint) error {
	d := retryAfter(rc.ResponseHeader)
	if d == 0 {
		d = time.Second
	}
	return sleep(ctx, min(d, time.Minute), rc)
}

// sleep waits d, or returns fail when ctx ends first.
func sleep(ctx context.Context, d time.Duration, fail error) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fail
	case <-t.C:
		return nil
	}
}

// certPool reads PEM certificates.
func certPool(pem []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}
