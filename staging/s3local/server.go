// Package s3local is the in-process S3 endpoint of the embedded default: the
// subset of the S3 API that cinderport and minio-go use (buckets, PUT,
// GET with Range, HEAD, DELETE, multipart uploads, ListObjectsV2), on local
// disk, streaming objects of any size through fixed-size buffers. Requests
// are authenticated with AWS Signature Version 4, streaming chunk
// signatures included.
package s3local

import (
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

// Server serves S3 from a directory: <dir>/<bucket>/<sha256(key)>{.data,.meta}
// and <dir>/.uploads/<upload id>/ for multipart uploads in progress.
type Server struct {
	dir       string
	accessKey string
	secretKey string
	log       zerolog.Logger
	mu        sync.Mutex // serialises renames into place and bucket changes

	ln  net.Listener
	srv *http.Server
}

// New returns a handler on dir with the given credentials.
func New(dir, accessKey, secretKey string, log zerolog.Logger) (*Server, error) {
	if accessKey == "" || len(secretKey) < 8 {
		return nil, errors.New("s3local: an access key and a secret key of 8 characters or more are required")
	}
	for _, d := range []string{dir, filepath.Join(dir, ".uploads")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("s3local: %w", err)
		}
	}
	return &Server{dir: dir, accessKey: accessKey, secretKey: secretKey, log: log}, nil
}

// Listen serves on addr (127.0.0.1:0 for any free port) until Close.
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("s3local: %w", err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second}
	go s.srv.Serve(ln)
	return nil
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.srv.Shutdown(ctx)
}

// RandomKey returns n random hex characters, for generated credentials.
func RandomKey(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

type s3Error struct {
	XMLName   xml.Name `xml:"Error"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	Resource  string   `xml:"Resource"`
	RequestID string   `xml:"RequestId"`
}

var statusOf = map[string]int{
	"AccessDenied": 403, "InvalidAccessKeyId": 403, "SignatureDoesNotMatch": 403, "RequestTimeTooSkewed": 403,
	"AuthorizationHeaderMalformed": 400, "InvalidArgument": 400, "InvalidBucketName": 400, "KeyTooLongError": 400,
	"IncompleteBody": 400, "XAmzContentSHA256Mismatch": 400, "InvalidPart": 400, "InvalidPartOrder": 400, "MalformedXML": 400,
	"NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404, "BucketNotEmpty": 409, "PreconditionFailed": 412,
	"InvalidRange": 416, "NotImplemented": 501, "BucketAlreadyOwnedByYou": 409,
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	msg := err.Error()
	code, detail, _ := strings.Cut(msg, ":")
	status, ok := statusOf[code]
	if !ok {
		code, status, detail = "InternalError", 500, msg
		s.log.Error().Err(err).Str("path", r.URL.Path).Msg("s3local")
	}
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		xml.NewEncoder(w).Encode(s3Error{Code: code, Message: strings.TrimSpace(detail), Resource: r.URL.Path})
	}
}

func writeXML(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/xml")
	io.WriteString(w, xml.Header)
	xml.NewEncoder(w).Encode(v)
}

// ServeHTTP routes path-style S3 requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a, err := s.verify(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/")
	bucket, key, _ := strings.Cut(path, "/")
	q := r.URL.Query()
	if bucket == "" {
		if r.Method == http.MethodGet {
			s.listBuckets(w)
			return
		}
		s.fail(w, r, errors.New("NotImplemented: "+r.Method+" /"))
		return
	}
	if !bucketName.MatchString(bucket) {
		s.fail(w, r, errors.New("InvalidBucketName: "+bucket))
		return
	}
	if key == "" {
		switch {
		case r.Method == http.MethodPut:
			err = s.makeBucket(bucket)
		case r.Method == http.MethodHead:
			_, err = s.bucketDir(bucket)
		case r.Method == http.MethodDelete:
			err = s.removeBucket(bucket)
			if err == nil {
				w.WriteHeader(http.StatusNoContent)
				return
			}
		case r.Method == http.MethodGet && q.Has("location"):
			if _, err = s.bucketDir(bucket); err == nil {
				writeXML(w, struct {
					XMLName xml.Name `xml:"LocationConstraint"`
					Region  string   `xml:",chardata"`
				}{Region: "us-east-1"})
				return
			}
		case r.Method == http.MethodGet:
			err = s.list(w, bucket, q)
			if err == nil {
				return
			}
		default:
			err = errors.New("NotImplemented: " + r.Method + " on a bucket")
		}
		if err != nil {
			s.fail(w, r, err)
		}
		return
	}
	if err := jobs.ValidateKey(key); err != nil {
		s.fail(w, r, fmt.Errorf("KeyTooLongError: %v", err))
		return
	}
	switch {
	case r.Method == http.MethodPut && q.Has("uploadId"):
		err = s.uploadPart(w, r, a, bucket, q.Get("uploadId"), q.Get("partNumber"))
	case r.Method == http.MethodPut && r.Header.Get("X-Amz-Copy-Source") != "":
		err = errors.New("NotImplemented: copy")
	case r.Method == http.MethodPut:
		err = s.putObject(w, r, a, bucket, key)
	case r.Method == http.MethodPost && q.Has("uploads"):
		err = s.initiate(w, bucket, key)
	case r.Method == http.MethodPost && q.Has("uploadId"):
		err = s.complete(w, r, a, bucket, key, q.Get("uploadId"))
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		err = s.abort(w, q.Get("uploadId"))
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		err = s.getObject(w, r, bucket, key)
	case r.Method == http.MethodDelete:
		err = s.deleteObject(w, bucket, key)
	default:
		err = errors.New("NotImplemented: " + r.Method)
	}
	if err != nil {
		s.fail(w, r, err)
	}
}

type meta struct {
	Key      string    `json:"key"`
	Size     int64     `json:"size"`
	ETag     string    `json:"etag"`
	Modified time.Time `json:"modified"`
}

func objectName(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

func (s *Server) bucketDir(bucket string) (string, error) {
	d := filepath.Join(s.dir, bucket)
	if st, err := os.Stat(d); err != nil || !st.IsDir() {
		return "", errors.New("NoSuchBucket: " + bucket)
	}
	return d, nil
}

func (s *Server) makeBucket(bucket string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Mkdir(filepath.Join(s.dir, bucket), 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return errors.New("BucketAlreadyOwnedByYou: " + bucket)
		}
		return err
	}
	return nil
}

func (s *Server) removeBucket(bucket string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, err := s.bucketDir(bucket)
	if err != nil {
		return err
	}
	if err := os.Remove(d); err != nil {
		return errors.New("BucketNotEmpty: " + bucket)
	}
	return nil
}

func (s *Server) listBuckets(w http.ResponseWriter) {
	type b struct {
		Name         string `xml:"Name"`
		CreationDate string `xml:"CreationDate"`
	}
	var out struct {
		XMLName xml.Name `xml:"ListAllMyBucketsResult"`
		Buckets []b      `xml:"Buckets>Bucket"`
	}
	entries, _ := os.ReadDir(s.dir)
	for _, e := range entries {
		if e.IsDir() && bucketName.MatchString(e.Name()) {
			out.Buckets = append(out.Buckets, b{Name: e.Name(), CreationDate: time.Now().UTC().Format(time.RFC3339)})
		}
	}
	writeXML(w, out)
}

// receive streams body into a temp file in dir, returning its size and md5.
func receive(dir string, body io.Reader) (path string, size int64, sum []byte, err error) {
	f, err := os.CreateTemp(dir, ".incoming-*")
	if err != nil {
		return "", 0, nil, err
	}
	h := md5.New()
	buf := make([]byte, 1<<20)
	size, err = io.CopyBuffer(io.MultiWriter(f, h), body, buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, nil, err
	}
	return f.Name(), size, h.Sum(nil), nil
}

func (s *Server) install(bucketDir, tmp string, m meta) error {
	b, _ := json.Marshal(m)
	name := filepath.Join(bucketDir, objectName(m.Key))
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.WriteFile(name+".meta.tmp", b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, name+".data"); err != nil {
		return err
	}
	return os.Rename(name+".meta.tmp", name+".meta")
}

func bodyError(err error) error {
	if code, _, ok := strings.Cut(err.Error(), ":"); ok && statusOf[code] != 0 || statusOf[err.Error()] != 0 {
		return err
	}
	return fmt.Errorf("IncompleteBody: %v", err)
}

func (s *Server) putObject(w http.ResponseWriter, r *http.Request, a *auth, bucket, key string) error {
	d, err := s.bucketDir(bucket)
	if err != nil {
		return err
	}
	body, err := a.body(r)
	if err != nil {
		return err
	}
	tmp, size, sum, err := receive(d, body)
	if err != nil {
		return bodyError(err)
	}
	if want := r.Header.Get("Content-MD5"); want != "" && want != b64(sum) {
		os.Remove(tmp)
		return errors.New("InvalidArgument: Content-MD5 does not match the body")
	}
	m := meta{Key: key, Size: size, ETag: hex.EncodeToString(sum), Modified: time.Now().UTC()}
	if err := s.install(d, tmp, m); err != nil {
		os.Remove(tmp)
		return err
	}
	w.Header().Set("ETag", `"`+m.ETag+`"`)
	return nil
}

func (s *Server) stat(bucket, key string) (string, meta, error) {
	d, err := s.bucketDir(bucket)
	if err != nil {
		return "", meta{}, err
	}
	name := filepath.Join(d, objectName(key))
	b, err := os.ReadFile(name + ".meta")
	if err != nil {
		return "", meta{}, errors.New("NoSuchKey: " + key)
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil || m.Key != key {
		return "", meta{}, errors.New("NoSuchKey: " + key)
	}
	return name + ".data", m, nil
}

func (s *Server) getObject(w http.ResponseWriter, r *http.Request, bucket, key string) error {
	path, m, err := s.stat(bucket, key)
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return errors.New("NoSuchKey: " + key)
	}
	defer f.Close()
	etag := `"` + m.ETag + `"`
	if im := r.Header.Get("If-Match"); im != "" && strings.Trim(im, `"`) != m.ETag {
		return errors.New("PreconditionFailed: ETag changed")
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Last-Modified", m.Modified.Format(http.TimeFormat))
	r.Header.Del("If-Match") // checked above; ServeContent would compare it too
	http.ServeContent(w, r, "", m.Modified, f)
	return nil
}

func (s *Server) deleteObject(w http.ResponseWriter, bucket, key string) error {
	d, err := s.bucketDir(bucket)
	if err != nil {
		return err
	}
	name := filepath.Join(d, objectName(key))
	s.mu.Lock()
	os.Remove(name + ".meta")
	os.Remove(name + ".data")
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) list(w http.ResponseWriter, bucket string, q map[string][]string) error {
	d, err := s.bucketDir(bucket)
	if err != nil {
		return err
	}
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	prefix, after := get("prefix"), get("start-after")
	if tok := get("continuation-token"); tok != "" {
		after = tok
	}
	maxKeys := 1000
	if n, err := strconv.Atoi(get("max-keys")); err == nil && n > 0 && n < 1000 {
		maxKeys = n
	}
	entries, _ := filepath.Glob(filepath.Join(d, "*.meta"))
	var all []meta
	for _, e := range entries {
		b, err := os.ReadFile(e)
		var m meta
		if err == nil && json.Unmarshal(b, &m) == nil && strings.HasPrefix(m.Key, prefix) && m.Key > after {
			all = append(all, m)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Key < all[j].Key })
	type content struct {
		Key          string `xml:"Key"`
		LastModified string `xml:"LastModified"`
		ETag         string `xml:"ETag"`
		Size         int64  `xml:"Size"`
		StorageClass string `xml:"StorageClass"`
	}
	var out struct {
		XMLName     xml.Name  `xml:"ListBucketResult"`
		Name        string    `xml:"Name"`
		Prefix      string    `xml:"Prefix"`
		KeyCount    int       `xml:"KeyCount"`
		MaxKeys     int       `xml:"MaxKeys"`
		IsTruncated bool      `xml:"IsTruncated"`
		NextToken   string    `xml:"NextContinuationToken,omitempty"`
		Contents    []content `xml:"Contents"`
	}
	out.Name, out.Prefix, out.MaxKeys = bucket, prefix, maxKeys
	if len(all) > maxKeys {
		all, out.IsTruncated = all[:maxKeys], true
		out.NextToken = all[maxKeys-1].Key
	}
	for _, m := range all {
		out.Contents = append(out.Contents, content{Key: m.Key, LastModified: m.Modified.Format(time.RFC3339), ETag: `"` + m.ETag + `"`, Size: m.Size, StorageClass: "STANDARD"})
	}
	out.KeyCount = len(out.Contents)
	writeXML(w, out)
	return nil
}
