// Package jobs is cinderport's domain: the v1 job wire format and its
// validation, the upload/download/export/delete state machine (the Runner),
// typed errors that decide between retry and dead letter, progress events,
// and the small interfaces the runner consumes (Volumes, Connector, Device,
// Staging, Journal, Events).
//
// The package imports no transport and no client library. Adapters — the
// Cinder client, the iSCSI initiator, the S3 staging client, the bbolt
// journal, the JetStream queue — import jobs and satisfy its interfaces.
package jobs
