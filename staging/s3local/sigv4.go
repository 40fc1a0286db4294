package s3local

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Payload hash values of x-amz-content-sha256 other than a hex digest.
const (
	unsignedPayload  = "UNSIGNED-PAYLOAD"
	streamingSigned  = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	streamingTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
	streamingSignedT = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
	emptySHA256      = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
)

var errSignature = errors.New("SignatureDoesNotMatch")

// auth is a verified request's signing context, kept to verify the chunk
// signatures of a streaming payload.
type auth struct {
	key       []byte
	date      string // x-amz-date
	scope     string
	signature string
	payload   string // x-amz-content-sha256
}

func hmacSHA256(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// verify checks a request's AWS Signature Version 4 (Authorization header)
// against the server's credentials.
func (s *Server) verify(r *http.Request) (*auth, error) {
	h := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !ok {
		return nil, errors.New("AccessDenied: AWS Signature Version 4 required")
	}
	fields := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		fields[k] = v
	}
	cred := strings.Split(fields["Credential"], "/")
	if len(cred) != 5 || cred[4] != "aws4_request" || cred[3] != "s3" {
		return nil, errors.New("AuthorizationHeaderMalformed")
	}
	if subtleNE(cred[0], s.accessKey) {
		return nil, errors.New("InvalidAccessKeyId")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil || !strings.HasPrefix(amzDate, cred[1]) {
		return nil, errors.New("AccessDenied: bad X-Amz-Date")
	}
	if d := time.Since(t); d > 15*time.Minute || d < -15*time.Minute {
		return nil, errors.New("RequestTimeTooSkewed")
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	if payload == "" {
		payload = emptySHA256
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	sort.Strings(signed)
	var ch strings.Builder
	for _, name := range signed {
		var v string
		if name == "host" {
			v = r.Host
		} else {
			v = strings.Join(r.Header.Values(name), ",")
		}
		ch.WriteString(name + ":" + strings.Join(strings.Fields(v), " ") + "\n")
	}
	canonical := strings.Join([]string{
		r.Method,
		r.URL.EscapedPath(),
		strings.ReplaceAll(r.URL.Query().Encode(), "+", "%20"),
		ch.String(),
		strings.Join(signed, ";"),
		payload,
	}, "\n")
	scope := strings.Join(cred[1:], "/")
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + sha256Hex([]byte(canonical))
	key := hmacSHA256([]byte("AWS4"+s.secretKey), cred[1])
	key = hmacSHA256(key, cred[2])
	key = hmacSHA256(key, "s3")
	key = hmacSHA256(key, "aws4_request")
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		return nil, errSignature
	}
	return &auth{key: key, date: amzDate, scope: scope, signature: want, payload: payload}, nil
}

func subtleNE(a, b string) bool { return !hmac.Equal([]byte(a), []byte(b)) }

// body returns the request's payload, decoded and verified as its
// x-amz-content-sha256 says: a plain body checked against its digest at
// EOF, or an aws-chunked body whose chunk signatures are checked as they
// arrive.
func (a *auth) body(r *http.Request) (io.Reader, error) {
	switch a.payload {
	case unsignedPayload:
		return r.Body, nil
	case streamingSigned, streamingSignedT:
		return &chunked{r: bufio.NewReaderSize(r.Body, 64<<10), a: a, prev: a.signature, signed: true}, nil
	case streamingTrailer:
		return &chunked{r: bufio.NewReaderSize(r.Body, 64<<10), a: a}, nil
	}
	if len(a.payload) != 64 {
		return nil, fmt.Errorf("InvalidArgument: x-amz-content-sha256 %q", a.payload)
	}
	return &digestReader{r: r.Body, h: sha256.New(), want: a.payload}, nil
}

type digestReader struct {
	r    io.Reader
	h    hash.Hash
	want string
}

func (d *digestReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	d.h.Write(p[:n])
	if err == io.EOF && hex.EncodeToString(d.h.Sum(nil)) != d.want {
		return n, errors.New("XAmzContentSHA256Mismatch")
	}
	return n, err
}

// chunked decodes aws-chunked: "<hex size>[;chunk-signature=<sig>]\r\n
// <data>\r\n" … "0[;…]\r\n", then optional trailer lines and "\r\n".
type chunked struct {
	r      *bufio.Reader
	a      *auth
	prev   string
	signed bool
	left   int64
	h      hash.Hash
	sig    string
	done   bool
}

const maxChunk = 16 << 20

func (c *chunked) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		if err := c.header(); err != nil {
			return 0, err
		}
		if c.done {
			return 0, io.EOF
		}
	}
	n, err := c.r.Read(p[:min(int64(len(p)), c.left)])
	if c.h != nil {
		c.h.Write(p[:n])
	}
	c.left -= int64(n)
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, err
	}
	if c.left == 0 {
		if err := c.endChunk(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// line reads one header line. ReadSlice keeps it within the reader's
// buffer: a line without an end cannot make the server buffer the body.
func (c *chunked) line() (string, error) {
	l, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(l) > 4096 {
		return "", errors.New("IncompleteBody: chunk header too long")
	}
	if err != nil {
		return "", fmt.Errorf("IncompleteBody: %w", err)
	}
	return strings.TrimRight(string(l), "\r\n"), nil
}

// maxTrailers bounds the trailer lines after the last chunk.
const maxTrailers = 64

func (c *chunked) header() error {
	l, err := c.line()
	if err != nil {
		return err
	}
	sizeHex, ext, _ := strings.Cut(l, ";")
	size, err := strconv.ParseInt(sizeHex, 16, 64)
	if err != nil || size < 0 || size > maxChunk {
		return fmt.Errorf("IncompleteBody: bad chunk size %q", sizeHex)
	}
	c.sig = strings.TrimPrefix(ext, "chunk-signature=")
	c.left, c.h = size, nil
	if c.signed {
		c.h = sha256.New()
	}
	if size == 0 {
		if err := c.verifyChunk(); err != nil {
			return err
		}
		for i := 0; ; i++ { // trailers, if any, end with an empty line (or EOF)
			l, err := c.r.ReadSlice('\n')
			if len(bytes.TrimRight(l, "\r\n")) == 0 || err != nil {
				break
			}
			if i == maxTrailers {
				return errors.New("IncompleteBody: too many trailers")
			}
		}
		c.done = true
	}
	return nil
}

func (c *chunked) endChunk() error {
	l, err := c.line()
	if err != nil || l != "" {
		return errors.New("IncompleteBody: chunk not followed by CRLF")
	}
	return c.verifyChunk()
}

func (c *chunked) verifyChunk() error {
	if !c.signed {
		return nil
	}
	sum := emptySHA256
	if c.h != nil {
		sum = hex.EncodeToString(c.h.Sum(nil))
	}
	toSign := "AWS4-HMAC-SHA256-PAYLOAD\n" + c.a.date + "\n" + c.a.scope + "\n" + c.prev + "\n" + emptySHA256 + "\n" + sum
	want := hex.EncodeToString(hmacSHA256(c.a.key, toSign))
	if !hmac.Equal([]byte(want), []byte(c.sig)) {
		return errSignature
	}
	c.prev = want
	return nil
}
