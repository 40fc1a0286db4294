package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// bar draws a one-line progress bar on a terminal, or a plain line every
// few seconds elsewhere.
type bar struct {
	w       io.Writer
	tty     bool
	label   string
	total   int64
	start   time.Time
	last    time.Time
	drawn   bool
	quiet   bool
	lastLen int
}

func newBar(w io.Writer, label string, total int64, mode string) *bar {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	switch mode {
	case "always":
		tty = true
	case "never":
		return &bar{w: w, quiet: true}
	}
	return &bar{w: w, tty: tty, label: label, total: total, start: time.Now()}
}

// update shows done bytes of the total (0: unknown) and the job's step.
func (b *bar) update(done int64, step string) {
	if b.quiet {
		return
	}
	now := time.Now()
	interval := 100 * time.Millisecond
	if !b.tty {
		interval = 5 * time.Second
	}
	final := b.total > 0 && done >= b.total
	if b.drawn && now.Sub(b.last) < interval && !final {
		return
	}
	b.last, b.drawn = now, true
	rate := float64(done) / max(now.Sub(b.start).Seconds(), 1e-3)
	line := b.render(done, step, rate)
	if b.tty {
		pad := ""
		if n := b.lastLen - len(line); n > 0 {
			pad = strings.Repeat(" ", n)
		}
		fmt.Fprintf(b.w, "\r%s%s", line, pad)
		b.lastLen = len(line)
	} else {
		fmt.Fprintln(b.w, line)
	}
}

func (b *bar) render(done int64, step string, rate float64) string {
	const width = 30
	s := b.label
	if b.total > 0 {
		frac := min(float64(done)/float64(b.total), 1)
		fill := int(frac * width)
		s += fmt.Sprintf(" [%s%s] %5.1f%% %s/%s", strings.Repeat("█", fill), strings.Repeat("░", width-fill),
			100*frac, human(done), human(b.total))
	} else {
		s += " " + human(done)
	}
	s += fmt.Sprintf(" %s/s", human(int64(rate)))
	if step != "" {
		s += " " + step
	}
	return s
}

// finish ends the bar's line.
func (b *bar) finish() {
	if !b.quiet && b.tty && b.drawn {
		fmt.Fprintln(b.w)
	}
}

// human formats a byte count with binary units.
func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// parseSize reads "256MiB", "1G", "1048576".
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	var n int64
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n < 0 || fmt.Sprint(n) != strings.TrimSpace(s) {
		return 0, fmt.Errorf("invalid size %q (want e.g. 1048576, 256MiB, 2GiB)", s)
	}
	return n * mult, nil
}
