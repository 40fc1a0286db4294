package jobs

import (
	"strings"
	"testing"
)

const goodUpload = `{"version":1,"id":"job-1","kind":"upload","image_id":"3b6f0c0e-1a2b-4c5d-8e9f-0a1b2c3d4e5f",
 "source":{"bucket":"staging","key":"images/a.raw"},"size":1048576,
 "checksum":"0123456789abcdef0123456789abcdef","os_hash_algo":"sha512"}`

func TestDecodeGood(t *testing.T) {
	j, err := Decode([]byte(goodUpload))
	if err != nil {
		t.Fatal(err)
	}
	if j.Zone != "" || j.Kind != KindUpload || j.Size != 1<<20 {
		t.Errorf("decoded %+v", j)
	}
	j.Normalize()
	if j.Zone != DefaultZone || j.OSHashAlgo != "sha512" {
		t.Errorf("normalized %+v", j)
	}
	for _, msg := range []string{
		`{"version":1,"id":"d1","kind":"delete","volume_id":"7b1c"}`,
		`{"version":1,"id":"e1","kind":"export","volume_id":"7b1c","target":{"bucket":"out-bucket","key":"x/y.raw"}}`,
		`{"version":1,"id":"e2","kind":"download","volume_id":"7b1c","target":{"bucket":"out-bucket","key":"x"}}`,
		`{"version":1,"id":"u2","kind":"upload","image_id":"i","source":{"bucket":"abc","key":"k"},"size":0,"zone":"az-2","store":"fast"}`,
	} {
		if _, err := Decode([]byte(msg)); err != nil {
			t.Errorf("%s: %v", msg, err)
		}
	}
}

// TestDecodeHostile is the corpus of hostile job messages: every one must be
// refused with a permanent error that says why.
func TestDecodeHostile(t *testing.T) {
	upload := func(fields string) string {
		return `{"version":1,"id":"j","kind":"upload","image_id":"i","source":{"bucket":"abc","key":"k"}` + fields + `}`
	}
	cases := []struct{ name, msg, want string }{
		{"empty", ``, "not a JSON object"},
		{"truncated", goodUpload[:40], "not a JSON object"},
		{"array", `[1,2]`, "not a JSON object"},
		{"null", `null`, "no version"},
		{"no version", `{"id":"j","kind":"upload"}`, "no version"},
		{"version 2", `{"version":2,"id":"j"}`, "unsupported job version 2"},
		{"version string", `{"version":"1","id":"j"}`, "unsupported job version"},
		{"version float", `{"version":1.5}`, "unsupported job version"},
		{"unknown field", upload(`,"password":"x"`), "unknown field"},
		{"id wrong type", `{"version":1,"id":7,"kind":"upload"}`, "cannot unmarshal"},
		{"size wrong type", upload(`,"size":"big"`), "cannot unmarshal"},
		{"missing id", `{"version":1,"kind":"delete","volume_id":"v"}`, "id: must be"},
		{"missing kind", `{"version":1,"id":"j"}`, "kind: must be"},
		{"bad kind", `{"version":1,"id":"j","kind":"format-disk"}`, "kind: must be"},
		{"missing source", `{"version":1,"id":"j","kind":"upload","image_id":"i"}`, "source: required"},
		{"missing image id", `{"version":1,"id":"j","kind":"upload","source":{"bucket":"abc","key":"k"}}`, "image_id: required"},
		{"negative size", upload(`,"size":-1`), "size: must be"},
		{"absurd size", upload(`,"size":99999999999999999`), "size: must be"},
		{"size overflow", upload(`,"size":1e400`), "cannot unmarshal"},
		{"traversal key", `{"version":1,"id":"j","kind":"upload","image_id":"i","source":{"bucket":"abc","key":"../../etc/passwd"}}`, ".. path segment"},
		{"absolute key", `{"version":1,"id":"j","kind":"upload","image_id":"i","source":{"bucket":"abc","key":"/etc/passwd"}}`, "leading slash"},
		{"oversized key", `{"version":1,"id":"j","kind":"upload","image_id":"i","source":{"bucket":"abc","key":"` + strings.Repeat("k", 1025) + `"}}`, "limit 1024"},
		{"control char key", `{"version":1,"id":"j","kind":"upload","image_id":"i","source":{"bucket":"abc","key":"a\u0000b"}}`, "control characters"},
		{"bad bucket", `{"version":1,"id":"j","kind":"upload","image_id":"i","source":{"bucket":"A_B","key":"k"}}`, "not a valid bucket"},
		{"id with dot", `{"version":1,"id":"a.b","kind":"delete","volume_id":"v"}`, "id: must be"},
		{"id subject wildcard", `{"version":1,"id":"a*","kind":"delete","volume_id":"v"}`, "id: must be"},
		{"zone wildcard", upload(`,"zone":">"`), "zone: must be"},
		{"bad md5", upload(`,"checksum":"xyz"`), "checksum: must be"},
		{"bad algo", upload(`,"os_hash_algo":"md4"`), "unsupported"},
		{"bad hash length", upload(`,"os_hash_value":"abcd"`), "os_hash_value"},
		{"delete with source", `{"version":1,"id":"j","kind":"delete","volume_id":"v","source":{"bucket":"abc","key":"k"}}`, "takes no source"},
		{"export without target", `{"version":1,"id":"j","kind":"export","volume_id":"v"}`, "target: required"},
		{"trailing data", goodUpload + `{}`, "after top-level value"},
		{"megabyte payload", upload(`,"owner":"` + strings.Repeat("o", 1<<20) + `"`), "limit"},
		{"invalid utf8", "{\"version\":1,\"id\":\"\xff\"}", "UTF-8"},
		{"duplicate-key smuggling", `{"version":1,"version":2,"id":"j"}`, "unsupported job version 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.msg))
			if err == nil {
				t.Fatalf("accepted %q", truncate(tc.msg, 80))
			}
			if !IsPermanent(err) {
				t.Errorf("error is not permanent: %v", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", truncate(err.Error(), 300), tc.want)
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	j := Job{ID: "x1", Kind: KindUpload, ImageID: "img", Source: &Object{Bucket: "abc", Key: "k"}, Size: 5}
	b, err := Encode(j)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != j.ID || back.Version != Version || back.Source.Key != "k" {
		t.Errorf("round trip: %+v", back)
	}
	if _, err := Encode(Job{ID: "bad id"}); err == nil {
		t.Error("Encode accepted an invalid job")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(goodUpload))
	f.Add([]byte(`{"version":1,"id":"d1","kind":"delete","volume_id":"7b1c"}`))
	f.Add([]byte(`{"version":1,"id":"e1","kind":"export","volume_id":"7b1c","target":{"bucket":"out","key":"x/y"}}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := Decode(data)
		if err != nil {
			if !IsPermanent(err) {
				t.Fatalf("decode error not permanent: %v", err)
			}
			return
		}
		// Whatever decodes must validate, re-encode and decode to the same job.
		b, err := Encode(j)
		if err != nil {
			t.Fatalf("decoded job does not encode: %v", err)
		}
		j2, err := Decode(b)
		if err != nil {
			t.Fatalf("re-encoded job does not decode: %v", err)
		}
		j.Normalize()
		j2.Normalize()
		if j.ID != j2.ID || j.Kind != j2.Kind || j.Size != j2.Size {
			t.Fatalf("round trip changed the job: %+v vs %+v", j, j2)
		}
		if j.Source != nil && ValidateKey(j.Source.Key) != nil {
			t.Fatal("accepted an invalid key")
		}
	})
}
