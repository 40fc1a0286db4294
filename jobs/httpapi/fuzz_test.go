package httpapi

import (
	"net/http/httptest"
	"testing"
	"time"
)

// FuzzParseRange checks the Range parser against any header and size: a
// partial answer always lies within the image.
func FuzzParseRange(f *testing.F) {
	for _, h := range []string{"", "bytes=0-", "bytes=-5", "bytes=5-2", "bytes=0-0,2-3", "bytes=99999999999999999999-", "items=0-1", "bytes= 3 - 9 "} {
		f.Add(h, int64(100))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		if size < 0 {
			size = -size
		}
		off, n, partial, err := parseRange(h, size)
		if err != nil {
			return
		}
		if off < 0 || n < 0 || off+n > size || (!partial && (off != 0 || n != size)) || (partial && n == 0) {
			t.Fatalf("Range %q on %d bytes: offset %d, length %d, partial %v", h, size, off, n, partial)
		}
	})
}

// FuzzSignedURL authenticates arbitrary query strings: never a panic, and
// never access without the key.
func FuzzSignedURL(f *testing.F) {
	s := SignedURLs{Keys: [][]byte{key(1)}}
	good, _ := s.Sign("vol", time.Now().Add(time.Hour))
	f.Add(good, "vol")
	f.Add("expires=1&signature=zz", "vol")
	f.Add("expires=&signature=&expires=1", "")
	f.Fuzz(func(t *testing.T, query, volume string) {
		r := httptest.NewRequest("GET", "/v1/images/x", nil)
		r.URL.RawQuery = query
		err := SignedURLs{Keys: [][]byte{key(2)}}.Authenticate(r, volume) // a key the inputs were not signed with
		if err == nil {
			t.Fatalf("query %q for volume %q passed without the key", query, volume)
		}
	})
}
