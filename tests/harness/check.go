package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Metrics scrapes the worker's /metrics into series → value, a series being
// the metric's name with its labels as printed
// (cinderport_volume_api_duration_seconds_sum{op="create",outcome="ok"}).
// It returns an error when the endpoint cannot be read.
func (w *Worker) Metrics() (map[string]float64, error) {
	resp, err := http.Get(w.HTTPURL + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	return out, nil
}

// SameBytes reads n bytes from got and from want and returns an error naming
// the first offset where they differ, or the read that failed.
func SameBytes(got, want io.Reader, n int64) error {
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < n; {
		k := int(min(int64(len(a)), n-off))
		if _, err := io.ReadFull(got, a[:k]); err != nil {
			return fmt.Errorf("read at %d of %d: %w", off, n, err)
		}
		if _, err := io.ReadFull(want, b[:k]); err != nil {
			return fmt.Errorf("read the reference at %d: %w", off, err)
		}
		if !bytes.Equal(a[:k], b[:k]) {
			for i := range k {
				if a[i] != b[i] {
					return fmt.Errorf("bytes differ at offset %d", off+int64(i))
				}
			}
		}
		off += int64(k)
	}
	return nil
}

// LastLines returns the last n lines of s, for logs shown on a failure.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// VolumeCalls sums, per operation, the Cinder calls a worker made between two
// scrapes of its metrics (before may be nil: since start-up) — their count
// and seconds, every outcome together.
func VolumeCalls(before, after map[string]float64) (count, seconds map[string]float64) {
	count, seconds = map[string]float64{}, map[string]float64{}
	for series, v := range after {
		name, labels, ok := strings.Cut(series, "{")
		if !ok {
			continue
		}
		op := Label(labels, "op")
		switch name {
		case "cinderport_volume_api_duration_seconds_count":
			count[op] += v - before[series]
		case "cinderport_volume_api_duration_seconds_sum":
			seconds[op] += v - before[series]
		}
	}
	return count, seconds
}

// Label returns one label's value from a series' labels as printed
// (`a="x",b="y"}`), or "" when it has none.
func Label(labels, name string) string {
	_, rest, ok := strings.Cut(labels, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// OnFailure is called with the message of a failure the harness reports
// itself (a worker that does not stop), before the test is failed: a
// package that summarizes its failures at the end sets it.
var OnFailure = func(t testing.TB, msg string) {}
