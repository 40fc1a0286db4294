package cinder

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// Defaults, as glance_store's cinder store has them.
const (
	DefaultServiceType             = "volumev3"
	DefaultInterface               = "public"
	DefaultHTTPRetries             = 3
	DefaultRequestTimeout          = 60 * time.Second
	DefaultStateTransitionTimeout  = 300 * time.Second
	DefaultPollInterval            = 500 * time.Millisecond
	DefaultPollMaxInterval         = 15 * time.Second
	DefaultAttachmentRetryAttempts = 5
	DefaultAttachmentRetryInterval = time.Second
	DefaultAttachmentRetryMax      = 10 * time.Second
)

// Config configures a Client. Zero values take the defaults above; the
// loaders (LoadGlanceConfig, FromCloudsYAML, FromEnv) fill it from the
// usual places, and flags may override any field afterwards.
//
// Authentication is Keystone v3 with a password (Username or UserID,
// Password, and a project) or an application credential (ID and Secret, or
// Name and Secret with the user). Tokens are renewed when they expire or are
// revoked.
type Config struct {
	// AuthURL is Keystone's endpoint (with or without /v3).
	AuthURL string

	Username, UserID string
	Password         string
	// UserDomainName/ID qualify Username.
	UserDomainName, UserDomainID string

	// ProjectName or ProjectID scope the token: the single service project
	// the image volumes live in.
	ProjectName, ProjectID             string
	ProjectDomainName, ProjectDomainID string

	ApplicationCredentialID, ApplicationCredentialName string
	ApplicationCredentialSecret                        string

	// Region selects the endpoint in the catalog ("" = any).
	Region string
	// ServiceType, ServiceName and Interface select Cinder in the catalog,
	// as glance_store's cinder_catalog_info does (default volumev3, any
	// name, public).
	ServiceType, ServiceName, Interface string
	// EndpointTemplate, when set, is Cinder's endpoint instead of the
	// catalog's; %(tenant)s and %(project_id)s become the project's id.
	EndpointTemplate string

	// CACertFile verifies Keystone and Cinder over HTTPS; Insecure skips
	// verification. TLSConfig, when set (the clouds.yaml loader sets it),
	// is used as is instead.
	CACertFile string
	Insecure   bool
	TLSConfig  *tls.Config

	// HTTPRetries is how many times an idempotent request (GET, PUT,
	// DELETE) is retried on a connection failure or a 5xx (default 3).
	HTTPRetries int
	// RequestTimeout bounds each HTTP request (default 60 s).
	RequestTimeout time.Duration
	// StateTransitionTimeout bounds a wait for a volume status
	// (default 300 s); the wait polls every PollInterval, doubling up to
	// PollMaxInterval (defaults 0.5 s and 15 s).
	StateTransitionTimeout        time.Duration
	PollInterval, PollMaxInterval time.Duration

	// VolumeType is used for volumes whose spec names none ("" = Cinder's
	// default type).
	VolumeType string

	// AttachmentRetryAttempts is how many times an attachment is tried
	// while the volume is in a transitional state (default 5); the delay
	// starts at AttachmentRetryInterval and doubles up to 10 s.
	AttachmentRetryAttempts int
	AttachmentRetryInterval time.Duration

	// Connector describes this host to Cinder's drivers when attaching.
	Connector Connector
}

// withDefaults fills the zero fields.
func (c Config) withDefaults() Config {
	if c.ServiceType == "" {
		c.ServiceType = DefaultServiceType
	}
	c.Interface = normalizeInterface(c.Interface)
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	if c.HTTPRetries == 0 {
		c.HTTPRetries = DefaultHTTPRetries
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.StateTransitionTimeout == 0 {
		c.StateTransitionTimeout = DefaultStateTransitionTimeout
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.PollMaxInterval == 0 {
		c.PollMaxInterval = DefaultPollMaxInterval
	}
	if c.AttachmentRetryAttempts == 0 {
		c.AttachmentRetryAttempts = DefaultAttachmentRetryAttempts
	}
	if c.AttachmentRetryInterval == 0 {
		c.AttachmentRetryInterval = DefaultAttachmentRetryInterval
	}
	return c
}

// normalizeInterface maps the catalog interface spellings of glance
// (publicURL) and clouds.yaml (public) to Keystone v3's.
func normalizeInterface(s string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "url")
}

// Validate checks that the configuration can authenticate and select an
// endpoint. It does not contact any service.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.AuthURL == "" {
		bad("the Keystone URL is required")
	} else if u, err := url.Parse(c.AuthURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("the Keystone URL %q is not an http(s) URL", c.AuthURL)
	}
	appCred := c.ApplicationCredentialID != "" || c.ApplicationCredentialName != ""
	switch {
	case appCred:
		if c.ApplicationCredentialSecret == "" {
			bad("an application credential needs its secret")
		}
		if c.ApplicationCredentialID == "" && c.Username == "" && c.UserID == "" {
			bad("an application credential given by name needs the user")
		}
	default:
		if c.Username == "" && c.UserID == "" {
			bad("a user name or id (or an application credential) is required")
		}
		if c.Password == "" {
			bad("a password (or an application credential) is required")
		}
		if c.ProjectName == "" && c.ProjectID == "" {
			bad("a project name or id is required")
		}
		if c.ProjectID == "" && c.ProjectName != "" && c.ProjectDomainName == "" && c.ProjectDomainID == "" {
			bad("project %q needs its domain (name or id)", c.ProjectName)
		}
	}
	if c.UserID == "" && c.Username != "" && c.UserDomainName == "" && c.UserDomainID == "" {
		bad("user %q needs its domain (name or id)", c.Username)
	}
	switch normalizeInterface(c.Interface) {
	case "", "public", "internal", "admin":
	default:
		bad("interface %q is not public, internal or admin", c.Interface)
	}
	if c.EndpointTemplate != "" {
		if u, err := url.Parse(strings.NewReplacer("%(tenant)s", "x", "%(project_id)s", "x").Replace(c.EndpointTemplate)); err != nil || u.Host == "" {
			bad("the endpoint template %q is not a URL", c.EndpointTemplate)
		}
	}
	for name, d := range map[string]time.Duration{"request timeout": c.RequestTimeout,
		"state transition timeout": c.StateTransitionTimeout, "poll interval": c.PollInterval,
		"poll max interval": c.PollMaxInterval, "attachment retry interval": c.AttachmentRetryInterval} {
		if d < 0 {
			bad("the %s must not be negative", name)
		}
	}
	if c.HTTPRetries < 0 {
		bad("HTTP retries must not be negative")
	}
	if c.AttachmentRetryAttempts < 0 {
		bad("attachment retry attempts must not be negative")
	}
	if err := c.Connector.validate(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("cinder configuration: %w", errors.Join(errs...))
	}
	return nil
}

// String describes the configuration without its secrets.
func (c Config) String() string {
	who := c.Username
	if who == "" {
		who = c.UserID
	}
	if c.ApplicationCredentialID != "" || c.ApplicationCredentialName != "" {
		who = "application credential " + c.ApplicationCredentialID + c.ApplicationCredentialName
	}
	project := c.ProjectName
	if project == "" {
		project = c.ProjectID
	}
	return fmt.Sprintf("cinder{auth_url=%s user=%s project=%s region=%s service=%s/%s/%s endpoint_template=%s volume_type=%s}",
		redactURL(c.AuthURL), who, project, c.Region, c.ServiceType, c.ServiceName, c.Interface,
		redactURL(c.EndpointTemplate), c.VolumeType)
}

// redactURL hides a password written into a URL.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// GoString is String: %#v must not print the secrets either.
func (c Config) GoString() string { return c.String() }

// authOptions builds gophercloud's options. They allow re-authentication:
// a token that expires or is revoked is replaced on the next 401.
func (c Config) authOptions() gophercloud.AuthOptions {
	ao := gophercloud.AuthOptions{IdentityEndpoint: c.AuthURL, AllowReauth: true}
	if c.ApplicationCredentialID != "" || c.ApplicationCredentialName != "" {
		ao.ApplicationCredentialID = c.ApplicationCredentialID
		ao.ApplicationCredentialName = c.ApplicationCredentialName
		ao.ApplicationCredentialSecret = c.ApplicationCredentialSecret
		if c.ApplicationCredentialID == "" {
			c.userInto(&ao)
		}
		return ao
	}
	c.userInto(&ao)
	ao.Password = c.Password
	scope := &gophercloud.AuthScope{ProjectID: c.ProjectID}
	if c.ProjectID == "" {
		scope.ProjectName = c.ProjectName
		if scope.DomainID = c.ProjectDomainID; scope.DomainID == "" {
			scope.DomainName = c.ProjectDomainName
		}
	}
	ao.Scope = scope
	return ao
}

// userInto names the user: by id alone, or by name in its domain (by id if
// both are given: gophercloud takes one).
func (c Config) userInto(ao *gophercloud.AuthOptions) {
	if c.UserID != "" {
		ao.UserID = c.UserID
		return
	}
	ao.Username = c.Username
	if ao.DomainID = c.UserDomainID; ao.DomainID == "" {
		ao.DomainName = c.UserDomainName
	}
}
