package staging

import (
	"context"
	"fmt"

	"github.com/minio/minio-go/v7/pkg/notification"

	"github.com/cinderport/cinderport/jobs"
)

// EnsureNotification makes bucket send a notification of every object
// created under prefix to the server-side target arn (MinIO:
// arn:minio:sqs::<ID>:nats for its notify_nats target <ID>), keeping the
// bucket's other notification rules. It does nothing when the rule exists.
func (c *Client) EnsureNotification(ctx context.Context, bucket, prefix, arn string) error {
	a, err := notification.NewArnFromString(arn)
	if err != nil {
		return fmt.Errorf("notification target %q: %w", arn, err)
	}
	events := []notification.EventType{notification.ObjectCreatedAll}
	cfg, err := c.mc.GetBucketNotification(ctx, bucket)
	if err != nil {
		return translate("get notification rules of", jobs.Object{Bucket: bucket}, err)
	}
	for _, q := range cfg.QueueConfigs {
		if q.Queue == a.String() && q.Equal(events, prefix, "") {
			return nil
		}
	}
	qc := notification.NewConfig(a)
	qc.AddEvents(events...)
	if prefix != "" {
		qc.AddFilterPrefix(prefix)
	}
	cfg.QueueConfigs = append(cfg.QueueConfigs, notification.QueueConfig{Config: qc, Queue: a.String()})
	if err := c.mc.SetBucketNotification(ctx, bucket, cfg); err != nil {
		return translate("set notification rules of", jobs.Object{Bucket: bucket}, err)
	}
	return nil
}
