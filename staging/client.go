package staging

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/cinderport/cinderport/jobs"
)

// Config configures the S3 client.
type Config struct {
	Endpoint  string // host:port
	AccessKey string
	SecretKey string
	Region    string // default us-east-1
	Secure    bool   // HTTPS
	CAFile    string // extra CA bundle for HTTPS
	Insecure  bool   // skip TLS verification (tests only)
	// PartSize is the multipart part size of Put (default 16 MiB); one part
	// is buffered at a time.
	PartSize int64
	// RangeSize and ReadAhead shape Open: ReadAhead ranged GETs of
	// RangeSize bytes are in flight ahead of the reader (defaults 8 MiB, 4).
	RangeSize int64
	ReadAhead int
}

func (c Config) withDefaults() Config {
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	if c.PartSize == 0 {
		c.PartSize = 16 << 20
	}
	if c.RangeSize == 0 {
		c.RangeSize = 8 << 20
	}
	if c.ReadAhead == 0 {
		c.ReadAhead = 4
	}
	return c
}

// Validate reports what is missing or out of range.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, errors.New("staging: no S3 endpoint"))
	}
	if c.AccessKey == "" || c.SecretKey == "" {
		errs = append(errs, errors.New("staging: S3 access key and secret key are required"))
	}
	if c.PartSize < 5<<20 || c.PartSize > 5<<30 {
		errs = append(errs, fmt.Errorf("staging: part size must be 5 MiB..5 GiB, got %d", c.PartSize))
	}
	if c.RangeSize < 64<<10 || c.ReadAhead < 1 || c.ReadAhead > 64 {
		errs = append(errs, errors.New("staging: range size must be at least 64 KiB and read-ahead 1..64"))
	}
	return errors.Join(errs...)
}

// Client is the staging store over S3. It satisfies jobs.Staging.
type Client struct {
	mc  *minio.Client
	cfg Config
}

var _ jobs.Staging = (*Client)(nil)

// New returns a client; it does not contact the server.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 32
	tr.DisableCompression = true
	if cfg.Secure {
		tc := &tls.Config{InsecureSkipVerify: cfg.Insecure, MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("staging: CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("staging: no certificate in %s", cfg.CAFile)
			}
			tc.RootCAs = pool
		}
		tr.TLSClientConfig = tc
	}
	mc, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""), Secure: cfg.Secure,
		Region: cfg.Region, Transport: tr,
	})
	if err != nil {
		return nil, fmt.Errorf("staging: %w", err)
	}
	return &Client{mc: mc, cfg: cfg}, nil
}

// translate maps S3 errors to the domain's.
func translate(op string, o jobs.Object, err error) error {
	if err == nil {
		return nil
	}
	resp := minio.ToErrorResponse(err)
	switch resp.Code {
	case "NoSuchKey", "NoSuchBucket", "NotFound":
		return fmt.Errorf("%s %s: %w", op, o, jobs.ErrNotFound)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName", "InvalidObjectName", "KeyTooLongError":
		return jobs.Permanentf("%s %s: %s: %s", op, o, resp.Code, resp.Message)
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s %s: %w", op, o, jobs.ErrNotFound)
	}
	return fmt.Errorf("%s %s: %w", op, o, err)
}

// EnsureBucket creates the bucket unless it exists.
func (c *Client) EnsureBucket(ctx context.Context, bucket string) error {
	ok, err := c.mc.BucketExists(ctx, bucket)
	if err != nil {
		return translate("check bucket", jobs.Object{Bucket: bucket}, err)
	}
	if ok {
		return nil
	}
	if err := c.mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: c.cfg.Region}); err != nil {
		if r := minio.ToErrorResponse(err); r.Code == "BucketAlreadyOwnedByYou" || r.Code == "BucketAlreadyExists" {
			return nil
		}
		return translate("create bucket", jobs.Object{Bucket: bucket}, err)
	}
	return nil
}

// Stat implements jobs.Staging.
func (c *Client) Stat(ctx context.Context, o jobs.Object) (jobs.ObjectInfo, error) {
	info, err := c.mc.StatObject(ctx, o.Bucket, o.Key, minio.StatObjectOptions{})
	if err != nil {
		return jobs.ObjectInfo{}, translate("stat", o, err)
	}
	return jobs.ObjectInfo{Object: o, Size: info.Size, ETag: info.ETag, VersionID: info.VersionID}, nil
}

// Put implements jobs.Staging. Memory: one part (PartSize) at a time.
func (c *Client) Put(ctx context.Context, o jobs.Object, r io.Reader, size int64) (jobs.ObjectInfo, error) {
	if err := jobs.ValidateKey(o.Key); err != nil {
		return jobs.ObjectInfo{}, jobs.Permanentf("put %s: %v", o, err)
	}
	info, err := c.mc.PutObject(ctx, o.Bucket, o.Key, r, size, minio.PutObjectOptions{
		PartSize: uint64(c.cfg.PartSize), ContentType: "application/octet-stream",
		// The payload is not signed chunk by chunk: over TLS it is protected
		// anyway, and the image hashes are checked end to end.
		DisableContentSha256: true,
	})
	if err != nil {
		return jobs.ObjectInfo{}, translate("put", o, err)
	}
	return jobs.ObjectInfo{Object: o, Size: info.Size, ETag: info.ETag, VersionID: info.VersionID}, nil
}

// Delete implements jobs.Staging.
func (c *Client) Delete(ctx context.Context, o jobs.Object) error {
	err := c.mc.RemoveObject(ctx, o.Bucket, o.Key, minio.RemoveObjectOptions{})
	if err := translate("delete", o, err); err != nil && !errors.Is(err, jobs.ErrNotFound) {
		return err
	}
	return nil
}

// Open implements jobs.Staging: the object from offset on, read ahead with
// parallel ranged GETs, each retried on failure, delivered in order.
func (c *Client) Open(ctx context.Context, o jobs.Object, offset int64) (io.ReadCloser, error) {
	info, err := c.Stat(ctx, o)
	if err != nil {
		return nil, err
	}
	if offset < 0 || offset > info.Size {
		return nil, jobs.Permanentf("open %s at %d: the object has %d bytes", o, offset, info.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &rangeReader{c: c, o: o, etag: info.ETag, end: info.Size, ctx: ctx, cancel: cancel,
		queue: make(chan *rangeBuf, c.cfg.ReadAhead), free: make(chan []byte, c.cfg.ReadAhead+1)}
	for range c.cfg.ReadAhead + 1 {
		r.free <- nil // buffers are allocated on first use
	}
	r.wg.Add(1)
	go r.schedule(offset)
	return r, nil
}

// rangeBuf is one ranged GET: done closes when buf holds it (or err).
type rangeBuf struct {
	off  int64
	buf  []byte
	err  error
	done chan struct{}
}

type rangeReader struct {
	c      *Client
	o      jobs.Object
	etag   string
	end    int64
	ctx    context.Context
	cancel context.CancelFunc
	queue  chan *rangeBuf
	free   chan []byte
	wg     sync.WaitGroup
	cur    *rangeBuf
	pos    int
}

func (r *rangeReader) schedule(offset int64) {
	defer r.wg.Done()
	defer close(r.queue)
	for off := offset; off < r.end; off += r.c.cfg.RangeSize {
		var buf []byte
		select {
		case buf = <-r.free:
		case <-r.ctx.Done():
			return
		}
		n := min(r.c.cfg.RangeSize, r.end-off)
		if int64(cap(buf)) < n {
			buf = make([]byte, n) // a small object gets a small buffer
		}
		rb := &rangeBuf{off: off, buf: buf[:n], done: make(chan struct{})}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			rb.err = r.fetch(rb)
			close(rb.done)
		}()
		select {
		case r.queue <- rb:
		case <-r.ctx.Done():
			return
		}
	}
}

// fetch reads one range, retrying with backoff. The ETag pins the object:
// a replaced object fails the read instead of mixing two versions.
func (r *rangeReader) fetch(rb *rangeBuf) error {
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			select {
			case <-r.ctx.Done():
				return r.ctx.Err()
			case <-time.After(time.Duration(200<<attempt) * time.Millisecond):
			}
		}
		opts := minio.GetObjectOptions{}
		opts.SetRange(rb.off, rb.off+int64(len(rb.buf))-1)
		if r.etag != "" {
			opts.SetMatchETag(r.etag)
		}
		var obj *minio.Object
		obj, err = r.c.mc.GetObject(r.ctx, r.o.Bucket, r.o.Key, opts)
		if err == nil {
			_, err = io.ReadFull(obj, rb.buf)
			obj.Close()
		}
		if err == nil {
			return nil
		}
		if terr := translate("read", r.o, err); jobs.IsPermanent(terr) || errors.Is(terr, jobs.ErrNotFound) ||
			minio.ToErrorResponse(err).Code == "PreconditionFailed" {
			return terr
		}
		if r.ctx.Err() != nil {
			return r.ctx.Err()
		}
	}
	return translate(fmt.Sprintf("read bytes %d+%d of", rb.off, len(rb.buf)), r.o, err)
}

func (r *rangeReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.pos == len(r.cur.buf) {
		if r.cur != nil {
			r.free <- r.cur.buf
			r.cur = nil
		}
		rb, ok := <-r.queue
		if !ok {
			if err := r.ctx.Err(); err != nil {
				return 0, err
			}
			return 0, io.EOF
		}
		select {
		case <-rb.done:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
		if rb.err != nil {
			return 0, rb.err
		}
		r.cur, r.pos = rb, 0
	}
	n := copy(p, r.cur.buf[r.pos:])
	r.pos += n
	return n, nil
}

func (r *rangeReader) Close() error {
	r.cancel()
	go func() { // let the scheduler see the cancellation and exit
		for range r.queue {
		}
	}()
	r.wg.Wait()
	return nil
}
