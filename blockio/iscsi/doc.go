// Package iscsi is a userspace iSCSI initiator in pure Go (RFC 7143, SBC-3):
// login with CHAP (one-way and mutual) and operational negotiation, the full
// feature phase with many commands in flight inside the CmdSN window,
// immediate, unsolicited and R2T-solicited Data-Out, Data-In with
// phase-collapsed status, NOP ping answers, UNIT ATTENTION retries, and
// session reinstatement: a lost connection is logged in again and the
// commands that were in flight are reissued. A Device presents a LUN as a
// jobs.Device; the Connector attaches Cinder's iSCSI connection info.
//
// Workers need no root, iscsid or kernel modules to attach volumes.
package iscsi
