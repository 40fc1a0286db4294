package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

// Stater is what the bridge reads of the staging store.
type Stater interface {
	// Stat returns the object's size and identity, or an error wrapping
	// jobs.ErrNotFound.
	Stat(ctx context.Context, o jobs.Object) (jobs.ObjectInfo, error)
}

// Enqueuer queues upload jobs.
type Enqueuer interface {
	// Enqueue queues job, de-duplicated by msgID; duplicate reports that
	// nothing new was queued (the same msgID within the de-duplication
	// window, or a job id that already ran).
	Enqueue(ctx context.Context, job jobs.Job, msgID string) (duplicate bool, err error)
}

// User metadata an object may carry to shape its upload job (as
// X-Amz-Meta-<name>).
const (
	MetaImageID     = "Image-Id"
	MetaChecksum    = "Checksum"
	MetaOSHashAlgo  = "Os-Hash-Algo"
	MetaOSHashValue = "Os-Hash-Value"
	MetaOwner       = "Owner"
)

// Bridge turns the objects created under Prefix of Bucket into upload jobs.
// Notifications may come late, twice or out of order: a notification maps
// to one job id (JobID) and message id (Event.MsgID), so repeats queue
// nothing new, and an object replaced or removed since its notification is
// left to the notification of its newer content.
type Bridge struct {
	Bucket string
	Prefix string
	// Template gives the jobs' zone, store, volume type, owner and
	// delete_source.
	Template jobs.Job
	Staging  Stater
	Queue    Enqueuer
	Log      zerolog.Logger
}

// Handle processes one notification message. It returns nil when the
// message is done with (its jobs queued, or nothing to do), a permanent
// error (jobs.IsPermanent) for a message that is not a notification, and
// any other error when it should be tried again later.
func (b *Bridge) Handle(ctx context.Context, data []byte) error {
	evs, err := Decode(data)
	if err != nil {
		return jobs.Permanent(err)
	}
	for _, ev := range evs {
		if err := b.handle(ctx, ev); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bridge) handle(ctx context.Context, ev Event) error {
	log := b.Log.With().Str("object", ev.Bucket+"/"+ev.Key).Str("event", ev.Name).Str("etag", ev.ETag).Logger()
	switch {
	case !ev.Created() || ev.Bucket != b.Bucket || !strings.HasPrefix(ev.Key, b.Prefix) || strings.HasSuffix(ev.Key, "/"):
		log.Debug().Msg("notification: not a new object under the watched prefix")
		return nil
	case ev.Size == 0:
		log.Info().Msg("notification: empty object, no image")
		return nil
	}
	job := b.Template
	job.Version, job.ID, job.Kind, job.ImageID, job.Size = jobs.Version, JobID(ev), jobs.KindUpload, ImageID(ev), ev.Size
	src := ev.Object()
	job.Source, job.Target, job.VolumeID = &src, nil, ""
	job.Checksum, job.OSHashValue = ev.Meta(MetaChecksum), ev.Meta(MetaOSHashValue)
	if a := ev.Meta(MetaOSHashAlgo); a != "" {
		job.OSHashAlgo = a
	}
	if o := ev.Meta(MetaOwner); o != "" {
		job.Owner = o
	}
	log = log.With().Str("job_id", job.ID).Str("image_id", job.ImageID).Logger()
	if err := job.Validate(); err != nil {
		log.Warn().Err(err).Msg("notification: the object makes no valid upload job (image id from X-Amz-Meta-Image-Id or the key's base name)")
		return nil
	}
	info, err := b.Staging.Stat(ctx, src)
	if errors.Is(err, jobs.ErrNotFound) {
		log.Info().Msg("notification: the object is gone already")
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", src, err)
	}
	if (ev.ETag != "" && !strings.EqualFold(strings.Trim(info.ETag, `"`), ev.ETag)) || (ev.VersionID != "" && info.VersionID != ev.VersionID) {
		log.Info().Str("current_etag", info.ETag).Msg("notification: the object was replaced since; its newer notification makes the job")
		return nil
	}
	dup, err := b.Queue.Enqueue(ctx, job, ev.MsgID())
	if err != nil {
		return fmt.Errorf("enqueue upload of %s: %w", src, err)
	}
	if dup {
		log.Info().Msg("notification: a duplicate, no new job")
		return nil
	}
	log.Info().Int64("bytes", job.Size).Msg("notification: upload job enqueued")
	return nil
}

// JobID is the id of the upload job an event makes: a digest of its
// message id, so repeated notifications of the same content name the same
// job.
func JobID(ev Event) string {
	h := sha256.Sum256([]byte(ev.MsgID()))
	return "s3-" + hex.EncodeToString(h[:16])
}

// ImageID is the image id for an event's object: its X-Amz-Meta-Image-Id,
// else the key's base name up to its first dot ("incoming/<id>.raw").
func ImageID(ev Event) string {
	if id := ev.Meta(MetaImageID); id != "" {
		return id
	}
	base := path.Base(ev.Key)
	if i := strings.IndexByte(base, '.'); i > 0 {
		base = base[:i]
	}
	return base
}
