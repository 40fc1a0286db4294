// Package fault is cinderport's fault suite: workers killed at random
// moments, NATS nodes lost, MinIO, Cinder and iSCSI connections cut, and
// hostile job messages — each run against real servers, counting what
// completed, what leaked and how many bytes were read again.
package fault
