// Package local is a look-alike of Cinder on local files, for the embedded
// default: a volume is a sparse file with a JSON sidecar holding its status,
// metadata, read-only flag and attachments. It follows Cinder's lifecycle
// and refusals (one attachment on a non-multiattach volume, no delete while
// attached, no read-write attachment of a read-only volume), so the runner
// above it behaves as it would against a real Cinder.
package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// Options configure the look-alike.
type Options struct {
	// MaxVolumes and MaxGiB are the project quota (0: unlimited).
	MaxVolumes, MaxGiB int
	// WaitTimeout bounds WaitVolume (default 5 minutes).
	WaitTimeout time.Duration
	// Host names this host in its attachments, as Cinder's connector host.
	Host string
}

// Volumes is the local volume service. It satisfies jobs.Volumes.
type Volumes struct {
	dir  string
	opts Options
	mu   sync.Mutex
	vols map[string]*volume
	// byMeta indexes the volumes by each metadata pair (key NUL value), so
	// that FindVolumes by job id does not scan every image ever made.
	byMeta map[string]map[string]*volume
}

var _ jobs.Volumes = (*Volumes)(nil)

type attachment struct {
	ID        string          `json:"id"`
	Host      string          `json:"host,omitempty"`
	Mode      jobs.AttachMode `json:"mode"`
	Completed bool            `json:"completed"`
}

type volume struct {
	ID          string            `json:"id"`
	Name        string            `json:"name"`
	Status      string            `json:"status"`
	SizeGiB     int               `json:"size_gib"`
	VolumeType  string            `json:"volume_type,omitempty"`
	Zone        string            `json:"zone,omitempty"`
	Multiattach bool              `json:"multiattach,omitempty"`
	ReadOnly    bool              `json:"read_only,omitempty"`
	Metadata    map[string]string `json:"metadata"`
	Attachments []attachment      `json:"attachments,omitempty"`
	Created     time.Time         `json:"created"`
	// onDisk is the length of the sidecar as last written.
	onDisk int
}

// Open loads (or starts) the volume directory.
func Open(dir string, opts Options) (*Volumes, error) {
	if opts.WaitTimeout == 0 {
		opts.WaitTimeout = 5 * time.Minute
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("local volumes: %w", err)
	}
	v := &Volumes{dir: dir, opts: opts, vols: map[string]*volume{}, byMeta: map[string]map[string]*volume{}}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		var vol volume
		if err := json.Unmarshal(b, &vol); err != nil {
			return nil, fmt.Errorf("local volume %s: %w", e.Name(), err)
		}
		vol.onDisk = len(b)
		if vol.Status == "deleting" {
			v.remove(vol.ID)
			continue
		}
		v.vols[vol.ID] = &vol
		v.index(&vol)
	}
	return v, nil
}

func metaKey(k, x string) string { return k + "\x00" + x }

// index adds vol's metadata to byMeta; unindex removes it.
func (v *Volumes) index(vol *volume) {
	for k, x := range vol.Metadata {
		set := v.byMeta[metaKey(k, x)]
		if set == nil {
			set = map[string]*volume{}
			v.byMeta[metaKey(k, x)] = set
		}
		set[vol.ID] = vol
	}
}

func (v *Volumes) unindex(vol *volume) {
	for k, x := range vol.Metadata {
		if set := v.byMeta[metaKey(k, x)]; set != nil {
			delete(set, vol.ID)
			if len(set) == 0 {
				delete(v.byMeta, metaKey(k, x))
			}
		}
	}
}

func (v *Volumes) imagePath(id string) string { return filepath.Join(v.dir, id+".img") }

// persist writes the volume's sidecar. The first write creates it (a
// temporary file renamed into place); later ones overwrite it in place, in
// one write at offset 0 padded with spaces to the old length (JSON ignores
// them), which a crash cannot tear while the record fits in a page. A
// rename per update would allocate a fresh inode each time, and ext4
// without a journal checks every recently freed inode on each allocation:
// that cost grew with the update rate until it was a quarter of a worker's
// CPU on small jobs. Records larger than a page fall back to the rename.
func (v *Volumes) persist(vol *volume) error {
	b, err := json.Marshal(vol)
	if err != nil {
		return err
	}
	path := filepath.Join(v.dir, vol.ID+".json")
	if vol.onDisk > 0 && len(b) <= inPlaceMax && vol.onDisk <= inPlaceMax {
		if n := vol.onDisk - len(b); n > 0 {
			b = append(b, bytes.Repeat([]byte{' '}, n)...)
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteAt(b, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err == nil {
			vol.onDisk = len(b)
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	vol.onDisk = len(b)
	return nil
}

// inPlaceMax is the largest sidecar rewritten in place: one page, which a
// single write lands whole or not at all.
const inPlaceMax = 4096

func (v *Volumes) remove(id string) {
	os.Remove(v.imagePath(id))
	os.Remove(filepath.Join(v.dir, id+".json"))
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (vol *volume) public() jobs.Volume {
	md := make(map[string]string, len(vol.Metadata))
	for k, x := range vol.Metadata {
		md[k] = x
	}
	pub := jobs.Volume{ID: vol.ID, Name: vol.Name, Status: vol.Status, SizeGiB: vol.SizeGiB, VolumeType: vol.VolumeType,
		Zone: vol.Zone, Multiattach: vol.Multiattach, ReadOnly: vol.ReadOnly, Metadata: md, Created: vol.Created}
	for _, a := range vol.Attachments {
		pub.Attachments = append(pub.Attachments, jobs.VolumeAttachment{ID: a.ID, Host: a.Host})
	}
	return pub
}

func (v *Volumes) get(id string) (*volume, error) {
	vol, ok := v.vols[id]
	if !ok {
		return nil, fmt.Errorf("volume %s: %w", id, jobs.ErrNotFound)
	}
	return vol, nil
}

// Capabilities implements jobs.Volumes: files grow while in use.
func (v *Volumes) Capabilities(ctx context.Context) (jobs.Capabilities, error) {
	return jobs.Capabilities{OnlineExtend: true}, nil
}

// CreateVolume implements jobs.Volumes.
func (v *Volumes) CreateVolume(ctx context.Context, spec jobs.VolumeSpec) (jobs.Volume, error) {
	if spec.SizeGiB < 1 {
		return jobs.Volume{}, jobs.Permanentf("create volume: size must be at least 1 GiB, got %d", spec.SizeGiB)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.opts.MaxVolumes > 0 && len(v.vols) >= v.opts.MaxVolumes {
		return jobs.Volume{}, jobs.Permanentf("create volume: quota exceeded: %d volumes allowed", v.opts.MaxVolumes)
	}
	if v.opts.MaxGiB > 0 {
		used := 0
		for _, vol := range v.vols {
			used += vol.SizeGiB
		}
		if used+spec.SizeGiB > v.opts.MaxGiB {
			return jobs.Volume{}, jobs.Permanentf("create volume: quota exceeded: %d GiB used, %d requested, %d allowed", used, spec.SizeGiB, v.opts.MaxGiB)
		}
	}
	vol := &volume{ID: newID(), Name: spec.Name, Status: "available", SizeGiB: spec.SizeGiB, VolumeType: spec.VolumeType,
		Zone: spec.Zone, Metadata: map[string]string{}, Created: time.Now().UTC()}
	for k, x := range spec.Metadata {
		vol.Metadata[k] = x
	}
	f, err := os.OpenFile(v.imagePath(vol.ID), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return jobs.Volume{}, fmt.Errorf("create volume: %w", err)
	}
	err = f.Truncate(int64(spec.SizeGiB) * jobs.GiB)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = v.persist(vol)
	}
	if err != nil {
		v.remove(vol.ID)
		return jobs.Volume{}, fmt.Errorf("create volume: %w", err)
	}
	v.vols[vol.ID] = vol
	v.index(vol)
	return vol.public(), nil
}

// GetVolume implements jobs.Volumes.
func (v *Volumes) GetVolume(ctx context.Context, id string) (jobs.Volume, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, err := v.get(id)
	if err != nil {
		return jobs.Volume{}, err
	}
	return vol.public(), nil
}

// FindVolumes implements jobs.Volumes.
func (v *Volumes) FindVolumes(ctx context.Context, md map[string]string) ([]jobs.Volume, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	candidates := v.vols
	for k, x := range md { // any one pair narrows the search
		candidates = v.byMeta[metaKey(k, x)]
		break
	}
	var out []jobs.Volume
next:
	for _, vol := range candidates {
		for k, x := range md {
			if vol.Metadata[k] != x {
				continue next
			}
		}
		out = append(out, vol.public())
	}
	return out, nil
}

// WaitVolume implements jobs.Volumes.
func (v *Volumes) WaitVolume(ctx context.Context, id string, want ...string) (jobs.Volume, error) {
	ctx, cancel := context.WithTimeout(ctx, v.opts.WaitTimeout)
	defer cancel()
	delay := 10 * time.Millisecond
	for {
		vol, err := v.GetVolume(ctx, id)
		if err != nil {
			return vol, err
		}
		for _, w := range want {
			if vol.Status == w {
				return vol, nil
			}
		}
		if strings.HasPrefix(vol.Status, "error") {
			return vol, jobs.Permanentf("volume %s is in status %s", id, vol.Status)
		}
		select {
		case <-ctx.Done():
			return vol, fmt.Errorf("volume %s still %s, want %v: %w", id, vol.Status, want, ctx.Err())
		case <-time.After(delay):
			delay = min(2*delay, time.Second)
		}
	}
}

// ExtendVolume implements jobs.Volumes; a volume already sizeGiB or larger
// is left as it is.
func (v *Volumes) ExtendVolume(ctx context.Context, id string, sizeGiB int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, err := v.get(id)
	if err != nil {
		return err
	}
	if sizeGiB <= vol.SizeGiB {
		// Already that large (a repeated call): nothing to do, as with the
		// Cinder adapter.
		return nil
	}
	if err := os.Truncate(v.imagePath(id), int64(sizeGiB)*jobs.GiB); err != nil {
		return fmt.Errorf("extend volume %s: %w", id, err)
	}
	vol.SizeGiB = sizeGiB
	return v.persist(vol)
}

// SetMetadata implements jobs.Volumes.
func (v *Volumes) SetMetadata(ctx context.Context, id string, md map[string]string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, err := v.get(id)
	if err != nil {
		return err
	}
	v.unindex(vol)
	for k, x := range md {
		vol.Metadata[k] = x
	}
	v.index(vol)
	return v.persist(vol)
}

// SetReadOnly implements jobs.Volumes.
func (v *Volumes) SetReadOnly(ctx context.Context, id string, ro bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, err := v.get(id)
	if err != nil {
		return err
	}
	vol.ReadOnly = ro
	return v.persist(vol)
}

// DeleteVolume implements jobs.Volumes.
func (v *Volumes) DeleteVolume(ctx context.Context, id string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, err := v.get(id)
	if errors.Is(err, jobs.ErrNotFound) {
		return nil
	}
	if len(vol.Attachments) > 0 {
		// Cinder: 400 "Volume status must be available or error ... and must not be attached".
		return jobs.RetryAfter(fmt.Errorf("delete volume %s: it has %d attachment(s)", id, len(vol.Attachments)), time.Second)
	}
	vol.Status = "deleting"
	if err := v.persist(vol); err != nil {
		return err
	}
	v.remove(id)
	v.unindex(vol)
	delete(v.vols, id)
	return nil
}

// Attach implements jobs.Volumes.
func (v *Volumes) Attach(ctx context.Context, volumeID string, mode jobs.AttachMode) (jobs.Attachment, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, err := v.get(volumeID)
	if err != nil {
		return jobs.Attachment{}, err
	}
	if mode != jobs.ReadWrite && mode != jobs.ReadOnly {
		return jobs.Attachment{}, jobs.Permanentf("attach volume %s: invalid mode %q", volumeID, mode)
	}
	if mode == jobs.ReadWrite && vol.ReadOnly {
		return jobs.Attachment{}, jobs.Permanentf("attach volume %s: the volume is read-only, cannot attach rw", volumeID)
	}
	if len(vol.Attachments) > 0 && !vol.Multiattach {
		return jobs.Attachment{}, jobs.RetryAfter(fmt.Errorf("attach volume %s: status must be available to reserve, is %s", volumeID, vol.Status), time.Second)
	}
	att := attachment{ID: newID(), Mode: mode, Host: v.opts.Host}
	vol.Attachments = append(vol.Attachments, att)
	vol.Status = "reserved"
	if err := v.persist(vol); err != nil {
		return jobs.Attachment{}, err
	}
	return jobs.Attachment{ID: att.ID, VolumeID: volumeID, Mode: mode, Connection: jobs.Connection{
		Driver: "local", Data: map[string]any{"device_path": v.imagePath(volumeID), "access_mode": string(mode)},
	}}, nil
}

func (v *Volumes) findAttachment(id string) (*volume, int, error) {
	for _, vol := range v.vols {
		for i, a := range vol.Attachments {
			if a.ID == id {
				return vol, i, nil
			}
		}
	}
	return nil, 0, fmt.Errorf("attachment %s: %w", id, jobs.ErrNotFound)
}

// CompleteAttachment implements jobs.Volumes.
func (v *Volumes) CompleteAttachment(ctx context.Context, attachmentID string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, i, err := v.findAttachment(attachmentID)
	if err != nil {
		return err
	}
	vol.Attachments[i].Completed = true
	vol.Status = "in-use"
	return v.persist(vol)
}

// Detach implements jobs.Volumes.
func (v *Volumes) Detach(ctx context.Context, attachmentID string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	vol, i, err := v.findAttachment(attachmentID)
	if errors.Is(err, jobs.ErrNotFound) {
		return nil
	}
	vol.Attachments = append(vol.Attachments[:i], vol.Attachments[i+1:]...)
	if len(vol.Attachments) == 0 {
		vol.Status = "available"
	}
	return v.persist(vol)
}

// Attachments counts the attachments of every volume, for leak checks.
func (v *Volumes) Attachments() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, vol := range v.vols {
		n += len(vol.Attachments)
	}
	return n
}
