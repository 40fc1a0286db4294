// Package metrics exposes a worker's Prometheus metrics. It observes the
// worker from the outside: decorators around the ports the runner already
// uses (events, deliveries, volumes, connectors) and around the HTTP API, so
// the domain package stays free of any metrics library.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cinderport/cinderport/jobs"
)

// Metrics holds a worker's series. Create it with New; it is safe for
// concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	jobs        *prometheus.CounterVec
	retries     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	inFlight    *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	volumeCalls *prometheus.HistogramVec
	connects    *prometheus.CounterVec
	devErrors   *prometheus.CounterVec
	reconnects  *prometheus.CounterVec
	requests    *prometheus.CounterVec
	served      prometheus.Counter
}

// New registers every series, with the Go runtime and process collectors,
// in a registry of its own.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_jobs_total",
		Help: "Jobs that reached an outcome on this worker, by kind and outcome (completed, failed, cancelled)."},
		[]string{"kind", "outcome"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_job_retries_total",
		Help: "Job attempts that failed and were handed back for a retry, by kind."}, []string{"kind"})
	m.deadLetters = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_dead_letters_total",
		Help: "Jobs put on the dead-letter subject by this worker, by kind (invalid: undecodable messages)."}, []string{"kind"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_job_bytes_total",
		Help: "Image bytes moved by completed jobs, by kind."}, []string{"kind"})
	m.inFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cinderport_jobs_in_flight",
		Help: "Jobs running on this worker now, by kind."}, []string{"kind"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cinderport_job_duration_seconds",
		Help:    "Time from taking a delivery to settling it, by kind and how it was settled (ack, retry, dead_letter, release).",
		Buckets: prometheus.ExponentialBuckets(0.05, 2, 16)}, []string{"kind", "settled"})
	m.volumeCalls = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cinderport_volume_api_duration_seconds",
		Help:    "Latency of volume service (Cinder) calls, by operation and outcome (ok, not_found, permanent, error).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}, []string{"op", "outcome"})
	m.connects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_device_connects_total",
		Help: "Attempts to connect to attached volumes, by transport (iscsi, local) and outcome (ok, error)."},
		[]string{"driver", "outcome"})
	m.devErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_device_errors_total",
		Help: "Failed block I/O on connected volumes, by transport and operation (read, write, flush)."},
		[]string{"driver", "op"})
	m.reconnects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_iscsi_session_errors_total",
		Help: "iSCSI session failures the initiator recovered from or gave up on, by event (reconnect, lost)."},
		[]string{"event"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cinderport_http_requests_total",
		Help: "HTTP API requests, by route and status code."}, []string{"route", "code"})
	m.served = prometheus.NewCounter(prometheus.CounterOpts{Name: "cinderport_download_bytes_total",
		Help: "Image bytes served by the download API."})
	for _, c := range []prometheus.Collector{m.jobs, m.retries, m.deadLetters, m.bytes, m.inFlight, m.duration,
		m.volumeCalls, m.connects, m.devErrors, m.reconnects, m.requests, m.served,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is the registry the series live in, for tests and for adding
// collectors of other components.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// SessionEvent counts an iSCSI session failure (reconnect or lost); the
// initiator calls it through its configuration hook.
func (m *Metrics) SessionEvent(event string) { m.reconnects.WithLabelValues(event).Inc() }

// Events returns next with every published event counted first.
func (m *Metrics) Events(next jobs.Events) jobs.Events { return eventsObserver{m: m, next: next} }

type eventsObserver struct {
	m    *Metrics
	next jobs.Events
}

func (o eventsObserver) Publish(ctx context.Context, ev jobs.Event) error {
	kind := string(ev.Kind)
	switch ev.State {
	case jobs.StateCompleted:
		o.m.jobs.WithLabelValues(kind, "completed").Inc()
		if ev.Result != nil {
			o.m.bytes.WithLabelValues(kind).Add(float64(ev.Result.Size))
		}
	case jobs.StateFailed, jobs.StateCancelled:
		o.m.jobs.WithLabelValues(kind, string(ev.State)).Inc()
	case jobs.StateRetrying:
		o.m.retries.WithLabelValues(kind).Inc()
	}
	return o.next.Publish(ctx, ev)
}

// Delivery wraps a delivery for the span of its handling: it counts the job
// in flight until the returned done is called, and records how the delivery
// was settled and how long that took.
func (m *Metrics) Delivery(d jobs.Delivery) (jobs.Delivery, func()) {
	kind := "invalid"
	if j, err := jobs.Decode(d.Data()); err == nil {
		j.Normalize()
		kind = string(j.Kind)
	}
	t := &trackedDelivery{Delivery: d, m: m, kind: kind, start: time.Now(), settled: "none"}
	m.inFlight.WithLabelValues(kind).Inc()
	done := func() {
		m.inFlight.WithLabelValues(kind).Dec()
		m.duration.WithLabelValues(kind, t.settled).Observe(time.Since(t.start).Seconds())
	}
	// The worker finds fencing by asserting jobs.Fenced: keep it visible.
	if f, ok := d.(jobs.Fenced); ok {
		return fencedDelivery{trackedDelivery: t, f: f}, done
	}
	return t, done
}

// fencedDelivery is a trackedDelivery whose queue fences job ownership.
type fencedDelivery struct {
	*trackedDelivery
	f jobs.Fenced
}

func (f fencedDelivery) Claim(ctx context.Context, jobID string, stop context.CancelCauseFunc) (jobs.Lease, *jobs.Result, error) {
	return f.f.Claim(ctx, jobID, stop)
}

type trackedDelivery struct {
	jobs.Delivery
	m       *Metrics
	kind    string
	start   time.Time
	settled string
}

func (t *trackedDelivery) Ack(ctx context.Context) error {
	t.settled = "ack"
	return t.Delivery.Ack(ctx)
}

func (t *trackedDelivery) Retry(ctx context.Context, delay time.Duration) error {
	t.settled = "retry"
	return t.Delivery.Retry(ctx, delay)
}

func (t *trackedDelivery) Release(ctx context.Context) error {
	t.settled = "release"
	return t.Delivery.Release(ctx)
}

func (t *trackedDelivery) DeadLetter(ctx context.Context, reason string) error {
	t.settled = "dead_letter"
	err := t.Delivery.DeadLetter(ctx, reason)
	if err == nil {
		t.m.deadLetters.WithLabelValues(t.kind).Inc()
	}
	return err
}

// outcome names an error for the outcome label.
func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, jobs.ErrNotFound):
		return "not_found"
	case jobs.IsPermanent(err):
		return "permanent"
	default:
		return "error"
	}
}

// HTTP counts the requests h serves, by route, and the bytes of image
// downloads. route maps a request to a bounded label (never a raw path).
func (m *Metrics) HTTP(h http.Handler, route func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(cw, r)
		rt := route(r)
		m.requests.WithLabelValues(rt, strconv.Itoa(cw.code)).Inc()
		if rt == "image" {
			m.served.Add(float64(cw.n))
		}
	})
}

type countingWriter struct {
	http.ResponseWriter
	code        int
	n           int64
	wroteHeader bool
}

func (c *countingWriter) WriteHeader(code int) {
	if !c.wroteHeader {
		c.code, c.wroteHeader = code, true
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.wroteHeader = true
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer (flush,
// deadlines).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
