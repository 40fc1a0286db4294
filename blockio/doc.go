// Package blockio attaches volumes as block devices (userspace iSCSI
// initiator, kernel initiator, local files) and moves image bytes to and
// from them: a pipelined, aligned, constant-memory copy engine with hashing.
package blockio
