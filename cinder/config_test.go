package cinder

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

func TestParseGlanceConfig(t *testing.T) {
	const full = `[DEFAULT]
enabled_backends = fast:cinder
# cinder_store_password = not-this-one

[glance_store]
cinder_store_auth_address = https://keystone.example:5000/v3
cinder_store_user_name = glance
cinder_store_password = p#ss;word = with spaces
cinder_store_user_domain_name = Users
cinder_store_project_name = service
cinder_store_project_domain_name = Projects
cinder_catalog_info = volumev3:cinderv3:internalURL
cinder_endpoint_template = https://cinder.example:8776/v3/%(tenant)s
cinder_os_region_name = RegionTwo
cinder_api_insecure = True
cinder_ca_certificates_file = /etc/ssl/ca.pem
cinder_http_retries = 7
cinder_state_transition_timeout = 42
cinder_volume_type = images
cinder_attachment_retry_attempts = 9
cinder_use_multipath = yes
cinder_mount_point_base = /ignored
`
	got, err := ParseGlanceConfig([]byte(full), "")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		AuthURL: "https://keystone.example:5000/v3", Username: "glance", Password: "p#ss;word = with spaces",
		UserDomainName: "Users", ProjectName: "service", ProjectDomainName: "Projects",
		ServiceType: "volumev3", ServiceName: "cinderv3", Interface: "internalURL",
		EndpointTemplate: "https://cinder.example:8776/v3/%(tenant)s", Region: "RegionTwo",
		Insecure: true, CACertFile: "/etc/ssl/ca.pem", HTTPRetries: 7, StateTransitionTimeout: 42 * time.Second,
		VolumeType: "images", AttachmentRetryAttempts: 9, Connector: Connector{Multipath: true},
	}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", plain(got), plain(want))
	}
	if err := got.withDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseGlanceConfigDefaults(t *testing.T) {
	got, err := ParseGlanceConfig([]byte(`[fast]
cinder_store_auth_address = http://127.0.0.1:5000
cinder_store_application_credential_id = abc
cinder_store_application_credential_secret = "quoted secret"
`), "fast")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{AuthURL: "http://127.0.0.1:5000", ApplicationCredentialID: "abc",
		ApplicationCredentialSecret: "quoted secret", UserDomainName: "Default", ProjectDomainName: "Default",
		ServiceType: "volumev3", Interface: "publicURL", HTTPRetries: 3,
		StateTransitionTimeout: 300 * time.Second, AttachmentRetryAttempts: 5}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", plain(got), plain(want))
	}
	if err := got.withDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
	if d := got.withDefaults(); d.Interface != "public" || d.PollInterval != 500*time.Millisecond ||
		d.PollMaxInterval != 15*time.Second || d.AttachmentRetryInterval != time.Second {
		t.Fatalf("defaults: %+v", plain(d))
	}
}

func TestParseGlanceConfigErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"no section":     "[DEFAULT]\nfoo = bar\n",
		"catalog info":   "[glance_store]\ncinder_catalog_info = volumev3\n",
		"no interface":   "[glance_store]\ncinder_catalog_info = volumev3:cinder:\n",
		"retries":        "[glance_store]\ncinder_http_retries = many\n",
		"negative":       "[glance_store]\ncinder_attachment_retry_attempts = -1\n",
		"boolean":        "[glance_store]\ncinder_api_insecure = perhaps\n",
		"not ini at all": "[glance_store\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseGlanceConfig([]byte(doc), ""); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestLoadGlanceConfigNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "glance-api.conf")
	os.WriteFile(path, []byte("[DEFAULT]\n"), 0o600)
	_, err := LoadGlanceConfig(path, "")
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "[glance_store]") {
		t.Fatalf("%v", err)
	}
}

func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Config
	}{{
		name: "separate domains",
		env: map[string]string{"OS_AUTH_URL": "http://k:5000/v3", "OS_USERNAME": "glance", "OS_PASSWORD": "pw",
			"OS_PROJECT_NAME": "service", "OS_USER_DOMAIN_NAME": "Users", "OS_PROJECT_DOMAIN_ID": "p-dom",
			"OS_REGION_NAME": "R", "OS_INTERFACE": "internal", "OS_CACERT": "/ca.pem"},
		want: Config{AuthURL: "http://k:5000/v3", Username: "glance", Password: "pw", ProjectName: "service",
			UserDomainName: "Users", ProjectDomainID: "p-dom", Region: "R", Interface: "internal", CACertFile: "/ca.pem"},
	}, {
		name: "OS_DOMAIN_NAME for both, tenant spellings",
		env: map[string]string{"OS_AUTH_URL": "http://k:5000", "OS_USERID": "u1", "OS_PASSWORD": "pw",
			"OS_TENANT_ID": "t1", "OS_DOMAIN_NAME": "D", "OS_ENDPOINT_TYPE": "adminURL"},
		want: Config{AuthURL: "http://k:5000", UserID: "u1", Password: "pw", ProjectID: "t1",
			UserDomainName: "D", ProjectDomainName: "D", Interface: "adminURL"},
	}, {
		name: "application credential",
		env: map[string]string{"OS_AUTH_URL": "http://k:5000", "OS_APPLICATION_CREDENTIAL_ID": "ac",
			"OS_APPLICATION_CREDENTIAL_SECRET": "s"},
		want: Config{AuthURL: "http://k:5000", ApplicationCredentialID: "ac", ApplicationCredentialSecret: "s"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromEnv(func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", plain(got), plain(tc.want))
			}
			if err := got.withDefaults().Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := FromEnv(func(string) string { return "" }); err == nil {
		t.Error("an empty environment was accepted")
	}
}

const cloudsYAML = `clouds:
  lab:
    auth:
      auth_url: http://keystone:5000/v3
      username: glance
      project_name: service
      user_domain_name: Users
      project_domain_id: p-dom
    region_name: RegionOne
    interface: internal
  appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: http://keystone:5000/v3
      application_credential_id: ac-id
      application_credential_secret: ac-secret
  system:
    auth:
      auth_url: http://keystone:5000/v3
      username: admin
      password: pw
      user_domain_name: Default
      system_scope: all
`

const secureYAML = `clouds:
  lab:
    auth:
      password: from-secure-yaml
`

func TestFromCloudsYAML(t *testing.T) {
	dir := t.TempDir()
	clouds := filepath.Join(dir, "clouds.yaml")
	os.WriteFile(clouds, []byte(cloudsYAML), 0o600)
	os.WriteFile(filepath.Join(dir, "secure.yaml"), []byte(secureYAML), 0o600)
	t.Setenv("OS_REGION_NAME", "")
	t.Setenv("OS_INTERFACE", "")
	t.Setenv("OS_CACERT", "")

	got, err := FromCloudsYAML("lab", clouds)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{AuthURL: "http://keystone:5000/v3", Username: "glance", Password: "from-secure-yaml",
		UserDomainName: "Users", ProjectName: "service", ProjectDomainID: "p-dom", Region: "RegionOne",
		Interface: "internal"}
	if got != want {
		t.Fatalf("got  %+v\nwant %+v", plain(got), plain(want))
	}
	ac, err := FromCloudsYAML("appcred", clouds)
	if err != nil {
		t.Fatal(err)
	}
	if ac.ApplicationCredentialID != "ac-id" || ac.ApplicationCredentialSecret != "ac-secret" {
		t.Fatalf("application credential: %+v", plain(ac))
	}
	if err := ac.withDefaults().Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := FromCloudsYAML("system", clouds); err == nil {
		t.Error("a system-scoped cloud was accepted")
	}
	if _, err := FromCloudsYAML("nope", clouds); err == nil {
		t.Error("an unknown cloud was accepted")
	}
	via, err := FromEnv(func(k string) string {
		return map[string]string{"OS_CLOUD": "lab", "OS_CLIENT_CONFIG_FILE": clouds}[k]
	})
	if err != nil || via != want {
		t.Fatalf("OS_CLOUD: %+v, %v", plain(via), err)
	}
}

func TestValidate(t *testing.T) {
	good := Config{AuthURL: "http://k:5000/v3", Username: "u", Password: "p", UserDomainName: "Default",
		ProjectName: "service", ProjectDomainName: "Default"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"no auth url":        func(c *Config) { c.AuthURL = "" },
		"auth url not http":  func(c *Config) { c.AuthURL = "keystone:5000" },
		"no user":            func(c *Config) { c.Username = "" },
		"no password":        func(c *Config) { c.Password = "" },
		"no project":         func(c *Config) { c.ProjectName = "" },
		"no project domain":  func(c *Config) { c.ProjectDomainName = "" },
		"no user domain":     func(c *Config) { c.UserDomainName = "" },
		"app cred no secret": func(c *Config) { c.ApplicationCredentialID = "x" },
		"bad interface":      func(c *Config) { c.Interface = "private" },
		"bad endpoint":       func(c *Config) { c.EndpointTemplate = "not a url" },
		"negative timeout":   func(c *Config) { c.StateTransitionTimeout = -time.Second },
		"negative retries":   func(c *Config) { c.HTTPRetries = -1 },
		"bad initiator":      func(c *Config) { c.Connector.InitiatorName = "my host" },
		"bad connector IP":   func(c *Config) { c.Connector.IP = "host.example" },
		"app cred name no user": func(c *Config) {
			c.Username, c.ApplicationCredentialName, c.ApplicationCredentialSecret = "", "n", "s"
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := good
			mod(&c)
			if err := c.Validate(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestConfigStringHidesSecrets(t *testing.T) {
	c := Config{AuthURL: "http://u:hunter2-in-url@k", Username: "u", Password: "hunter2-password", ApplicationCredentialSecret: "ac-secret-99"}
	for _, s := range []string{c.String(), fmtV(c)} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "ac-secret") {
			t.Fatalf("%s", s)
		}
	}
}

func TestAuthOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want gophercloud.AuthOptions
	}{{
		name: "names",
		cfg: Config{AuthURL: "http://k", Username: "u", Password: "p", UserDomainName: "UD",
			ProjectName: "pr", ProjectDomainName: "PD"},
		want: gophercloud.AuthOptions{IdentityEndpoint: "http://k", Username: "u", Password: "p", DomainName: "UD",
			AllowReauth: true, Scope: &gophercloud.AuthScope{ProjectName: "pr", DomainName: "PD"}},
	}, {
		name: "ids win over names",
		cfg: Config{AuthURL: "http://k", Username: "u", Password: "p", UserDomainName: "UD", UserDomainID: "ud",
			ProjectName: "pr", ProjectID: "pid", ProjectDomainName: "PD"},
		want: gophercloud.AuthOptions{IdentityEndpoint: "http://k", Username: "u", Password: "p", DomainID: "ud",
			AllowReauth: true, Scope: &gophercloud.AuthScope{ProjectID: "pid"}},
	}, {
		name: "user id",
		cfg:  Config{AuthURL: "http://k", UserID: "uid", UserDomainName: "ignored", Password: "p", ProjectID: "pid"},
		want: gophercloud.AuthOptions{IdentityEndpoint: "http://k", UserID: "uid", Password: "p",
			AllowReauth: true, Scope: &gophercloud.AuthScope{ProjectID: "pid"}},
	}, {
		name: "application credential",
		cfg: Config{AuthURL: "http://k", ApplicationCredentialID: "ac", ApplicationCredentialSecret: "s",
			Username: "ignored", ProjectName: "ignored"},
		want: gophercloud.AuthOptions{IdentityEndpoint: "http://k", ApplicationCredentialID: "ac",
			ApplicationCredentialSecret: "s", AllowReauth: true},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.cfg.authOptions()
			if got.Scope != nil && tc.want.Scope != nil && *got.Scope == *tc.want.Scope {
				got.Scope = tc.want.Scope
			}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
			// gophercloud accepts what we build.
			if _, err := got.ToTokenV3CreateMap(nil); err != nil {
				t.Fatal(err)
			}
			if _, err := got.ToTokenV3ScopeMap(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func fmtV(c Config) string { return fmt.Sprintf("%v %+v %#v %s", c, c, c, c) }

// plain is Config without its redacting String, for test failures.
type plain Config

func FuzzParseGlanceConfig(f *testing.F) {
	f.Add([]byte("[glance_store]\ncinder_store_auth_address = http://k:5000/v3\ncinder_store_user_name = glance\ncinder_store_password = secret#1\ncinder_store_project_name = service\n"), "")
	f.Add([]byte("[fast]\ncinder_catalog_info = volumev3:cinderv3:internalURL\ncinder_http_retries = 2\ncinder_api_insecure = yes\n"), "fast")
	f.Add([]byte("[glance_store]\ncinder_state_transition_timeout = 0\n  continued\n"), "glance_store")
	f.Fuzz(func(t *testing.T, data []byte, section string) {
		c, err := ParseGlanceConfig(data, section)
		if err != nil {
			return
		}
		_ = c.withDefaults().Validate()
		if c.HTTPRetries < 0 || c.AttachmentRetryAttempts < 0 || c.StateTransitionTimeout <= 0 {
			t.Fatalf("out of range: %+v", plain(c))
		}
		if len(c.Password) > 3 && strings.Contains(c.String(), c.Password) && !strings.Contains(c.AuthURL+c.Username+c.ProjectName+c.Region+c.ServiceType+c.ServiceName+c.Interface+c.EndpointTemplate+c.VolumeType, c.Password) {
			t.Fatalf("String shows the password: %s", c)
		}
	})
}
