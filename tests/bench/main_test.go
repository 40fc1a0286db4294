package bench

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cinderport/cinderport/tests/harness"
)

var (
	asJSON  = flag.Bool("json", false, "print the report as JSON instead of a markdown table")
	jsonOut = flag.String("bench.json", "", "also write the report as JSON to this file (- for stdout instead of the table)")
	svgOut  = flag.String("bench.svg", "", "write the throughput-over-time chart of the largest upload to this SVG file")
	outFile = flag.String("bench.out", "", "print the report (table, or JSON with -json) to this file instead of stdout")
	sizes   = flag.String("bench.sizes", "1GiB,4GiB", "upload sizes; the first is also downloaded, the largest is charted and its worker's memory held to the target")
)

var (
	// binDir holds bin/worker and bin/enqueue, built once.
	binDir string
	// sharedLab and sharedMinIO are started by the first benchmark that
	// needs them and stopped when the run ends.
	sharedLab   harness.SharedCinderLab
	sharedMinIO harness.SharedMinIO
)

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "cinderport-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := harness.BuildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	sharedMinIO.Close()
	sharedLab.Close()
	os.RemoveAll(dir)
	if err := report.write(); err != nil {
		fmt.Fprintln(os.Stderr, "bench report:", err)
		code = 1
	}
	os.Exit(code)
}

// Section is one table of the report.
type Section struct {
	Title   string   `json:"title"`
	Columns []string `json:"columns"`
	Rows    [][]any  `json:"rows"`
	Notes   []string `json:"notes,omitempty"`
	order   int
}

// Target is one of the targets and what this run measured.
type Target struct {
	Name     string `json:"name"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// Report collects what the benchmarks measured.
type Report struct {
	mu       sync.Mutex
	Sections []*Section `json:"sections"`
	Targets  []Target   `json:"targets"`
	// Series are the chart's lines, under ChartTitle.
	Series     map[string][]Tick `json:"series,omitempty"`
	ChartTitle string            `json:"chart_title,omitempty"`
}

// Tick is one point of a throughput-over-time series.
type Tick struct {
	Seconds float64 `json:"t"`
	MBps    float64 `json:"mbps"`
}

var report = &Report{Series: map[string][]Tick{}}

func (r *Report) section(order int, title string, columns ...string) *Section {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &Section{Title: title, Columns: columns, order: order}
	r.Sections = append(r.Sections, s)
	return s
}

func (s *Section) add(row ...any) {
	report.mu.Lock()
	s.Rows = append(s.Rows, row)
	report.mu.Unlock()
}

func (s *Section) note(format string, args ...any) {
	report.mu.Lock()
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
	report.mu.Unlock()
}

func (r *Report) target(name, target, measured string, met bool) {
	r.mu.Lock()
	r.Targets = append(r.Targets, Target{name, target, measured, met})
	r.mu.Unlock()
}

func (r *Report) write() error {
	if len(r.Sections) == 0 {
		return nil
	}
	sort.SliceStable(r.Sections, func(i, j int) bool { return r.Sections[i].order < r.Sections[j].order })
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode the report: %w", err)
	}
	js = append(js, '\n')
	if *jsonOut != "" && *jsonOut != "-" {
		if err := os.WriteFile(*jsonOut, js, 0o644); err != nil {
			return fmt.Errorf("write the JSON report: %w", err)
		}
	}
	if *svgOut != "" && len(r.Series) > 0 {
		if err := os.WriteFile(*svgOut, []byte(chart(r.ChartTitle, r.Series)), 0o644); err != nil {
			return fmt.Errorf("write the chart: %w", err)
		}
	}
	out := []byte(r.markdown())
	if *asJSON || *jsonOut == "-" {
		out = js
	}
	if *outFile != "" {
		if err := os.WriteFile(*outFile, out, 0o644); err != nil {
			return fmt.Errorf("write the report: %w", err)
		}
		return nil
	}
	_, err = os.Stdout.Write(out)
	return err
}

func (r *Report) markdown() string {
	var b strings.Builder
	b.WriteString("\n# cinderport benchmarks\n")
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "\n## %s\n\n| %s |\n|%s\n", s.Title, strings.Join(s.Columns, " | "), strings.Repeat("---|", len(s.Columns)))
		for _, row := range s.Rows {
			cells := make([]string, len(row))
			for i, c := range row {
				cells[i] = cell(c)
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&b, "\n%s\n", n)
		}
	}
	if len(r.Targets) > 0 {
		b.WriteString("\n## Targets\n\n| target | wanted | measured | met |\n|---|---|---|---|\n")
		for _, t := range r.Targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, t.Target, t.Measured, met)
		}
	}
	return b.String()
}

// median is the middle value of v, the mean of the two middle ones for an
// even count, 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// medianOf is the median of f over xs.
func medianOf[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	return median(v)
}

func cell(c any) string {
	switch v := c.(type) {
	case float64:
		switch {
		case v == 0:
			return "0"
		case v >= 100:
			return fmt.Sprintf("%.0f", v)
		case v >= 10:
			return fmt.Sprintf("%.1f", v)
		default:
			return fmt.Sprintf("%.2f", v)
		}
	case nil:
		return "–"
	default:
		return fmt.Sprint(v)
	}
}
