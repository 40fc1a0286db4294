package envflag

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPrecedence(t *testing.T) {
	var out bytes.Buffer
	s := New("worker", "CINDERPORT_", []string{"CINDERPORT_ZONE=az1", "CINDERPORT_CONCURRENCY=4", "CINDERPORT_ACK_WAIT=2m", "OTHER=x"}, &out)
	var zone, url string
	var conc int
	var ack time.Duration
	s.String(&zone, "zone", "default", "zone")
	s.String(&url, "nats-url", "", "NATS")
	s.Int(&conc, "concurrency", 2, "jobs at once")
	s.Duration(&ack, "ack-wait", time.Minute, "ack wait")
	if err := s.Parse([]string{"--concurrency", "8"}); err != nil {
		t.Fatal(err)
	}
	if zone != "az1" || conc != 8 || ack != 2*time.Minute || url != "" {
		t.Errorf("zone=%q conc=%d ack=%v url=%q", zone, conc, ack, url)
	}
	s.PrintDefaults()
	if !strings.Contains(out.String(), "$CINDERPORT_NATS_URL") {
		t.Errorf("help does not name the variable:\n%s", out.String())
	}
}

func TestBadVariable(t *testing.T) {
	s := New("w", "CINDERPORT_", []string{"CINDERPORT_CONCURRENCY=lots"}, &bytes.Buffer{})
	var n int
	s.Int(&n, "concurrency", 2, "")
	if err := s.Parse(nil); err == nil || !strings.Contains(err.Error(), "CINDERPORT_CONCURRENCY") {
		t.Fatalf("got %v", err)
	}
}
