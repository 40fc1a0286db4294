// Package harness starts and stops the real servers that cinderport's tests
// run against (nats-server in-process, MinIO, tgtd, Keystone + Cinder), and
// decides what a test does when one is missing on this machine: skip with a
// message naming `make test-deps`, or fail when CINDERPORT_REQUIRE_ALL=1.
package harness
