package cinder

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/config/clouds"
	"gopkg.in/ini.v1"
)

// GlanceSection is the section of glance-api.conf that holds the cinder
// store's options when Glance has a single store.
const GlanceSection = "glance_store"

// LoadGlanceConfig reads a glance-api.conf (oslo.config ini syntax) and
// returns the configuration its cinder store options describe, in section
// (GlanceSection when ""; with Glance multi-store, the store's name).
func LoadGlanceConfig(path, section string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read glance configuration: %w", err)
	}
	c, err := ParseGlanceConfig(b, section)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseGlanceConfig reads glance_store's cinder options from an
// oslo.config ini document, with glance_store's defaults for the options it
// does not set:
//
//	cinder_store_auth_address, cinder_store_user_name, cinder_store_password,
//	cinder_store_user_domain_name (Default), cinder_store_project_name,
//	cinder_store_project_domain_name (Default),
//	cinder_store_application_credential_id / _secret,
//	cinder_catalog_info (volumev3::publicURL), cinder_endpoint_template,
//	cinder_os_region_name, cinder_api_insecure, cinder_ca_certificates_file,
//	cinder_http_retries (3), cinder_state_transition_timeout (300, seconds),
//	cinder_volume_type, cinder_attachment_retry_attempts (5),
//	cinder_use_multipath (False).
//
// Other options are ignored. As in oslo.config, a "#" or ";" starts a
// comment only at the start of a line, so secrets may contain them.
func ParseGlanceConfig(data []byte, section string) (Config, error) {
	if section == "" {
		section = GlanceSection
	}
	f, err := ini.LoadSources(ini.LoadOptions{
		IgnoreInlineComment:        true,
		IgnoreContinuation:         true,
		AllowPythonMultilineValues: true,
	}, bytes.NewReader(data))
	if err != nil {
		return Config{}, fmt.Errorf("parse glance configuration: %w", err)
	}
	if !f.HasSection(section) {
		return Config{}, fmt.Errorf("glance configuration has no [%s] section", section)
	}
	s := f.Section(section)
	get := func(key, def string) string {
		if k, err := s.GetKey(key); err == nil {
			return strings.TrimSpace(k.String())
		}
		return def
	}
	var errs []error
	integer := func(key string, def int) int {
		v := get(key, "")
		if v == "" {
			return def
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s = %q is not a non-negative integer", key, v))
			return def
		}
		return n
	}
	boolean := func(key string) bool {
		v := get(key, "")
		if v == "" {
			return false
		}
		b, err := parseOsloBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s = %q: %w", key, v, err))
		}
		return b
	}
	c := Config{
		AuthURL:                     get("cinder_store_auth_address", ""),
		Username:                    get("cinder_store_user_name", ""),
		Password:                    get("cinder_store_password", ""),
		UserDomainName:              get("cinder_store_user_domain_name", "Default"),
		ProjectName:                 get("cinder_store_project_name", ""),
		ProjectDomainName:           get("cinder_store_project_domain_name", "Default"),
		ApplicationCredentialID:     get("cinder_store_application_credential_id", ""),
		ApplicationCredentialSecret: get("cinder_store_application_credential_secret", ""),
		EndpointTemplate:            get("cinder_endpoint_template", ""),
		Region:                      get("cinder_os_region_name", ""),
		Insecure:                    boolean("cinder_api_insecure"),
		CACertFile:                  get("cinder_ca_certificates_file", ""),
		HTTPRetries:                 integer("cinder_http_retries", DefaultHTTPRetries),
		StateTransitionTimeout:      time.Duration(integer("cinder_state_transition_timeout", 300)) * time.Second,
		VolumeType:                  get("cinder_volume_type", ""),
		AttachmentRetryAttempts:     integer("cinder_attachment_retry_attempts", DefaultAttachmentRetryAttempts),
		Connector:                   Connector{Multipath: boolean("cinder_use_multipath")},
	}
	info := get("cinder_catalog_info", "volumev3::publicURL")
	parts := strings.Split(info, ":")
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
		errs = append(errs, fmt.Errorf("cinder_catalog_info = %q is not <service_type>:<service_name>:<interface>", info))
	} else {
		c.ServiceType, c.ServiceName, c.Interface = parts[0], parts[1], parts[2]
	}
	// A timeout of 0 means "do not wait" to nobody: keep the default.
	if c.StateTransitionTimeout == 0 {
		c.StateTransitionTimeout = DefaultStateTransitionTimeout
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("[%s]: %w", section, errors.Join(errs...))
	}
	return c, nil
}

// parseOsloBool accepts oslo.config's spellings of a boolean.
func parseOsloBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "true", "yes", "on", "1", "y", "t":
		return true, nil
	case "false", "no", "off", "0", "n", "f":
		return false, nil
	}
	return false, errors.New("not a boolean")
}

// FromCloudsYAML reads cloud from clouds.yaml (and secure.yaml beside it)
// with gophercloud's parser. files are the places to look, in order; none
// means the usual ones ($OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
// ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml). As the
// OpenStack clients do, OS_REGION_NAME and OS_INTERFACE override the
// cloud's region and interface.
func FromCloudsYAML(cloud string, files ...string) (Config, error) {
	opts := []clouds.ParseOption{clouds.WithCloudName(cloud)}
	if len(files) > 0 {
		opts = append(opts, clouds.WithLocations(files...))
	}
	ao, eo, tlsConfig, err := clouds.Parse(opts...)
	if err != nil {
		return Config{}, fmt.Errorf("clouds.yaml: %w", err)
	}
	c := Config{
		AuthURL:                     ao.IdentityEndpoint,
		Username:                    ao.Username,
		UserID:                      ao.UserID,
		Password:                    ao.Password,
		UserDomainID:                ao.DomainID,
		ApplicationCredentialID:     ao.ApplicationCredentialID,
		ApplicationCredentialName:   ao.ApplicationCredentialName,
		ApplicationCredentialSecret: ao.ApplicationCredentialSecret,
		Region:                      eo.Region,
		Interface:                   string(eo.Availability),
	}
	if c.UserDomainID == "" {
		c.UserDomainName = ao.DomainName
	}
	if s := ao.Scope; s != nil {
		if s.System || s.TrustID != "" {
			return Config{}, fmt.Errorf("clouds.yaml: cloud %q is not scoped to a project", cloud)
		}
		c.ProjectID, c.ProjectName = s.ProjectID, s.ProjectName
		c.ProjectDomainID, c.ProjectDomainName = s.DomainID, s.DomainName
	}
	if tlsConfig != nil && (tlsConfig.RootCAs != nil || tlsConfig.InsecureSkipVerify || len(tlsConfig.Certificates) > 0) {
		c.TLSConfig = tlsConfig
	}
	return c, nil
}

// FromEnv reads the OpenStack client environment through getenv (os.Getenv
// in production): OS_CLOUD (with OS_CLIENT_CONFIG_FILE) selects a cloud of
// clouds.yaml; otherwise OS_AUTH_URL, OS_USERNAME / OS_USER_ID, OS_PASSWORD,
// OS_USER_DOMAIN_NAME / _ID, OS_PROJECT_NAME / _ID (or OS_TENANT_*),
// OS_PROJECT_DOMAIN_NAME / _ID, OS_DOMAIN_NAME / _ID (the fallback for both
// domains), OS_APPLICATION_CREDENTIAL_ID / _NAME / _SECRET, OS_REGION_NAME,
// OS_INTERFACE and OS_CACERT. Unlike gophercloud's AuthOptionsFromEnv it
// honours the user's and the project's domains separately.
func FromEnv(getenv func(string) string) (Config, error) {
	if cloud := getenv("OS_CLOUD"); cloud != "" {
		var files []string
		if f := getenv("OS_CLIENT_CONFIG_FILE"); f != "" {
			files = append(files, f)
		}
		return FromCloudsYAML(cloud, files...)
	}
	first := func(keys ...string) string {
		for _, k := range keys {
			if v := strings.TrimSpace(getenv(k)); v != "" {
				return v
			}
		}
		return ""
	}
	c := Config{
		AuthURL:                     first("OS_AUTH_URL"),
		Username:                    first("OS_USERNAME"),
		UserID:                      first("OS_USER_ID", "OS_USERID"),
		Password:                    getenv("OS_PASSWORD"),
		UserDomainName:              first("OS_USER_DOMAIN_NAME"),
		UserDomainID:                first("OS_USER_DOMAIN_ID"),
		ProjectName:                 first("OS_PROJECT_NAME", "OS_TENANT_NAME"),
		ProjectID:                   first("OS_PROJECT_ID", "OS_TENANT_ID"),
		ProjectDomainName:           first("OS_PROJECT_DOMAIN_NAME"),
		ProjectDomainID:             first("OS_PROJECT_DOMAIN_ID"),
		ApplicationCredentialID:     first("OS_APPLICATION_CREDENTIAL_ID"),
		ApplicationCredentialName:   first("OS_APPLICATION_CREDENTIAL_NAME"),
		ApplicationCredentialSecret: getenv("OS_APPLICATION_CREDENTIAL_SECRET"),
		Region:                      first("OS_REGION_NAME"),
		Interface:                   first("OS_INTERFACE", "OS_ENDPOINT_TYPE"),
		CACertFile:                  first("OS_CACERT"),
	}
	if c.UserDomainName == "" && c.UserDomainID == "" {
		c.UserDomainName, c.UserDomainID = first("OS_DOMAIN_NAME"), first("OS_DOMAIN_ID")
	}
	if c.ProjectDomainName == "" && c.ProjectDomainID == "" {
		c.ProjectDomainName, c.ProjectDomainID = first("OS_DOMAIN_NAME"), first("OS_DOMAIN_ID")
	}
	if c.AuthURL == "" {
		return Config{}, errors.New("OS_AUTH_URL (or OS_CLOUD) is not set")
	}
	return c, nil
}

// tlsConfig is the TLS configuration for Keystone and Cinder, or nil for
// Go's defaults.
func (c Config) tlsConfig() (*tls.Config, error) {
	if c.TLSConfig != nil {
		return c.TLSConfig, nil
	}
	if !c.Insecure && c.CACertFile == "" {
		return nil, nil
	}
	tc := &tls.Config{InsecureSkipVerify: c.Insecure}
	if c.CACertFile != "" && !c.Insecure {
		pem, err := os.ReadFile(c.CACertFile)
		if err != nil {
			return nil, fmt.Errorf("CA certificates: %w", err)
		}
		pool, err := certPool(pem)
		if err != nil {
			return nil, fmt.Errorf("CA certificates %s: %w", c.CACertFile, err)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
