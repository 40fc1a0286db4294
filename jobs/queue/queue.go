package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
)

// Names of the streams, bucket and subjects.
const (
	JobsStream     = "CINDERPORT_JOBS"
	DeadStream     = "CINDERPORT_DEAD"
	AdvisoryStream = "CINDERPORT_ADVISORIES"
	StatusBucket   = "cinderport_status"
	jobsPrefix     = "cinderport.jobs."
	deadPrefix     = "cinderport.dead."
	eventsPrefix   = "cinderport.events."
	// statusPrefix is the subject prefix of the status bucket's entries.
	statusPrefix = "$KV." + StatusBucket + "."

	maxDeliveriesPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."
)

// maxStoredMessage is the largest job message the stream takes: NATS's
// default max_payload. Jobs are limited to jobs.MaxMessageBytes, but an
// oversized message must reach a worker to be dead-lettered with its reason
// rather than only fail at its producer.
const maxStoredMessage = 1 << 20

// Headers on dead letters.
const (
	// HeaderTruncated carries the original size of a message too large to
	// keep whole in the dead letters (its first jobs.MaxMessageBytes are).
	HeaderTruncated = "Cinderport-Truncated"
	HeaderReason    = "Cinderport-Reason"
	HeaderJobID     = "Cinderport-Job-Id"
	HeaderAttempts  = "Cinderport-Attempts"
	HeaderSubject   = "Cinderport-Subject"
	HeaderTime      = "Cinderport-Time"
)

// Config configures the streams and consumers.
type Config struct {
	// Replicas of streams and bucket (1; 3 on a 3-node cluster).
	Replicas int
	// Duplicates is the de-duplication window for job ids (default 10 min).
	Duplicates time.Duration
	// AckWait is how long a delivered job may go without a heartbeat before
	// it is redelivered (default 60 s).
	AckWait time.Duration
	// MaxDeliver bounds the deliveries of a job (default 5).
	MaxDeliver int
	// MaxAckPending bounds the jobs in flight per zone (default 1024).
	MaxAckPending int
	// StatusTTL is how long job statuses are kept (default 7 days); lease
	// entries and cancel requests are kept as long.
	StatusTTL time.Duration
	// Worker names this process in the leases it takes (informational).
	Worker string
	// AsyncError, when set, hears of a status write that was not waited
	// for (running and progress events) and failed.
	AsyncError func(jobID string, err error)
	// Existing makes Open use the streams and buckets as the workers made
	// them (their replicas and limits), creating only what is missing: what
	// a client such as the enqueue CLI wants, so that it never reconfigures
	// a deployment. Workers leave it false: they create and update.
	Existing bool
}

func (c Config) withDefaults() Config {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Duplicates == 0 {
		c.Duplicates = 10 * time.Minute
	}
	if c.AckWait == 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 5
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 1024
	}
	if c.StatusTTL == 0 {
		c.StatusTTL = 7 * 24 * time.Hour
	}
	return c
}

// Validate reports a configuration the server would refuse.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("queue: replicas must be 1..5, got %d", c.Replicas)
	case c.AckWait < time.Second:
		return fmt.Errorf("queue: AckWait must be at least 1 s, got %v", c.AckWait)
	case c.MaxDeliver < 1:
		return fmt.Errorf("queue: MaxDeliver must be at least 1")
	}
	return nil
}

// ConnectOptions configure Connect.
type ConnectOptions struct {
	Name      string
	CredsFile string
	// RootCAs and client certificate for TLS, when set.
	RootCAs           string
	CertFile, KeyFile string
}

// Connect dials NATS and reconnects forever: the server redelivers only
// after AckWait, so a worker rides out a broken connection.
func Connect(ctx context.Context, url string, o ConnectOptions) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(o.Name), nats.MaxReconnects(-1), nats.ReconnectWait(500 * time.Millisecond)}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.RootCAs != "" {
		opts = append(opts, nats.RootCAs(o.RootCAs))
	}
	if o.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(dl)))
	}
	return nats.Connect(url, opts...)
}

// Queue is an open job queue.
type Queue struct {
	nc         *nats.Conn
	js         jetstream.JetStream
	cfg        Config
	jobs       jetstream.Stream
	dead       jetstream.Stream
	advisories jetstream.Stream
	status     jetstream.KeyValue
	leases     jetstream.KeyValue
	cancels    jetstream.KeyValue
	runs       registry
}

var _ jobs.Events = (*Queue)(nil)

// Open creates or updates the streams and the status bucket.
func Open(ctx context.Context, nc *nats.Conn, cfg Config) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		if cfg.AsyncError != nil {
			cfg.AsyncError(strings.TrimPrefix(m.Subject, statusPrefix), err)
		}
	}))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	q := &Queue{nc: nc, js: js, cfg: cfg}
	q.jobs, err = q.stream(ctx, jetstream.StreamConfig{
		Name: JobsStream, Subjects: []string{jobsPrefix + ">"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Duplicates: cfg.Duplicates, Replicas: cfg.Replicas,
		MaxMsgSize: maxStoredMessage, Discard: jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", JobsStream, err)
	}
	q.dead, err = q.stream(ctx, jetstream.StreamConfig{
		Name: DeadStream, Subjects: []string{deadPrefix + ">"}, Retention: jetstream.LimitsPolicy,
		Storage: jetstream.FileStorage, Duplicates: cfg.Duplicates, Replicas: cfg.Replicas, MaxAge: 30 * 24 * time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", DeadStream, err)
	}
	// The server announces a job that exhausted its deliveries once, on a
	// plain subject: a stream keeps the announcements until a worker has
	// moved the job to the dead letters, even when none runs at the time.
	q.advisories, err = q.stream(ctx, jetstream.StreamConfig{
		Name: AdvisoryStream, Subjects: []string{maxDeliveriesPrefix + JobsStream + ".*"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Replicas: cfg.Replicas, MaxAge: cfg.StatusTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", AdvisoryStream, err)
	}
	for _, b := range []struct {
		name string
		kv   *jetstream.KeyValue
	}{{StatusBucket, &q.status}, {LeaseBucket, &q.leases}, {CancelBucket, &q.cancels}} {
		*b.kv, err = q.bucket(ctx, jetstream.KeyValueConfig{
			Bucket: b.name, History: 1, TTL: cfg.StatusTTL, Replicas: cfg.Replicas, Storage: jetstream.FileStorage,
		})
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", b.name, err)
		}
	}
	return q, nil
}

// stream creates or updates a stream — or, for a client (Config.Existing),
// uses it as it is and creates it only when it is missing.
func (q *Queue) stream(ctx context.Context, sc jetstream.StreamConfig) (jetstream.Stream, error) {
	if q.cfg.Existing {
		s, err := q.js.Stream(ctx, sc.Name)
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return s, err
		}
		s, err = q.js.CreateStream(ctx, sc)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // a worker made it meanwhile
			return q.js.Stream(ctx, sc.Name)
		}
		return s, err
	}
	return q.js.CreateOrUpdateStream(ctx, sc)
}

// bucket is stream's counterpart for key-value buckets.
func (q *Queue) bucket(ctx context.Context, kc jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if q.cfg.Existing {
		kv, err := q.js.KeyValue(ctx, kc.Bucket)
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return kv, err
		}
		kv, err = q.js.CreateKeyValue(ctx, kc)
		if errors.Is(err, jetstream.ErrBucketExists) {
			return q.js.KeyValue(ctx, kc.Bucket)
		}
		return kv, err
	}
	return q.js.CreateOrUpdateKeyValue(ctx, kc)
}

// Subject is a job's subject.
func Subject(kind jobs.Kind, zone string) string {
	return jobsPrefix + string(kind) + "." + zone
}

// EnqueueResult reports an enqueue.
type EnqueueResult struct {
	Seq uint64
	// Duplicate is true when nothing new was queued: the message id was
	// published within the de-duplication window, or the job id is known
	// already (it has a status past queued: running, retrying or ended).
	Duplicate bool
	// Status is the job's status when its job id was known already.
	Status *jobs.Event
}

// EnqueueOption configures Enqueue.
type EnqueueOption func(*enqueueOptions)

type enqueueOptions struct{ msgID string }

// WithMsgID de-duplicates the job by id instead of by job id (the bridge of
// bucket notifications uses bucket/key@version).
func WithMsgID(id string) EnqueueOption { return func(o *enqueueOptions) { o.msgID = id } }

// Enqueue validates and publishes a job, its id as Nats-Msg-Id, and
// records it as queued. A job id that already has a status past queued is a
// duplicate: nothing is published, so a job is never run again because its
// de-duplication window passed. A job still queued is published again (the
// de-duplication window drops it if the first publish got through), so an
// enqueue that failed between recording and publishing can be repeated.
func (q *Queue) Enqueue(ctx context.Context, job jobs.Job, opts ...EnqueueOption) (EnqueueResult, error) {
	o := enqueueOptions{msgID: job.ID}
	for _, opt := range opts {
		opt(&o)
	}
	job.Normalize()
	data, err := jobs.Encode(job)
	if err != nil {
		return EnqueueResult{}, err
	}
	_, err = q.status.Create(ctx, job.ID, q.mustJSON(jobs.Event{JobID: job.ID, Kind: job.Kind, State: jobs.StateQueued,
		ImageID: job.ImageID, Total: job.Size, Time: time.Now().UTC()}))
	if errors.Is(err, jetstream.ErrKeyExists) {
		ev, serr := q.Status(ctx, job.ID)
		if serr != nil && !errors.Is(serr, jobs.ErrNotFound) {
			return EnqueueResult{}, serr
		}
		if serr == nil && ev.State != jobs.StateQueued {
			return EnqueueResult{Duplicate: true, Status: &ev}, nil
		}
	} else if err != nil {
		return EnqueueResult{}, fmt.Errorf("record status of job %s: %w", job.ID, err)
	}
	return q.EnqueueRaw(ctx, Subject(job.Kind, job.Zone), data, o.msgID)
}

// EnqueueRaw publishes data as a job on subject, unvalidated (tests use it
// to send what a broken producer would).
func (q *Queue) EnqueueRaw(ctx context.Context, subject string, data []byte, msgID string) (EnqueueResult, error) {
	msg := nats.NewMsg(subject)
	msg.Data = data
	ack, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(JobsStream))
	if err != nil {
		return EnqueueResult{}, fmt.Errorf("publish job %s: %w", msgID, err)
	}
	return EnqueueResult{Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

func (q *Queue) mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// Publish implements jobs.Events: the event goes out on its subject and
// becomes the job's status.
func (q *Queue) Publish(ctx context.Context, ev jobs.Event) error {
	if ev.JobID == "" || strings.ContainsAny(ev.JobID, ".*> \t\r\n") {
		return fmt.Errorf("publish event: invalid job id %q", truncate(ev.JobID, 40))
	}
	b := q.mustJSON(ev)
	if err := q.nc.Publish(eventsPrefix+ev.JobID+"."+string(ev.State), b); err != nil {
		return fmt.Errorf("publish event of job %s: %w", ev.JobID, err)
	}
	if !ev.State.Terminal() {
		// Running and progress events are not waited for: a small job goes
		// through its steps within milliseconds, and a round trip to the
		// stream for each would be most of its time. The connection keeps
		// them in order, so the terminal event, which waits, is recorded
		// after them; one lost in a broken connection is superseded by the
		// next (and reported to Config.AsyncError).
		if _, err := q.js.PublishAsync(statusPrefix+ev.JobID, b); err != nil {
			return fmt.Errorf("record status of job %s: %w", ev.JobID, err)
		}
		return nil
	}
	if _, err := q.status.Put(ctx, ev.JobID, b); err != nil {
		return fmt.Errorf("record status of job %s: %w", ev.JobID, err)
	}
	return nil
}

// Flush waits until the status writes that were not waited for are
// recorded, or ctx ends: a worker calls it before it disconnects.
func (q *Queue) Flush(ctx context.Context) error {
	select {
	case <-q.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d status writes still unconfirmed: %w", q.js.PublishAsyncPending(), ctx.Err())
	}
}

// Status returns a job's latest event, or an error wrapping
// jobs.ErrNotFound.
func (q *Queue) Status(ctx context.Context, jobID string) (jobs.Event, error) {
	e, err := q.status.Get(ctx, jobID)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return jobs.Event{}, fmt.Errorf("job %s: %w", jobID, jobs.ErrNotFound)
	}
	if err != nil {
		return jobs.Event{}, err
	}
	var ev jobs.Event
	if err := json.Unmarshal(e.Value(), &ev); err != nil {
		return jobs.Event{}, fmt.Errorf("status of job %s: %w", jobID, err)
	}
	return ev, nil
}

// Watch calls fn with the job's current status and every change, until fn
// returns false or ctx ends. A job with no status yet is waited for.
func (q *Queue) Watch(ctx context.Context, jobID string, fn func(jobs.Event) bool) error {
	w, err := q.status.Watch(ctx, jobID)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("status watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var ev jobs.Event
			if err := json.Unmarshal(e.Value(), &ev); err != nil {
				continue
			}
			if !fn(ev) {
				return nil
			}
		}
	}
}

// Consume runs handle for the zone's jobs with at most slots at once,
// pulling one message per free slot (a buffered message would burn its
// AckWait while waiting). When ctx ends it stops pulling and returns once
// every running handler returned. Handlers get a context that ctx does not
// cancel: the caller decides how running jobs drain.
func (q *Queue) Consume(ctx context.Context, zone string, slots int, handle func(context.Context, jobs.Delivery)) error {
	var cons jetstream.Consumer
	var err error
	// A cluster that just lost a node answers once it elected new leaders:
	// a request that timed out is repeated.
	for attempt := 0; ; attempt++ {
		cons, err = q.jobs.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: "cinderport-" + zone, FilterSubject: jobsPrefix + "*." + zone,
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: q.cfg.AckWait, MaxDeliver: q.cfg.MaxDeliver,
			MaxAckPending: max(q.cfg.MaxAckPending, slots), DeliverPolicy: jetstream.DeliverAllPolicy,
		})
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || attempt == 5 {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("consumer for zone %s: %w", zone, err)
	}
	free := make(chan struct{}, slots)
	for range slots {
		free <- struct{}{}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	// Cancel requests reach the running jobs until the last one returned;
	// the watch is in place before the first job is taken.
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWatch()
	cw, err := q.cancels.WatchAll(wctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("watch cancel requests: %w", err)
	}
	watchDone := make(chan struct{})
	go func() { defer close(watchDone); q.dispatchCancels(wctx, cw) }()
	defer func() { stopWatch(); <-watchDone }()
	hctx := context.WithoutCancel(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-free:
		}
		msg, err := q.next(ctx, cons)
		if msg == nil {
			free <- struct{}{}
			if err != nil && ctx.Err() == nil {
				select { // the server is away: back off a little
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { free <- struct{}{} }()
			handle(hctx, newDelivery(q, msg))
		}()
	}
}

// next pulls one message, waiting up to a second.
func (q *Queue) next(ctx context.Context, cons jetstream.Consumer) (jetstream.Msg, error) {
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		return nil, err
	}
	for m := range batch.Messages() {
		return m, nil
	}
	return nil, batch.Error()
}

// delivery is one job message: it satisfies jobs.Delivery, and with its
// lease (lease.go) jobs.Fenced and jobs.Lease.
type delivery struct {
	q   *Queue
	msg jetstream.Msg
	seq uint64 // stream sequence

	// Set by Claim.
	jobID  string
	stop   context.CancelCauseFunc
	token  string
	closed chan struct{}

	closeOnce  sync.Once
	mu         sync.Mutex
	rev        uint64
	validUntil time.Time
	lost       bool
}

var (
	_ jobs.Fenced = (*delivery)(nil)
	_ jobs.Lease  = (*delivery)(nil)
)

func newDelivery(q *Queue, msg jetstream.Msg) *delivery {
	d := &delivery{q: q, msg: msg, closed: make(chan struct{})}
	if md, err := msg.Metadata(); err == nil {
		d.seq = md.Sequence.Stream
	}
	return d
}

func (d *delivery) Data() []byte { return d.msg.Data() }

func (d *delivery) Attempt() int {
	md, err := d.msg.Metadata()
	if err != nil {
		return 1
	}
	return int(md.NumDelivered)
}

// InProgress implements jobs.Delivery; once the job is claimed, it renews
// the lease too (Hold).
func (d *delivery) InProgress(ctx context.Context) error {
	if d.stop != nil {
		return d.Hold(ctx)
	}
	return d.msg.InProgress()
}

func (d *delivery) Ack(ctx context.Context) error { return d.msg.DoubleAck(ctx) }

func (d *delivery) Retry(ctx context.Context, delay time.Duration) error {
	return d.msg.NakWithDelay(delay)
}

// Release hands the job back at once. JetStream counts the delivery
// anyway; the worker's attempt budget is MaxDeliver.
func (d *delivery) Release(ctx context.Context) error { return d.msg.Nak() }

// DeadLetter publishes the job to the dead letters with the reason, and
// only then terminates it (on a work queue, Term deletes the message).
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	id := ""
	if md, err := d.msg.Metadata(); err == nil {
		id = "dead-" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	if err := d.q.deadLetter(ctx, d.msg.Subject(), d.msg.Data(), d.msg.Headers().Get(nats.MsgIdHdr), reason, d.Attempt(), id); err != nil {
		return err
	}
	return d.msg.TermWithReason(truncate(reason, 256))
}

// deadLetter publishes a dead letter. origID, the original Nats-Msg-Id,
// names the job when its body is too broken to say.
func (q *Queue) deadLetter(ctx context.Context, subject string, data []byte, origID, reason string, attempts int, msgID string) error {
	rest := strings.TrimPrefix(subject, jobsPrefix)
	msg := nats.NewMsg(deadPrefix + rest)
	msg.Data = data
	if len(data) > jobs.MaxMessageBytes {
		msg.Data = data[:jobs.MaxMessageBytes]
		msg.Header.Set(HeaderTruncated, strconv.Itoa(len(data)))
	}
	if j, err := jobs.Decode(data); err == nil {
		msg.Header.Set(HeaderJobID, j.ID)
	} else if id := looseID(data); id != "" {
		msg.Header.Set(HeaderJobID, id)
	} else if origID != "" {
		msg.Header.Set(HeaderJobID, truncate(origID, 128))
	}
	msg.Header.Set(HeaderReason, truncate(reason, 4096))
	msg.Header.Set(HeaderAttempts, strconv.Itoa(attempts))
	msg.Header.Set(HeaderSubject, subject)
	msg.Header.Set(HeaderTime, time.Now().UTC().Format(time.RFC3339Nano))
	var opts []jetstream.PublishOpt
	if msgID != "" {
		opts = append(opts, jetstream.WithMsgID(msgID))
	}
	if _, err := q.js.PublishMsg(ctx, msg, opts...); err != nil {
		return fmt.Errorf("publish dead letter: %w", err)
	}
	return nil
}

func looseID(data []byte) string {
	var v struct {
		ID string `json:"id"`
	}
	if len(data) > jobs.MaxMessageBytes || json.Unmarshal(data, &v) != nil || len(v.ID) > 128 {
		return ""
	}
	return v.ID
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// WatchMaxDeliveries moves jobs that exhausted MaxDeliver (the worker that
// had them died or hung on the last attempt) to the dead letters, until ctx
// ends. It reads the server's announcements from the stream
// CINDERPORT_ADVISORIES through a durable consumer that every worker shares,
// so an announcement made while no worker ran is handled by the next one;
// the dead letter is de-duplicated by the job's stream sequence. The job's
// lease is dropped, so that a worker still running it (hung, not dead)
// stops at its next heartbeat instead of finishing it.
func (q *Queue) WatchMaxDeliveries(ctx context.Context) error {
	cons, err := q.advisories.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "cinderport-max-deliveries", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("consumer of %s: %w", AdvisoryStream, err)
	}
	for {
		msg, err := q.next(ctx, cons)
		if msg == nil {
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(500 * time.Millisecond):
				}
			}
			continue
		}
		if err := q.deadLetterExhausted(ctx, msg.Data()); err != nil {
			msg.NakWithDelay(time.Second)
			continue
		}
		msg.DoubleAck(ctx)
	}
}

// deadLetterExhausted handles one max-deliveries announcement.
func (q *Queue) deadLetterExhausted(ctx context.Context, data []byte) error {
	var adv struct {
		StreamSeq  uint64 `json:"stream_seq"`
		Deliveries int    `json:"deliveries"`
	}
	if json.Unmarshal(data, &adv) != nil || adv.StreamSeq == 0 {
		return nil // nothing to act on
	}
	raw, err := q.jobs.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // moved already, or acked after all
	}
	if err != nil {
		return err
	}
	reason := fmt.Sprintf("exhausted %d deliveries: no worker finished it within its ack wait", adv.Deliveries)
	if err := q.deadLetter(ctx, raw.Subject, raw.Data, raw.Header.Get(nats.MsgIdHdr), reason, adv.Deliveries, "dead-"+strconv.FormatUint(adv.StreamSeq, 10)); err != nil {
		return err
	}
	if err := q.jobs.DeleteMsg(ctx, adv.StreamSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return err
	}
	// The job's status says failed unless another message of the same job
	// holds its lease (and speaks for it).
	if id := looseID(raw.Data); id != "" && q.dropLease(ctx, id, adv.StreamSeq) {
		q.Publish(ctx, jobs.Event{JobID: id, State: jobs.StateFailed, Error: reason, Time: time.Now().UTC()})
	}
	return nil
}

// DeadLetter is a job on the dead-letter stream.
type DeadLetter struct {
	Seq      uint64    `json:"seq"`
	JobID    string    `json:"job_id"`
	Reason   string    `json:"reason"`
	Attempts int       `json:"attempts"`
	Subject  string    `json:"subject"`
	Time     time.Time `json:"time"`
	Data     []byte    `json:"data"`
}

// DeadLetters lists the dead letters, oldest first.
func (q *Queue) DeadLetters(ctx context.Context) ([]DeadLetter, error) {
	info, err := q.dead.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	if info.State.Msgs == 0 {
		return out, nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := q.dead.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, toDeadLetter(m))
	}
	return out, nil
}

func toDeadLetter(m *jetstream.RawStreamMsg) DeadLetter {
	d := DeadLetter{Seq: m.Sequence, Data: m.Data, Subject: m.Header.Get(HeaderSubject),
		JobID: m.Header.Get(HeaderJobID), Reason: m.Header.Get(HeaderReason)}
	d.Attempts, _ = strconv.Atoi(m.Header.Get(HeaderAttempts))
	d.Time, _ = time.Parse(time.RFC3339Nano, m.Header.Get(HeaderTime))
	return d
}

// Replay puts a dead letter back on the jobs stream and removes it. The job
// keeps its id — the journals and the volume metadata key on it, so a
// replayed upload adopts what an earlier attempt left — but is published
// under the message id <job-id>-replay-<dead-letter-seq>: the de-duplication
// window, which would drop the job id, lets it through, and still drops a
// second replay of the same dead letter. Its lease and any cancel request
// are cleared, so it starts afresh.
func (q *Queue) Replay(ctx context.Context, seq uint64) error {
	m, err := q.dead.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	d := toDeadLetter(m)
	if d.Subject == "" {
		return fmt.Errorf("dead letter %d has no original subject", seq)
	}
	if d.JobID != "" {
		if err := q.leases.Delete(ctx, d.JobID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("clear the lease of job %s: %w", d.JobID, err)
		}
		if err := q.cancels.Delete(ctx, d.JobID); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("clear the cancel request of job %s: %w", d.JobID, err)
		}
	}
	if _, err := q.EnqueueRaw(ctx, d.Subject, d.Data, fmt.Sprintf("%s-replay-%d", d.JobID, seq)); err != nil {
		return err
	}
	if d.JobID != "" {
		q.Publish(ctx, jobs.Event{JobID: d.JobID, State: jobs.StateQueued, Time: time.Now().UTC()})
	}
	return q.dead.DeleteMsg(ctx, seq)
}

// ReplayJob replays the newest dead letter of the job and removes its older
// ones. It returns the dead letter's sequence, or an error wrapping
// jobs.ErrNotFound when the job has none.
func (q *Queue) ReplayJob(ctx context.Context, jobID string) (uint64, error) {
	dls, err := q.DeadLetters(ctx)
	if err != nil {
		return 0, err
	}
	var mine []uint64
	for _, d := range dls {
		if d.JobID == jobID {
			mine = append(mine, d.Seq)
		}
	}
	if len(mine) == 0 {
		return 0, fmt.Errorf("dead letter of job %s: %w", jobID, jobs.ErrNotFound)
	}
	newest := mine[len(mine)-1]
	if err := q.Replay(ctx, newest); err != nil {
		return 0, err
	}
	for _, seq := range mine[:len(mine)-1] {
		if err := q.dead.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return newest, err
		}
	}
	return newest, nil
}
