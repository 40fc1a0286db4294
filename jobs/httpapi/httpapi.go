// Package httpapi is the worker's HTTP interface: health and readiness
// probes, metrics, and image downloads streamed from volumes (exactly
// image_size bytes, single-range requests, hash headers). Downloads are
// always authenticated: by a signed URL or a Keystone token.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
)

// Response headers carrying the image's hashes, as Glance names them.
const (
	HeaderChecksum  = "X-Image-Checksum"
	HeaderHashAlgo  = "X-Image-Os-Hash-Algo"
	HeaderHashValue = "X-Image-Os-Hash-Value"
)

// Server serves the worker's HTTP API.
type Server struct {
	Downloads *jobs.Downloads
	// Ready reports whether the worker can take work (NATS, S3 and the
	// volume service reachable); nil means always ready.
	Ready func(ctx context.Context) error
	// Auth decides who may download; nil refuses every download.
	Auth Authenticator
	// Metrics, when set, is served on /metrics.
	Metrics http.Handler
	// Profiling serves Go's runtime profiles on /debug/pprof/ (off by
	// default: they reveal internals and cost CPU while taken).
	Profiling bool
	Log       zerolog.Logger
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /v1/images/{volume_id}", s.image)
	mux.HandleFunc("HEAD /v1/images/{volume_id}", s.image)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics)
	}
	if s.Profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// Route names the API route of r, for bounded metric labels.
func Route(r *http.Request) string {
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/v1/images/"):
		return "image"
	case p == "/healthz", p == "/readyz", p == "/metrics":
		return p[1:]
	case strings.HasPrefix(p, "/debug/pprof/"):
		return "pprof"
	default:
		return "other"
	}
}

// authenticate answers the request itself and returns false when it may
// not download volumeID.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request, log zerolog.Logger, volumeID string) bool {
	if s.Auth == nil {
		http.Error(w, "downloads are not enabled on this worker", http.StatusForbidden)
		return false
	}
	err := s.Auth.Authenticate(r, volumeID)
	switch {
	case err == nil:
		return true
	case errors.Is(err, ErrNoCredentials), errors.Is(err, ErrUnauthenticated), errors.Is(err, ErrForbidden):
		log.Info().Str("remote", r.RemoteAddr).Str("reason", err.Error()).Msg("download refused")
		if authStatus(err) == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Cinderport realm="downloads"`)
		}
		http.Error(w, err.Error(), authStatus(err))
	default: // the token service could not answer
		log.Warn().Err(err).Msg("download authentication unavailable")
		w.Header().Set("Retry-After", "5")
		http.Error(w, "authentication service unavailable", http.StatusServiceUnavailable)
	}
	return false
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, "ready")
}

// ImagePath is the download path of a volume's image.
func ImagePath(volumeID string) string { return "/v1/images/" + volumeID }

func (s *Server) image(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("volume_id")
	log := s.Log.With().Str("volume_id", id).Logger()
	if !s.authenticate(w, r, log, id) {
		return
	}
	info, err := s.Downloads.Stat(r.Context(), id)
	if err != nil {
		s.fail(w, log, err)
		return
	}
	off, n, partial, err := parseRange(r.Header.Get("Range"), info.Size)
	if err != nil {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(info.Size, 10))
		http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return
	}
	h := w.Header()
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	if info.Checksum != "" {
		h.Set("ETag", `"`+info.Checksum+`"`)
		h.Set(HeaderChecksum, info.Checksum)
	}
	if info.HashValue != "" {
		h.Set(HeaderHashAlgo, info.HashAlgo)
		h.Set(HeaderHashValue, info.HashValue)
	}
	status := http.StatusOK
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, info.Size))
		status = http.StatusPartialContent
	}
	if r.Method == http.MethodHead || n == 0 {
		w.WriteHeader(status)
		return
	}
	img, err := s.Downloads.Open(r.Context(), info)
	if err != nil {
		s.fail(w, log, err)
		return
	}
	defer img.Close()
	w.WriteHeader(status)
	start := time.Now()
	dg, err := img.WriteRange(r.Context(), w, off, n)
	if err != nil {
		// Headers are gone: the client sees a short body.
		log.Warn().Err(err).Int64("offset", off).Int64("length", n).Msg("download interrupted")
		return
	}
	ev := log.Info().Int64("bytes", dg.Bytes).Dur("took", time.Since(start))
	if dg.MD5 != "" && info.Checksum != "" && dg.MD5 != info.Checksum {
		log.Error().Str("md5", dg.MD5).Str("want", info.Checksum).Msg("image read back with a different checksum")
		return
	}
	ev.Msg("download served")
}

func (s *Server) fail(w http.ResponseWriter, log zerolog.Logger, err error) {
	switch {
	case errors.Is(err, jobs.ErrNotFound):
		http.Error(w, "no such image volume", http.StatusNotFound)
	case jobs.IsPermanent(err):
		log.Warn().Err(err).Msg("download refused")
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	default:
		log.Error().Err(err).Msg("download failed")
		w.Header().Set("Retry-After", "5")
		http.Error(w, "volume temporarily unavailable", http.StatusServiceUnavailable)
	}
}

// parseRange reads a single-range "bytes=" header against size. Anything
// it does not understand (several ranges, other units) is served whole, as
// RFC 9110 allows.
func parseRange(h string, size int64) (off, n int64, partial bool, err error) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if h == "" || !ok || strings.Contains(spec, ",") {
		return 0, size, false, nil
	}
	first, last, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, size, false, nil
	}
	if first == "" { // suffix: the last N bytes
		k, err := strconv.ParseInt(last, 10, 64)
		if err != nil || k <= 0 {
			return 0, 0, false, errors.New("invalid range")
		}
		if size == 0 { // RFC 9110: no byte of an empty image can be selected
			return 0, 0, false, errors.New("range of an empty image")
		}
		k = min(k, size)
		return size - k, k, true, nil
	}
	a, err := strconv.ParseInt(first, 10, 64)
	if err != nil || a < 0 || a >= size {
		return 0, 0, false, errors.New("range starts past the end")
	}
	b := size - 1
	if last != "" {
		if b, err = strconv.ParseInt(last, 10, 64); err != nil || b < a {
			return 0, 0, false, errors.New("invalid range")
		}
		b = min(b, size-1)
	}
	return a, b - a + 1, true, nil
}
