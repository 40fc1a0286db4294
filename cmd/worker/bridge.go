package main

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/jobs"
	"github.com/cinderport/cinderport/jobs/queue"
	"github.com/cinderport/cinderport/staging"
	"github.com/cinderport/cinderport/staging/notify"
)

// runBridge turns the bucket notifications of objects created under
// --watch-prefix into upload jobs, until ctx ends.
func runBridge(ctx context.Context, c config, q *queue.Queue, st *staging.Client, log zerolog.Logger) error {
	log = log.With().Str("component", "bridge").Logger()
	if c.watchARN != "" {
		if err := st.EnsureNotification(ctx, c.bucket, c.watchPrefix, c.watchARN); err != nil {
			return fmt.Errorf("bucket notification of %s to %s: %w", c.bucket, c.watchARN, err)
		}
	}
	b := &notify.Bridge{Bucket: c.bucket, Prefix: c.watchPrefix, Template: jobs.Job{Zone: c.zone, Store: c.store},
		Staging: st, Queue: bridgeQueue{q}, Log: log}
	log.Info().Str("bucket", c.bucket).Str("prefix", c.watchPrefix).Str("subject", c.watchSubject).Msg("notification bridge running")
	return q.ConsumeNotifications(ctx, c.watchSubject, func(ctx context.Context, data []byte) error {
		err := b.Handle(ctx, data)
		if err != nil {
			log.Warn().Err(err).Bool("dropped", jobs.IsPermanent(err)).Msg("notification")
		}
		return err
	})
}

// bridgeQueue enqueues the bridge's jobs under their notification's
// message id.
type bridgeQueue struct{ q *queue.Queue }

func (b bridgeQueue) Enqueue(ctx context.Context, job jobs.Job, msgID string) (bool, error) {
	r, err := b.q.Enqueue(ctx, job, queue.WithMsgID(msgID))
	return r.Duplicate, err
}

var _ notify.Enqueuer = bridgeQueue{}
