package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Version is the job wire-format version this package reads and writes.
const Version = 1

// Limits of the wire format. They bound what a hostile or broken producer can
// make a worker do.
const (
	MaxMessageBytes = 64 << 10       // a job message larger than this is rejected unread
	MaxKeyBytes     = 1024           // S3's own limit on object keys
	MaxImageSize    = int64(1) << 46 // 64 TiB, far beyond any Cinder backend's volume limit
	DefaultZone     = "default"
)

// Kind names what a job does.
type Kind string

// The job kinds. Download is accepted on the wire as a synonym of Export: both
// write a volume's image bytes back into staging.
const (
	KindUpload   Kind = "upload"
	KindExport   Kind = "export"
	KindDownload Kind = "download"
	KindDelete   Kind = "delete"
)

// Object names an object in the staging store.
type Object struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
}

func (o Object) String() string { return o.Bucket + "/" + o.Key }

// Job is one unit of work, as it travels on the queue (wire format v1).
// No credentials ever travel in a job.
type Job struct {
	Version      int     `json:"version"`
	ID           string  `json:"id"`
	Kind         Kind    `json:"kind"`
	ImageID      string  `json:"image_id,omitempty"`
	Source       *Object `json:"source,omitempty"`
	Target       *Object `json:"target,omitempty"`
	VolumeID     string  `json:"volume_id,omitempty"`
	Size         int64   `json:"size,omitempty"`
	Checksum     string  `json:"checksum,omitempty"`
	OSHashAlgo   string  `json:"os_hash_algo,omitempty"`
	OSHashValue  string  `json:"os_hash_value,omitempty"`
	VolumeType   string  `json:"volume_type,omitempty"`
	Zone         string  `json:"zone,omitempty"`
	Store        string  `json:"store,omitempty"`
	Owner        string  `json:"owner,omitempty"`
	DeleteSource bool    `json:"delete_source,omitempty"`
}

// Result is what a completed job reports. For uploads it is what Glance needs
// to register the image location.
type Result struct {
	Location    string  `json:"location,omitempty"`
	VolumeID    string  `json:"volume_id,omitempty"`
	Size        int64   `json:"size"`
	Checksum    string  `json:"checksum,omitempty"`
	OSHashAlgo  string  `json:"os_hash_algo,omitempty"`
	OSHashValue string  `json:"os_hash_value,omitempty"`
	Target      *Object `json:"target,omitempty"`
}

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)
	zonePattern   = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
	storePattern  = regexp.MustCompile(`^[A-Za-z0-9_-]{0,64}$`)
	bucketPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
	hexPattern    = regexp.MustCompile(`^[0-9a-f]+$`)
)

// HashSizes maps the supported os_hash_algo names to their digest length in
// bytes. Glance's default is sha512.
var HashSizes = map[string]int{"sha256": 32, "sha384": 48, "sha512": 64}

// DefaultHashAlgo is Glance's default os_hash_algo.
const DefaultHashAlgo = "sha512"

// Decode parses and validates one job message. Every failure is permanent:
// the same bytes will never decode differently.
func Decode(data []byte) (Job, error) {
	if len(data) > MaxMessageBytes {
		return Job{}, Permanentf("job message is %d bytes, limit %d", len(data), MaxMessageBytes)
	}
	if !utf8.Valid(data) {
		return Job{}, Permanentf("job message is not valid UTF-8")
	}
	// Read the version alone first, so a future format is reported as such
	// rather than as a pile of unknown fields.
	var head struct {
		Version *json.RawMessage `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return Job{}, Permanentf("job message is not a JSON object: %v", err)
	}
	if head.Version == nil {
		return Job{}, Permanentf("job message has no version field")
	}
	var v int
	if err := json.Unmarshal(*head.Version, &v); err != nil || v != Version {
		return Job{}, Permanentf("unsupported job version %s (this worker reads version %d)", truncate(string(*head.Version), 32), Version)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var j Job
	if err := dec.Decode(&j); err != nil { // trailing data was refused above
		return Job{}, Permanentf("decode job: %v", err)
	}
	if err := j.Validate(); err != nil {
		return Job{}, err
	}
	return j, nil
}

// Encode validates j and returns its wire form.
func Encode(j Job) ([]byte, error) {
	if j.Version == 0 {
		j.Version = Version
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(j)
}

// Normalize fills defaults: the zone, the hash algorithm, and Export for the
// Download synonym. Validate calls it on a copy; callers that need the
// defaulted values call it themselves.
func (j *Job) Normalize() {
	if j.Zone == "" {
		j.Zone = DefaultZone
	}
	if j.Kind == KindDownload {
		j.Kind = KindExport
	}
	if j.Kind == KindUpload && j.OSHashAlgo == "" {
		j.OSHashAlgo = DefaultHashAlgo
	}
	j.Checksum = strings.ToLower(j.Checksum)
	j.OSHashValue = strings.ToLower(j.OSHashValue)
}

// Validate reports every problem with j at once, as a permanent error whose
// message names the fields.
func (j Job) Validate() error {
	j.Normalize()
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if j.Version != Version {
		bad("version", "must be %d, got %d", Version, j.Version)
	}
	if !idPattern.MatchString(j.ID) {
		bad("id", "must be 1-128 characters of A-Z a-z 0-9 _ -, got %q", truncate(j.ID, 40))
	}
	if !zonePattern.MatchString(j.Zone) {
		bad("zone", "must be 1-64 characters of a-z 0-9 _ -, got %q", truncate(j.Zone, 40))
	}
	if !storePattern.MatchString(j.Store) {
		bad("store", "must be at most 64 characters of A-Z a-z 0-9 _ -, got %q", truncate(j.Store, 40))
	}
	if j.Owner != "" && !idPattern.MatchString(j.Owner) {
		bad("owner", "must be 1-128 characters of A-Z a-z 0-9 _ -")
	}
	if len(j.VolumeType) > 255 || !printable(j.VolumeType) {
		bad("volume_type", "must be at most 255 printable characters")
	}
	if j.Size < 0 || j.Size > MaxImageSize {
		bad("size", "must be between 0 (unknown) and %d, got %d", MaxImageSize, j.Size)
	}
	switch j.Kind {
	case KindUpload:
		if !idPattern.MatchString(j.ImageID) {
			bad("image_id", "required for upload: 1-128 characters of A-Z a-z 0-9 _ -")
		}
		if j.Source == nil {
			bad("source", "required for upload")
		} else {
			errs = append(errs, validateObject("source", *j.Source)...)
		}
		if j.Target != nil || j.VolumeID != "" {
			bad("kind", "upload takes no target or volume_id")
		}
		if j.Checksum != "" && (len(j.Checksum) != 32 || !hexPattern.MatchString(j.Checksum)) {
			bad("checksum", "must be an md5 digest in hex (32 characters)")
		}
		if n, ok := HashSizes[j.OSHashAlgo]; !ok {
			bad("os_hash_algo", "unsupported %q (want sha256, sha384 or sha512)", truncate(j.OSHashAlgo, 20))
		} else if j.OSHashValue != "" && (len(j.OSHashValue) != 2*n || !hexPattern.MatchString(j.OSHashValue)) {
			bad("os_hash_value", "must be a %s digest in hex (%d characters)", j.OSHashAlgo, 2*n)
		}
	case KindExport, KindDelete:
		if !idPattern.MatchString(j.VolumeID) {
			bad("volume_id", "required for %s: 1-128 characters of A-Z a-z 0-9 _ -", j.Kind)
		}
		if j.Kind == KindExport {
			if j.Target == nil {
				bad("target", "required for export")
			} else {
				errs = append(errs, validateObject("target", *j.Target)...)
			}
		}
		if j.Source != nil || j.Checksum != "" || j.OSHashValue != "" || j.DeleteSource {
			bad("kind", "%s takes no source, hashes or delete_source", j.Kind)
		}
	default:
		bad("kind", "must be upload, export (or download) or delete, got %q", truncate(string(j.Kind), 20))
	}
	if len(errs) == 0 {
		return nil
	}
	return Permanent(fmt.Errorf("invalid job: %w", errors.Join(errs...)))
}

func validateObject(field string, o Object) []error {
	var errs []error
	if !bucketPattern.MatchString(o.Bucket) || strings.Contains(o.Bucket, "..") {
		errs = append(errs, fmt.Errorf("%s.bucket: not a valid bucket name: %q", field, truncate(o.Bucket, 70)))
	}
	if err := ValidateKey(o.Key); err != nil {
		errs = append(errs, fmt.Errorf("%s.key: %w", field, err))
	}
	return errs
}

// ValidateKey checks an object key: 1..1024 bytes of printable UTF-8, no
// leading slash, no "." or ".." segments (a staging store on a file system
// must never be walked out of).
func ValidateKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty object key")
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("object key is %d bytes, limit %d", len(key), MaxKeyBytes)
	case !utf8.ValidString(key) || !printable(key):
		return errors.New("object key has control characters or invalid UTF-8")
	case strings.HasPrefix(key, "/") || strings.Contains(key, "\\"):
		return fmt.Errorf("object key %q: leading slash or backslash", truncate(key, 40))
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "." || seg == ".." || seg == "" {
			return fmt.Errorf("object key %q: empty, . or .. path segment", truncate(key, 40))
		}
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
