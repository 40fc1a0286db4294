// Package notify decodes S3 bucket notifications — the AWS event structure,
// as MinIO publishes it to NATS JetStream (notify_nats) — and bridges the
// objects created under a watched prefix of the staging bucket into upload
// jobs, de-duplicated by bucket/key@version-or-eTag.
package notify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cinderport/cinderport/jobs"
)

// MaxMessageBytes bounds a notification: MinIO sends one record per
// message, a few KiB with the object's user metadata.
const MaxMessageBytes = 1 << 20

// Event is one record of a notification: what happened to which object.
type Event struct {
	// Name is the event name, e.g. s3:ObjectCreated:Put or
	// s3:ObjectCreated:CompleteMultipartUpload.
	Name   string
	Bucket string
	// Key is the object key, URL-decoded (notifications carry it encoded,
	// with '+' for a space).
	Key       string
	Size      int64
	ETag      string // without quotes
	VersionID string // "" when the bucket is not versioned
	Sequencer string
	Time      time.Time
	// Metadata is the object's user metadata as the notification carries it
	// (MinIO: "X-Amz-Meta-Image-Id"); see Meta.
	Metadata map[string]string
}

// The record layout of the AWS event structure; unknown fields are ignored
// (MinIO adds its own).
type wireMessage struct {
	Records []wireRecord `json:"Records"`
}

type wireRecord struct {
	EventName string `json:"eventName"`
	EventTime string `json:"eventTime"`
	S3        struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key          string            `json:"key"`
			Size         int64             `json:"size"`
			ETag         string            `json:"eTag"`
			VersionID    string            `json:"versionId"`
			Sequencer    string            `json:"sequencer"`
			UserMetadata map[string]string `json:"userMetadata"`
		} `json:"object"`
	} `json:"s3"`
}

// ErrMalformed is returned (wrapped) for a notification that is not one:
// the same bytes will never decode, so it is dropped, not retried.
var ErrMalformed = errors.New("malformed bucket notification")

// Decode parses one notification message into its events. A message with
// no records (MinIO's test event, for one) has no events. It fails with an
// error wrapping ErrMalformed when the bytes are not a notification or a
// record lacks its bucket or key or has an undecodable key.
func Decode(data []byte) ([]Event, error) {
	if len(data) > MaxMessageBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(data), MaxMessageBytes)
	}
	var m wireMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err == nil {
		return nil, fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	out := make([]Event, 0, len(m.Records))
	for i, r := range m.Records {
		o := r.S3.Object
		key, err := url.QueryUnescape(o.Key)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: record %d: key %q: %v", ErrMalformed, i, truncate(o.Key, 64), err)
		case r.S3.Bucket.Name == "" || key == "":
			return nil, fmt.Errorf("%w: record %d has no bucket or key", ErrMalformed, i)
		case !utf8.ValidString(key) || !utf8.ValidString(r.S3.Bucket.Name):
			return nil, fmt.Errorf("%w: record %d: invalid UTF-8 in bucket or key", ErrMalformed, i)
		case o.Size < 0:
			return nil, fmt.Errorf("%w: record %d: negative size", ErrMalformed, i)
		}
		ev := Event{Name: r.EventName, Bucket: r.S3.Bucket.Name, Key: key, Size: o.Size,
			ETag: strings.Trim(o.ETag, `"`), VersionID: o.VersionID, Sequencer: o.Sequencer, Metadata: o.UserMetadata}
		if ev.VersionID == "null" { // S3's name for "no version"
			ev.VersionID = ""
		}
		ev.Time, _ = time.Parse(time.RFC3339Nano, r.EventTime)
		out = append(out, ev)
	}
	return out, nil
}

// Created reports whether the event announces new object content: a put,
// a POST upload, a copy, or a completed multipart upload. (MinIO also files
// tagging, retention and legal-hold changes under s3:ObjectCreated:.)
func (e Event) Created() bool {
	switch e.Name {
	case "s3:ObjectCreated:Put", "s3:ObjectCreated:Post", "s3:ObjectCreated:Copy",
		"s3:ObjectCreated:CompleteMultipartUpload":
		return true
	}
	return false
}

// Meta returns the user metadata value name (e.g. "Image-Id"), looked up
// case-insensitively as X-Amz-Meta-<name>, else as <name>; or "".
func (e Event) Meta(name string) string {
	name = strings.ToLower(name)
	bare := ""
	for k, v := range e.Metadata {
		switch strings.ToLower(k) {
		case "x-amz-meta-" + name:
			return v
		case name:
			bare = v
		}
	}
	return bare
}

// MsgID is the event's de-duplication key: bucket/key@versionId, or
// bucket/key@eTag in an unversioned bucket. Two notifications of the same
// object content share it; a new version or new content does not.
func (e Event) MsgID() string {
	v := e.VersionID
	if v == "" {
		v = e.ETag
	}
	return e.Bucket + "/" + e.Key + "@" + v
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Object is where the event's object is staged.
func (e Event) Object() jobs.Object { return jobs.Object{Bucket: e.Bucket, Key: e.Key} }
