// Package e2e drives the built worker and enqueue binaries end to end on
// the embedded default: the worker runs as its own process (so its memory
// and its crashes are real), and the tests talk to it through its NATS,
// S3 and HTTP endpoints like any client would.
package e2e
