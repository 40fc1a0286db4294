package iscsi

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/tests/harness"
)

// TestSilentNetwork: the network between us and the target goes silent
// (toxiproxy's timeout toxic: bytes vanish, the connections stay open) in
// the middle of writes. The unanswered NOP ping or command must drop the
// connection; once the network is back, the session is reinstated and the
// writes complete.
func TestSilentNetwork(t *testing.T) {
	d := harness.StartTgtd(t)
	const size = 64 << 20
	tg := d.AddTarget(t, size, harness.TargetOptions{})
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	proxy := toxiproxy.NewProxy(srv, "iscsi", "127.0.0.1:0", tg.Portal)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)

	cfg := cfgFor(tg, Auth{})
	cfg.Paths[0].Portal = proxy.Listen
	cfg.NOPInterval, cfg.NOPTimeout, cfg.CommandTimeout = 200*time.Millisecond, time.Second, 2*time.Second
	cfg.LoginTimeout = time.Second
	cfg.Log = testLog(t)
	dev := openT(t, cfg, false)

	data := randomBuf(size, 5)
	done := make(chan error, 1)
	go func() {
		var err error
		for off := 0; off < size && err == nil; off += 1 << 20 {
			_, err = dev.WriteAt(data[off:off+1<<20], int64(off))
			if off == 8<<20 {
				done <- nil // a few writes went through: time to go silent
			}
		}
		done <- err
	}()
	<-done
	for _, dir := range []string{"upstream", "downstream"} {
		toxic := `{"name":"silence_` + dir + `","type":"timeout","stream":"` + dir + `","attributes":{"timeout":0}}`
		if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(toxic)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second)
	for _, dir := range []string{"upstream", "downstream"} {
		if err := proxy.Toxics.RemoveToxic(context.Background(), "silence_"+dir); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("writes across a silent network: %v", err)
	}
	if dev.Session().Reconnects() == 0 {
		t.Fatal("the session never reconnected")
	}
	if err := dev.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, size)
	if _, err := dev.ReadAt(back, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("the data read back differs")
	}
	if f, err := os.ReadFile(tg.Path); err != nil || !bytes.Equal(f, data) {
		t.Fatalf("the backing file differs (%v)", err)
	}
}
