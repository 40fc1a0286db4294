// Package kernel attaches iSCSI volumes through the host's kernel
// initiator, for hosts that want it instead of the userspace one:
// iscsiadm creates the node record, sets CHAP, logs in, and the disk that
// udev links under /dev/disk/by-path is used as a file. Every iscsiadm run
// goes through an injected Runner (exec.CommandContext by default) with
// CHAP secrets redacted from errors and logs, and failures classified by
// iscsiadm's exit codes.
package kernel
