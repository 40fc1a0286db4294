// Package state is the worker's journal on bbolt: one record per job (its
// step, volume, attachment, checkpoint and outcome), written conditionally
// on the record's revision, plus a little host metadata (the generated iSCSI
// initiator name). Only the worker process opens it: bbolt locks the file.
package state
