// Package stagingtest is the conformance suite of jobs.Staging, written once
// and run against every implementation: the minio-go client on a real MinIO
// and on the in-process endpoint.
package stagingtest

import (
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cinderport/cinderport/jobs"
)

func random(n int, seed uint64) []byte {
	b := make([]byte, n)
	var k [32]byte
	k[0] = byte(seed)
	rand.NewChaCha8(k).Read(b)
	return b
}

// Run exercises st, whose bucket already exists.
func Run(t *testing.T, st jobs.Staging, bucket string) {
	ctx := context.Background()
	obj := func(k string) jobs.Object { return jobs.Object{Bucket: bucket, Key: k} }

	t.Run("NotFound", func(t *testing.T) {
		if _, err := st.Stat(ctx, obj("missing/key")); !errors.Is(err, jobs.ErrNotFound) {
			t.Errorf("stat missing: %v", err)
		}
		if _, err := st.Open(ctx, obj("missing/key"), 0); !errors.Is(err, jobs.ErrNotFound) {
			t.Errorf("open missing: %v", err)
		}
		if _, err := st.Stat(ctx, jobs.Object{Bucket: "no-such-bucket-x", Key: "k"}); !errors.Is(err, jobs.ErrNotFound) {
			t.Errorf("stat in missing bucket: %v", err)
		}
		if err := st.Delete(ctx, obj("missing/key")); err != nil {
			t.Errorf("delete missing: %v", err)
		}
	})
	t.Run("PutStatOpenDelete", func(t *testing.T) {
		for _, n := range []int{0, 1, 1000, 9<<20 + 7} {
			data := random(n, uint64(n))
			o := obj("small/obj-" + string(rune('a'+n%26)))
			info, err := st.Put(ctx, o, bytes.NewReader(data), int64(n))
			if err != nil {
				t.Fatalf("put %d bytes: %v", n, err)
			}
			if info.Size != int64(n) {
				t.Errorf("put size %d, want %d", info.Size, n)
			}
			s, err := st.Stat(ctx, o)
			if err != nil || s.Size != int64(n) || s.ETag == "" {
				t.Fatalf("stat: %+v %v", s, err)
			}
			for _, off := range []int{0, n / 2, n} {
				rc, err := st.Open(ctx, o, int64(off))
				if err != nil {
					t.Fatalf("open at %d: %v", off, err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, data[off:]) {
					t.Fatalf("%d bytes from %d: read %d bytes, err %v", n, off, len(got), err)
				}
			}
			if err := st.Delete(ctx, o); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Stat(ctx, o); !errors.Is(err, jobs.ErrNotFound) {
				t.Errorf("stat after delete: %v", err)
			}
		}
	})
	t.Run("MultipartUnknownSize", func(t *testing.T) {
		const n = 70<<20 + 12345
		data := random(n, 99)
		o := obj("big/unknown size")
		if _, err := st.Put(ctx, o, io.MultiReader(bytes.NewReader(data)), -1); err != nil {
			t.Fatal(err)
		}
		rc, err := st.Open(ctx, o, 0)
		if err != nil {
			t.Fatal(err)
		}
		h := md5.New()
		if _, err := io.Copy(h, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if want := md5.Sum(data); !bytes.Equal(h.Sum(nil), want[:]) {
			t.Error("multipart object reads back different")
		}
		rc, _ = st.Open(ctx, o, 0)
		rc.Read(make([]byte, 100)) // close early: no hang, no leak
		rc.Close()
		st.Delete(ctx, o)
	})
	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				data := random(3<<20+i, uint64(i))
				o := obj("conc/" + string(rune('a'+i)))
				if _, err := st.Put(ctx, o, bytes.NewReader(data), int64(len(data))); err != nil {
					t.Error(err)
					return
				}
				rc, err := st.Open(ctx, o, 0)
				if err != nil {
					t.Error(err)
					return
				}
				got, _ := io.ReadAll(rc)
				rc.Close()
				if !bytes.Equal(got, data) {
					t.Errorf("object %d differs", i)
				}
				st.Delete(ctx, o)
			}()
		}
		wg.Wait()
	})
	t.Run("HostileKeys", func(t *testing.T) {
		for _, k := range []string{"../escape", "a/../../b", "/abs"} {
			if _, err := st.Put(ctx, obj(k), bytes.NewReader([]byte("x")), 1); !jobs.IsPermanent(err) {
				t.Errorf("put %q: %v, want a permanent refusal", k, err)
			}
		}
	})
}
