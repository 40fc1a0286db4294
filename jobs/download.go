package jobs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Downloads serves image bytes straight from volumes. A volume is attached
// read-only when its first reader arrives; concurrent readers of one volume
// on this worker share that one attachment, which is released Linger after
// the last reader left.
type Downloads struct {
	Volumes   Volumes
	Connector Connector
	Copier    Copier
	Log       zerolog.Logger
	// Store is the store tag (MetaStore) of the volumes served: others are
	// answered as not found (default "default").
	Store string
	// Linger keeps an idle attachment for this long, so a burst of reads
	// (Range requests) does not attach and detach for each (default 5 s).
	Linger time.Duration

	mu   sync.Mutex
	open map[string]*shared
	wg   sync.WaitGroup
}

// shared is one volume's attachment and its readers.
type shared struct {
	ready chan struct{} // closed when attaching finished
	err   error
	img   ImageInfo
	attID string
	dev   Device
	// completed is closed when the attachment's completion returned.
	completed chan struct{}
	readers   int
	timer     *time.Timer
}

// ImageInfo describes a served image.
type ImageInfo struct {
	VolumeID  string
	Size      int64
	Checksum  string
	HashAlgo  string
	HashValue string
}

// Image is one reader's handle on an attached image volume.
type Image struct {
	ImageInfo
	d      *Downloads
	s      *shared
	closed bool
}

// Stat returns what a download of volumeID would serve, without attaching:
// only volumes carrying this store's metadata are served (ErrNotFound for
// others, so their existence is not disclosed).
func (d *Downloads) Stat(ctx context.Context, volumeID string) (ImageInfo, error) {
	v, err := d.Volumes.GetVolume(ctx, volumeID)
	if err != nil {
		return ImageInfo{}, err
	}
	store := d.Store
	if store == "" {
		store = "default"
	}
	if v.Metadata[MetaImageID] == "" || v.Metadata[MetaStore] != store {
		return ImageInfo{}, fmt.Errorf("volume %s is not an image of this store: %w", volumeID, ErrNotFound)
	}
	if _, done := v.Metadata[MetaImageSize]; !done {
		return ImageInfo{}, fmt.Errorf("volume %s holds an image still being written: %w", volumeID, ErrNotFound)
	}
	size, err := ImageSize(v)
	if err != nil {
		return ImageInfo{}, err
	}
	return ImageInfo{VolumeID: v.ID, Size: size, Checksum: v.Metadata[MetaChecksum],
		HashAlgo: v.Metadata[MetaHashAlgo], HashValue: v.Metadata[MetaHashValue]}, nil
}

// Open attaches the volume of info, which Stat returned, (or joins its
// existing attachment) and returns a handle; Close it when done.
func (d *Downloads) Open(ctx context.Context, info ImageInfo) (*Image, error) {
	volumeID := info.VolumeID
	d.mu.Lock()
	if d.open == nil {
		d.open = map[string]*shared{}
	}
	s, ok := d.open[volumeID]
	if ok {
		s.readers++
		if s.timer != nil {
			if s.timer.Stop() {
				d.wg.Done() // the detach will not run
			}
			s.timer = nil
		}
		d.mu.Unlock()
		select {
		case <-s.ready:
		case <-ctx.Done():
			d.release(volumeID, s)
			return nil, ctx.Err()
		}
		if s.err != nil {
			d.release(volumeID, s)
			return nil, s.err
		}
		return &Image{ImageInfo: s.img, d: d, s: s}, nil
	}
	s = &shared{ready: make(chan struct{}), readers: 1}
	d.open[volumeID] = s
	d.mu.Unlock()

	s.err = d.attach(context.WithoutCancel(ctx), info, s)
	close(s.ready)
	if s.err != nil {
		d.release(volumeID, s)
		return nil, s.err
	}
	return &Image{ImageInfo: s.img, d: d, s: s}, nil
}

func (d *Downloads) attach(ctx context.Context, img ImageInfo, s *shared) error {
	volumeID := img.VolumeID
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	att, err := d.Volumes.Attach(ctx, volumeID, ReadOnly)
	if err != nil {
		return fmt.Errorf("attach volume %s read-only: %w", volumeID, err)
	}
	t1 := time.Now()
	dev, err := d.Connector.Connect(ctx, att.Connection, ReadOnly)
	if err != nil {
		if derr := d.Volumes.Detach(ctx, att.ID); derr != nil {
			d.Log.Error().Err(derr).Str("volume_id", volumeID).Msg("detach after a failed connect")
		}
		return fmt.Errorf("connect to volume %s: %w", volumeID, err)
	}
	t2 := time.Now()
	s.img, s.attID, s.dev = img, att.ID, dev
	// The attachment's completion only records it as in use: the export
	// and the session exist, so the first reader need not wait for it (a
	// Cinder round trip). The detach waits for it.
	s.completed = make(chan struct{})
	go func() {
		defer close(s.completed)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		if err := d.Volumes.CompleteAttachment(ctx, att.ID); err != nil {
			d.Log.Warn().Err(err).Str("volume_id", volumeID).Str("attachment_id", att.ID).
				Msg("complete the download attachment: it stays attaching until its detach")
			return
		}
		d.Log.Debug().Str("volume_id", volumeID).Dur("complete", time.Since(start)).Msg("download attachment completed")
	}()
	d.Log.Info().Str("volume_id", volumeID).Str("attachment_id", att.ID).
		Dur("attach", t1.Sub(t0)).Dur("connect", t2.Sub(t1)).Msg("attached for downloads")
	return nil
}

// release drops one reader; the last one schedules the detach.
func (d *Downloads) release(volumeID string, s *shared) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s.readers--
	if s.readers > 0 {
		return
	}
	if s.err != nil || s.dev == nil {
		if d.open[volumeID] == s {
			delete(d.open, volumeID)
		}
		return
	}
	linger := d.Linger
	if linger == 0 {
		linger = 5 * time.Second
	}
	d.wg.Add(1)
	s.timer = time.AfterFunc(linger, func() {
		defer d.wg.Done()
		d.mu.Lock()
		if s.readers > 0 || s.timer == nil {
			d.mu.Unlock()
			return
		}
		delete(d.open, volumeID)
		d.mu.Unlock()
		d.detach(volumeID, s)
	})
}

func (d *Downloads) detach(volumeID string, s *shared) {
	if err := s.dev.Close(); err != nil {
		d.Log.Warn().Err(err).Str("volume_id", volumeID).Msg("disconnect")
	}
	<-s.completed
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := d.Volumes.Detach(ctx, s.attID); err != nil {
		d.Log.Error().Err(err).Str("volume_id", volumeID).Msg("detach after downloads")
		return
	}
	d.Log.Info().Str("volume_id", volumeID).Msg("detached after downloads")
}

// Evict detaches volumeID at once if no reader is using it (a delete of the
// volume would otherwise wait for the linger period).
func (d *Downloads) Evict(ctx context.Context, volumeID string) {
	d.mu.Lock()
	s, ok := d.open[volumeID]
	if !ok || s.readers > 0 || s.timer == nil || !s.timer.Stop() {
		d.mu.Unlock()
		return
	}
	s.timer = nil
	delete(d.open, volumeID)
	d.mu.Unlock()
	d.wg.Done()
	d.detach(volumeID, s)
}

// Attached reports how many volumes are attached for downloads now.
func (d *Downloads) Attached() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.open)
}

// Close detaches every idle volume at once and waits for pending detaches.
// Call it after the HTTP server stopped serving.
func (d *Downloads) Close() {
	d.mu.Lock()
	var idle []*shared
	var ids []string
	for id, s := range d.open {
		if s.readers == 0 && s.timer != nil && s.timer.Stop() {
			s.timer = nil
			d.wg.Done()
			idle = append(idle, s)
			ids = append(ids, id)
			delete(d.open, id)
		}
	}
	d.mu.Unlock()
	for i, s := range idle {
		d.detach(ids[i], s)
	}
	d.wg.Wait()
}

// WriteRange writes bytes [off, off+n) of the image to w.
func (img *Image) WriteRange(ctx context.Context, w io.Writer, off, n int64) (Digest, error) {
	if off < 0 || n < 0 || off+n > img.Size {
		return Digest{}, errors.New("range outside the image")
	}
	// The client checks the hashes the response headers announce; hashing
	// here too would halve a worker's download throughput.
	return img.d.Copier.Drain(ctx, img.s.dev, w, DrainRequest{Offset: off, Length: n})
}

// Close releases the reader's handle.
func (img *Image) Close() {
	if img.closed {
		return
	}
	img.closed = true
	img.d.release(img.VolumeID, img.s)
}
