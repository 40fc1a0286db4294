// Package bench measures cinderport against its peers in one run: uploads
// against qemu-img convert and a plain file copy, downloads against
// qemu-img, queue latency and throughput with 1, 2 and 4 workers, the
// worker's memory, and the real Cinder's control-plane time beside the data
// time. `make bench` runs it and prints a markdown table (or JSON); the
// figures are ratios to a peer measured in the same run, never absolute
// thresholds.
package bench
