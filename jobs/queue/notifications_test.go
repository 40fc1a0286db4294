package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cinderport/cinderport/jobs"
)

func TestNotificationsAreKeptUntilHandled(t *testing.T) {
	ctx := context.Background()
	q, nc := startQueue(t, Config{})
	js, _ := jetstream.New(nc)
	var mu sync.Mutex
	seen := map[string]int{}
	run := func() (stop func()) {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- q.ConsumeNotifications(cctx, "", func(ctx context.Context, data []byte) error {
				mu.Lock()
				defer mu.Unlock()
				seen[string(data)]++
				switch {
				case string(data) == "broken":
					return jobs.Permanentf("not a notification")
				case string(data) == "flaky" && seen["flaky"] == 1:
					return errors.New("S3 unreachable")
				}
				return nil
			})
		}()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	}
	stop := run()
	time.Sleep(300 * time.Millisecond) // the stream exists once the bridge ran
	stop()
	// Published while no bridge runs (as MinIO does, without message ids).
	for _, m := range []string{"a", "broken", "flaky", "a"} {
		if _, err := js.Publish(ctx, DefaultNotificationSubject, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	stop = run()
	defer stop()
	st, _ := js.Stream(ctx, NotificationStream)
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, _ := st.Info(ctx)
		mu.Lock()
		flaky := seen["flaky"]
		mu.Unlock()
		if info.State.Msgs == 0 && flaky == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d notifications left, flaky handled %d times", info.State.Msgs, flaky)
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["a"] != 2 || seen["broken"] != 1 {
		t.Errorf("handled: %v", seen)
	}
}
