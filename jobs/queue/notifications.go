package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
)

// NotificationStream keeps the bucket notifications an S3 server publishes
// to NATS JetStream (MinIO's notify_nats with jetstream=on) until the
// bridge has turned them into jobs.
const NotificationStream = "CINDERPORT_S3_EVENTS"

// DefaultNotificationSubject is the subject the S3 server publishes
// notifications on unless configured otherwise.
const DefaultNotificationSubject = "cinderport.s3.events"

// ConsumeNotifications feeds the notifications published on subject to
// handle, one at a time, until ctx ends. The stream NotificationStream
// (work-queue retention) keeps them and the durable consumer
// cinderport-s3-bridge, shared by every bridge, tracks them: a notification
// is removed only once handle returned nil, so none is lost while no bridge
// runs or when one stops midway. handle's permanent errors (jobs.IsPermanent)
// drop the notification; other errors retry it with backoff.
func (q *Queue) ConsumeNotifications(ctx context.Context, subject string, handle func(context.Context, []byte) error) error {
	if subject == "" {
		subject = DefaultNotificationSubject
	}
	st, err := q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: NotificationStream, Subjects: []string{subject}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Replicas: q.cfg.Replicas, MaxAge: q.cfg.StatusTTL, MaxMsgSize: 1 << 20,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", NotificationStream, err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "cinderport-s3-bridge", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute,
		MaxDeliver: -1, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("consumer of %s: %w", NotificationStream, err)
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
		herr := handle(ctx, msg.Data())
		switch {
		case herr == nil:
			msg.DoubleAck(ctx)
		case jobs.IsPermanent(herr):
			msg.TermWithReason(truncate(herr.Error(), 256))
		default:
			n := uint64(1)
			if md, err := msg.Metadata(); err == nil {
				n = md.NumDelivered
			}
			msg.NakWithDelay(min(time.Second<<min(n-1, 6), time.Minute))
		}
	}
}
