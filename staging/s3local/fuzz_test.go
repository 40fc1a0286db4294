package s3local

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// FuzzChunked decodes arbitrary aws-chunked bodies, signed and unsigned:
// the decoder must end with data or an error, never panic, and never hand
// out more bytes than the body held.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), false)
	f.Add([]byte("5;chunk-signature=00\r\nhello\r\n0;chunk-signature=00\r\n\r\n"), true)
	f.Add([]byte("0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n"), false)
	f.Add([]byte("ffffffffffffffff\r\n"), false)
	f.Add([]byte(strings.Repeat("a", 70000)), false)
	f.Add([]byte("3\r\nabc"), false)
	f.Fuzz(func(t *testing.T, body []byte, signed bool) {
		a := &auth{key: []byte("k"), date: "20260101T000000Z", scope: "20260101/us-east-1/s3/aws4_request", signature: "00"}
		c := &chunked{r: bufio.NewReaderSize(bytes.NewReader(body), 64<<10), a: a, prev: a.signature, signed: signed}
		n, _ := io.Copy(io.Discard, c)
		if n > int64(len(body)) {
			t.Fatalf("decoded %d bytes out of a %d-byte body", n, len(body))
		}
	})
}

// FuzzVerify checks arbitrary authorization headers: verification must not
// panic, and must never accept a request it cannot have signed.
func FuzzVerify(f *testing.F) {
	now := time.Now().UTC().Format("20060102T150405Z")
	f.Add("AWS4-HMAC-SHA256 Credential=ak/"+now[:8]+"/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00", now, "/b/k?x=1")
	f.Add("AWS4-HMAC-SHA256 Credential=/////, SignedHeaders=;;;, Signature=", "", "/")
	f.Add("AWS4-HMAC-SHA256 ,,,==,Credential", now, "/%zz")
	f.Fuzz(func(t *testing.T, authz, date, target string) {
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		s := &Server{accessKey: "ak", secretKey: "a-secret-key-the-fuzzer-does-not-know"}
		r, err := http.NewRequest(http.MethodGet, "http://127.0.0.1"+target, nil)
		if err != nil {
			return
		}
		r.Header.Set("Authorization", authz)
		r.Header.Set("X-Amz-Date", date)
		if a, err := s.verify(r); err == nil {
			t.Fatalf("accepted a forged request: %+v", a)
		}
	})
}

// TestChunkedBoundsHeaderLines: a chunk header that never ends is refused
// once the reader's buffer is full, instead of being buffered whole.
func TestChunkedBoundsHeaderLines(t *testing.T) {
	line := strings.Repeat("a", 10<<20)
	body := io.MultiReader(strings.NewReader("5;"), strings.NewReader(line))
	c := &chunked{r: bufio.NewReaderSize(body, 64<<10), a: &auth{}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := io.Copy(io.Discard, c)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("got %v, want a header-too-long error", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Errorf("decoding a 10 MiB header line allocated %d bytes: it was buffered", got)
	}
}
