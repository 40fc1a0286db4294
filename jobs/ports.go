package jobs

import (
	"context"
	"io"
	"time"
)

// Volume is a block-storage volume as the runner sees it.
type Volume struct {
	ID          string
	Name        string
	Status      string // Cinder's: creating, available, reserved, attaching, in-use, extending, error, deleting, ...
	SizeGiB     int
	VolumeType  string
	Zone        string
	Multiattach bool
	ReadOnly    bool
	Metadata    map[string]string
	// Created is when the volume was created.
	Created time.Time
	// Attachments are the volume's current attachments.
	Attachments []VolumeAttachment
}

// VolumeAttachment is one attachment of a volume, on whichever host.
type VolumeAttachment struct {
	ID string
	// Host is the connector host the attachment was made for.
	Host string
}

// VolumeSpec describes a volume to create.
type VolumeSpec struct {
	Name       string
	SizeGiB    int
	VolumeType string
	Zone       string
	Metadata   map[string]string
}

// AttachMode is the access mode of an attachment.
type AttachMode string

// Attachment modes, as Cinder names them.
const (
	ReadWrite AttachMode = "rw"
	ReadOnly  AttachMode = "ro"
)

// Connection is the connection info a volume service returns for an
// attachment: the transport ("iscsi", "local", ...) and its properties
// (for iSCSI: target_portal(s), target_iqn(s), target_lun(s), auth_method,
// auth_username, auth_password, ...). Data may hold secrets: it is never
// logged, journaled or published; String redacts it.
type Connection struct {
	Driver string         `json:"driver_volume_type"`
	Data   map[string]any `json:"data"`
}

// String names the transport only: connection data may carry CHAP secrets.
func (c Connection) String() string { return "connection{" + c.Driver + "}" }

// Attachment is a volume attached to this host.
type Attachment struct {
	ID         string
	VolumeID   string
	Mode       AttachMode
	Connection Connection
}

// Capabilities tells the runner what the volume service can do.
type Capabilities struct {
	// OnlineExtend is true when an attached (in-use) volume can be extended
	// (Cinder microversion 3.42 or later).
	OnlineExtend bool
}

// Volumes is the block-storage control plane: Cinder, or the local look-alike
// of the embedded default. Methods that look a volume or attachment up return
// an error wrapping ErrNotFound when it does not exist; failures that retrying
// cannot fix (quota, invalid request) wrap PermanentError.
type Volumes interface {
	// Capabilities reports what the service supports.
	Capabilities(ctx context.Context) (Capabilities, error)
	// CreateVolume starts creating a volume and returns it (usually in
	// status "creating"); use WaitVolume for "available".
	CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error)
	// GetVolume returns the volume, or ErrNotFound.
	GetVolume(ctx context.Context, id string) (Volume, error)
	// FindVolumes returns the volumes whose metadata holds every given pair.
	FindVolumes(ctx context.Context, metadata map[string]string) ([]Volume, error)
	// WaitVolume waits until the volume's status is one of want; a volume
	// that reaches "error" (or "error_*") fails permanently, one that
	// disappears fails with ErrNotFound, and the service's transition
	// timeout bounds the wait.
	WaitVolume(ctx context.Context, id string, want ...string) (Volume, error)
	// ExtendVolume grows the volume to sizeGiB and waits for the resize to
	// finish. An attached volume needs Capabilities().OnlineExtend.
	ExtendVolume(ctx context.Context, id string, sizeGiB int) error
	// SetMetadata merges md into the volume's metadata.
	SetMetadata(ctx context.Context, id string, md map[string]string) error
	// SetReadOnly sets the volume's read-only flag.
	SetReadOnly(ctx context.Context, id string, readOnly bool) error
	// DeleteVolume deletes the volume; a volume already gone is not an error.
	DeleteVolume(ctx context.Context, id string) error
	// Attach creates an attachment for this host's connector and returns its
	// connection info. It retries while the volume is in a transitional
	// state.
	Attach(ctx context.Context, volumeID string, mode AttachMode) (Attachment, error)
	// CompleteAttachment marks the attachment in use (after connecting).
	CompleteAttachment(ctx context.Context, attachmentID string) error
	// Detach deletes the attachment; one already gone is not an error.
	Detach(ctx context.Context, attachmentID string) error
}

// Device is an attached volume as a block device. It is safe for concurrent
// use: the copy engine keeps several reads or writes in flight. Offsets and
// lengths passed to ReadAt and WriteAt are multiples of BlockSize.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Size is the device's capacity in bytes.
	Size() int64
	// BlockSize is the logical block size in bytes.
	BlockSize() int
	// Flush makes every completed write durable (SYNCHRONIZE CACHE).
	Flush(ctx context.Context) error
	// Close disconnects from the device. It does not flush.
	Close() error
}

// Refresher is implemented by devices that can re-read their capacity after
// the volume was extended online.
type Refresher interface {
	Refresh(ctx context.Context) error
}

// Connector turns an attachment's connection info into a Device.
type Connector interface {
	Connect(ctx context.Context, conn Connection, mode AttachMode) (Device, error)
}

// ObjectInfo describes a staged object.
type ObjectInfo struct {
	Object
	Size      int64
	ETag      string
	VersionID string
}

// Staging is the S3-compatible staging store. Stat and Open return an error
// wrapping ErrNotFound for a missing bucket or object.
type Staging interface {
	// Stat returns the object's size and identity.
	Stat(ctx context.Context, o Object) (ObjectInfo, error)
	// Open streams the object from offset to its end. Implementations may
	// read ahead with parallel ranged requests; memory stays bounded.
	Open(ctx context.Context, o Object, offset int64) (io.ReadCloser, error)
	// Put stores r as the object; size -1 means unknown.
	Put(ctx context.Context, o Object, r io.Reader, size int64) (ObjectInfo, error)
	// Delete removes the object; a missing object is not an error.
	Delete(ctx context.Context, o Object) error
}

// Step is where a job stands in its state machine.
type Step string

// The steps of the runner, in order for an upload.
const (
	StepAccepted  Step = "accepted"
	StepCreating  Step = "creating"
	StepAttaching Step = "attaching"
	StepCopying   Step = "copying"
	StepFlushing  Step = "flushing"
	StepDetaching Step = "detaching"
	StepFinishing Step = "finishing"
	StepCleanup   Step = "cleanup"
	StepDone      Step = "done"
)

// Checkpoint is an upload's resumable cursor: how many bytes reached the
// device durably, and the serialized state of both hashes at that offset.
type Checkpoint struct {
	Offset    int64     `json:"offset"`
	MD5State  []byte    `json:"md5_state"`
	HashState []byte    `json:"hash_state"`
	At        time.Time `json:"at"`
}

// Record is a worker's journal entry for one job.
type Record struct {
	JobID        string      `json:"job_id"`
	Job          Job         `json:"job"`
	Step         Step        `json:"step"`
	Attempts     int         `json:"attempts"`
	VolumeID     string      `json:"volume_id,omitempty"`
	AttachmentID string      `json:"attachment_id,omitempty"`
	SizeGiB      int         `json:"size_gib,omitempty"`
	Checkpoint   *Checkpoint `json:"checkpoint,omitempty"`
	Result       *Result     `json:"result,omitempty"`
	Outcome      string      `json:"outcome,omitempty"` // "", completed, failed, cancelled, lost (to another worker)
	Error        string      `json:"error,omitempty"`
	Updated      time.Time   `json:"updated"`
	// Rev is the record's revision in the journal; Save succeeds only if it
	// still matches (0 means "create").
	Rev uint64 `json:"-"`
}

// Journal persists job records on the worker so that a crash loses nothing.
// Writes are conditional on the record's revision.
type Journal interface {
	// Load returns the job's record, or ErrNotFound.
	Load(ctx context.Context, jobID string) (Record, error)
	// Save writes rec if its Rev still matches the stored revision (Rev 0:
	// only if no record exists) and returns it with the new Rev; otherwise it
	// returns ErrConflict.
	Save(ctx context.Context, rec Record) (Record, error)
	// Delete removes the job's record; a missing record is not an error.
	Delete(ctx context.Context, jobID string) error
	// List returns every record, for the reconciler.
	List(ctx context.Context) ([]Record, error)
}

// Digest is what a copy measured: the byte count and both image hashes in
// lowercase hex.
type Digest struct {
	Bytes     int64
	MD5       string
	HashAlgo  string
	HashValue string
}

// FillRequest configures Copier.Fill.
type FillRequest struct {
	// HashAlgo is the os_hash algorithm (sha256, sha384, sha512).
	HashAlgo string
	// SizeHint is the image's expected size (0: unknown): buffers are
	// sized to it, so a small image does not cost a large one's memory.
	SizeHint int64
	// Resume, when set, continues a copy: src starts at Resume.Offset, and the
	// hash states are restored from it.
	Resume *Checkpoint
	// CheckpointEvery is how many bytes pass between checkpoints (0: none).
	// At each one — without stopping the pipeline — the copier flushes the
	// device once every byte below it is written, and calls Checkpoint with
	// that durable offset and the hash states there. A copy that stops
	// early (source error, ctx cancelled) takes a last checkpoint where its
	// completed writes end. Checkpoint may be called from another goroutine,
	// never concurrently with itself.
	CheckpointEvery int64
	Checkpoint      func(ctx context.Context, cp Checkpoint) error
	// Progress is called with the number of bytes handed to the device so
	// far (including any resumed prefix). It must be cheap.
	Progress func(done int64)
	// Grow is called, with the pipeline drained, when the next write would
	// pass the device's end; it returns the device to continue on (the same
	// one after an online extend, a new one after an offline extend). Nil
	// means the device cannot grow: the copy fails permanently.
	Grow func(ctx context.Context, dev Device, need int64) (Device, error)
}

// DrainRequest configures Copier.Drain.
type DrainRequest struct {
	// Offset and Length select the image bytes to read.
	Offset, Length int64
	// HashAlgo, when set, makes Drain hash what it reads (md5 and HashAlgo).
	HashAlgo string
	// Progress is called with the bytes written to dst so far.
	Progress func(done int64)
}

// Copier moves image bytes between a stream and a device, pipelined and in
// constant memory.
type Copier interface {
	// Fill writes src to dev from offset 0 (or Resume.Offset) until src
	// ends, hashing in parallel. The tail is zero-padded to the block size.
	// It does not flush after the last byte: the caller does.
	Fill(ctx context.Context, dev Device, src io.Reader, req FillRequest) (Digest, error)
	// Drain writes the selected bytes of dev to dst, in order.
	Drain(ctx context.Context, dev Device, dst io.Writer, req DrainRequest) (Digest, error)
}
