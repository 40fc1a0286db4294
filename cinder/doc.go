// Package cinder is the block-storage adapter for OpenStack Cinder: a Client
// over gophercloud v2 that satisfies jobs.Volumes for one service project.
//
// Authentication is Keystone v3 — a password or an application credential,
// read from glance-api.conf's cinder store options (LoadGlanceConfig, with
// glance_store's option names), from clouds.yaml (FromCloudsYAML) or from
// the OS_* environment (FromEnv) — and tokens are renewed when they expire
// or are revoked. The client discovers Cinder's microversions (attachments
// need 3.54, online extend 3.42), waits for volume states with
// glance_store's backoff, creates attachments for this host's connector
// (retrying while a volume is in a transitional state), and calls the two
// volume APIs gophercloud lacks (metadata, read-only flag) with the service
// client's raw requests.
//
// Errors are classified at the boundary: a missing volume or attachment
// wraps jobs.ErrNotFound, quota and invalid requests are jobs.Permanent,
// 5xx answers, timeouts and connection failures stay retryable (with
// jobs.RetryAfter when the service says when). No error or log line carries
// a password, a token or connection info (CHAP secrets).
package cinder
