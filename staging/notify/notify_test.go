package notify

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecode(t *testing.T) {
	tests := []struct {
		file string
		want []Event
	}{
		{"minio-put.json", []Event{{Name: "s3:ObjectCreated:Put", Bucket: "stage", Key: "incoming/a b+c%d/é.raw", Size: 1000,
			ETag: "ede3d3b685b4e137ba4cb2521329a75e", Sequencer: "18EB2BAE656B12EA"}}},
		{"minio-multipart.json", []Event{{Name: "s3:ObjectCreated:CompleteMultipartUpload", Bucket: "stage", Key: "incoming/mp",
			Size: 12582912, ETag: "4e982d58b6c2ce178ae042c23f9bca6e-3", Sequencer: "18EB2BAE887B992B"}}},
		{"versioned-two-records.json", []Event{
			{Name: "s3:ObjectCreated:Copy", Bucket: "stage", Key: "incoming/0b7f6c1e-2f7e-4c43-9a55-3b1e2d9c8a10.qcow2", Size: 4096,
				ETag: "0123456789abcdef0123456789abcdef", VersionID: "3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY", Sequencer: "0055AED6DCD90281E5"},
			{Name: "s3:ObjectRemoved:Delete", Bucket: "stage", Key: "incoming/old", Sequencer: "0055AED6DCD90281E6"}}},
		{"minio-test-event.json", nil},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := Decode(fixture(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d events, want %d: %+v", len(got), len(tt.want), got)
			}
			for i, w := range tt.want {
				g := got[i]
				if g.Name != w.Name || g.Bucket != w.Bucket || g.Key != w.Key || g.Size != w.Size || g.ETag != w.ETag ||
					g.VersionID != w.VersionID || g.Sequencer != w.Sequencer || g.Time.IsZero() {
					t.Errorf("event %d:\n got %+v\nwant %+v", i, g, w)
				}
			}
		})
	}
}

func TestDecodeRejectsWhatIsNotANotification(t *testing.T) {
	for _, in := range []string{
		``, `[`, `[]`, `{"Records":[{}]}`, `{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}`,
		`{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"k","size":-1}}}]}`, `{"Records":[]} {}`,
		`{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"%ff"}}}]}`,
		`{"Records":"x"}`, strings.Repeat(" ", MaxMessageBytes+1),
	} {
		if _, err := Decode([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("Decode(%.40q): %v, want ErrMalformed", in, err)
		}
	}
}

func TestEventHelpers(t *testing.T) {
	evs, err := Decode(fixture(t, "minio-put.json"))
	if err != nil {
		t.Fatal(err)
	}
	e := evs[0]
	if !e.Created() || e.Meta("image-id") != "img-42" || e.Meta("IMAGE-ID") != "img-42" || e.Meta("Missing") != "" || ImageID(e) != "img-42" {
		t.Errorf("helpers of %+v", e)
	}
	if e.MsgID() != "stage/incoming/a b+c%d/é.raw@ede3d3b685b4e137ba4cb2521329a75e" {
		t.Errorf("MsgID %q", e.MsgID())
	}
	if id := JobID(e); !strings.HasPrefix(id, "s3-") || len(id) != 35 || JobID(e) != id {
		t.Errorf("JobID %q", id)
	}
	other := e
	other.ETag = "ffff"
	if JobID(other) == JobID(e) {
		t.Error("new content, same job id")
	}
	v, _ := Decode(fixture(t, "versioned-two-records.json"))
	if ImageID(v[0]) != "0b7f6c1e-2f7e-4c43-9a55-3b1e2d9c8a10" || !strings.HasSuffix(v[0].MsgID(), "@3HL4kqtJlcpXroDTDmJ-rmSpXd3dIbrHY") {
		t.Errorf("image id %q, msg id %q", ImageID(v[0]), v[0].MsgID())
	}
	for name, created := range map[string]bool{"s3:ObjectCreated:Put": true, "s3:ObjectCreated:Post": true, "s3:ObjectCreated:Copy": true,
		"s3:ObjectCreated:CompleteMultipartUpload": true, "s3:ObjectCreated:PutTagging": false, "s3:ObjectCreated:PutRetention": false,
		"s3:ObjectRemoved:Delete": false, "s3:ObjectAccessed:Get": false} {
		if (Event{Name: name}).Created() != created {
			t.Errorf("Created(%s) != %v", name, created)
		}
	}
}

type fakeStaging map[jobs.Object]jobs.ObjectInfo

func (f fakeStaging) Stat(ctx context.Context, o jobs.Object) (jobs.ObjectInfo, error) {
	if i, ok := f[o]; ok {
		return i, nil
	}
	return jobs.ObjectInfo{}, jobs.ErrNotFound
}

type fakeQueue struct {
	jobs   []jobs.Job
	msgIDs map[string]bool
}

func (f *fakeQueue) Enqueue(ctx context.Context, j jobs.Job, msgID string) (bool, error) {
	if f.msgIDs[msgID] {
		return true, nil
	}
	f.msgIDs[msgID] = true
	f.jobs = append(f.jobs, j)
	return false, nil
}

func TestBridge(t *testing.T) {
	ctx := context.Background()
	st := fakeStaging{
		{Bucket: "stage", Key: "incoming/a b+c%d/é.raw"}: {Size: 1000, ETag: `"ede3d3b685b4e137ba4cb2521329a75e"`},
		{Bucket: "stage", Key: "incoming/mp"}:            {Size: 12582912, ETag: "a-replaced-object"},
	}
	q := &fakeQueue{msgIDs: map[string]bool{}}
	b := &Bridge{Bucket: "stage", Prefix: "incoming/", Template: jobs.Job{Zone: "az1", Store: "s1"}, Staging: st, Queue: q, Log: zerolog.Nop()}
	for _, f := range []string{"minio-put.json", "minio-put.json", "minio-multipart.json", "versioned-two-records.json", "minio-test-event.json"} {
		if err := b.Handle(ctx, fixture(t, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	// The put makes one job (its repeat is a duplicate); the multipart
	// object was replaced since its notification; the copy's object is gone.
	if len(q.jobs) != 1 {
		t.Fatalf("%d jobs: %+v", len(q.jobs), q.jobs)
	}
	j := q.jobs[0]
	if j.Kind != jobs.KindUpload || j.ImageID != "img-42" || j.Size != 1000 || j.Zone != "az1" || j.Store != "s1" ||
		*j.Source != (jobs.Object{Bucket: "stage", Key: "incoming/a b+c%d/é.raw"}) || j.Validate() != nil {
		t.Errorf("job %+v", j)
	}
	if err := b.Handle(ctx, []byte("{")); !jobs.IsPermanent(err) {
		t.Errorf("malformed notification: %v, want a permanent error", err)
	}
	// Another bucket, another prefix: ignored.
	other := &Bridge{Bucket: "elsewhere", Prefix: "incoming/", Staging: st, Queue: q, Log: zerolog.Nop()}
	if err := other.Handle(ctx, fixture(t, "minio-put.json")); err != nil || len(q.jobs) != 1 {
		t.Errorf("another bucket: %v, %d jobs", err, len(q.jobs))
	}
}

func FuzzDecode(f *testing.F) {
	for _, name := range []string{"minio-put.json", "minio-multipart.json", "versioned-two-records.json", "minio-test-event.json"} {
		f.Add(fixture(f, name))
	}
	f.Add([]byte(`{"Records":[{"eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"a%2Fb+c","size":1,"eTag":"\"x\""}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		evs, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		for _, e := range evs {
			if e.Bucket == "" || e.Key == "" || e.Size < 0 || !utf8.ValidString(e.Key) || strings.Contains(e.ETag, `"`) && strings.HasPrefix(e.ETag, `"`) {
				t.Fatalf("decoded an invalid event %+v", e)
			}
			if !strings.HasPrefix(e.MsgID(), e.Bucket+"/"+e.Key+"@") {
				t.Fatalf("MsgID %q", e.MsgID())
			}
			if id := JobID(e); (jobs.Job{Version: 1, ID: id, Kind: jobs.KindDelete, VolumeID: "v"}).Validate() != nil {
				t.Fatalf("JobID %q is not a valid job id", id)
			}
			_ = ImageID(e)
			_ = e.Created()
		}
	})
}
