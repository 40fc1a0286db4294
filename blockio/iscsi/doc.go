// Package iscsi is a userspace iSCSI initiator in pure Go (RFC 7143, SBC-4),
// so that workers attach Cinder volumes without root, iscsid or kernel
// modules.
//
// A Session logs in (CHAP and mutual CHAP with MD5, operational
// negotiation with CRC32C digests, redirects, alternative paths) and runs
// the full feature phase on one connection at ErrorRecoveryLevel 0:
// commands are pipelined within the target's CmdSN window; write data goes
// as immediate data, unsolicited Data-Out and Data-Out answering R2Ts,
// written with writev straight from the caller's buffer; Data-In lands at
// its buffer offset and may carry the status (phase collapse); the target's
// NOP pings are answered and a silent connection is pinged. UNIT ATTENTION
// is retried, BUSY and NOT READY backed off. A lost connection (error,
// unanswered ping, command timeout) is re-established with the same ISID,
// which reinstates the session: the target drops the old one and its
// commands, and ours are reissued in order.
//
// A Device presents a LUN as a jobs.Device with READ(16), WRITE(16) and
// SYNCHRONIZE CACHE(16). Its writes are sized to what the target takes
// without an R2T plus one burst, QueueDepth of them in flight: tgtd, the
// reference target, pays per queued command for every Data-Out PDU. The
// Connector turns Cinder's connection info into a Device; Discover runs a
// SendTargets discovery. Secrets never appear in errors or logs.
package iscsi
