package bench

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// chart draws throughput-over-time series as a self-contained SVG line
// chart: each series' samples as a thin line, their moving average as a
// thick one; the scale fits the averages (samples above it are clipped).
func chart(title string, series map[string][]Tick) string {
	const w, h, left, bottom, top, right = 860.0, 420.0, 70.0, 50.0, 40.0, 180.0
	var maxT, maxY float64
	names := make([]string, 0, len(series))
	for name, ticks := range series {
		names = append(names, name)
		for j, t := range ticks {
			maxT, maxY = math.Max(maxT, t.Seconds), math.Max(maxY, mean(ticks, j, smooth))
		}
	}
	sort.Strings(names)
	if maxT == 0 || maxY == 0 {
		maxT, maxY = 1, 1
	}
	maxY = niceCeil(maxY)
	x := func(t float64) float64 { return left + (w-left-right)*t/maxT }
	y := func(v float64) float64 { return h - bottom - (h-bottom-top)*math.Min(v, maxY)/maxY }
	colors := []string{"#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%.0f" y="22" font-size="14">%s</text>`+"\n", left, escape(title))
	for i := 0; i <= 5; i++ {
		v := maxY * float64(i) / 5
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="end">%.0f</text>`+"\n",
			left, w-right, y(v), y(v), left-6, y(v)+4, v)
	}
	for i := 0; i <= 5; i++ {
		t := maxT * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.1f s</text>`+"\n", x(t), h-bottom+18, t)
	}
	fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/><line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n",
		left, w-right, h-bottom, h-bottom, left, left, top, h-bottom)
	for i, name := range names {
		c := colors[i%len(colors)]
		var raw, avg []string
		ticks := series[name]
		for j, t := range ticks {
			raw = append(raw, fmt.Sprintf("%.1f,%.1f", x(t.Seconds), y(t.MBps)))
			avg = append(avg, fmt.Sprintf("%.1f,%.1f", x(t.Seconds), y(mean(ticks, j, smooth))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-opacity="0.3" stroke-width="1" points="%s"/>`+"\n", c, strings.Join(raw, " "))
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2.5" points="%s"/>`+"\n", c, strings.Join(avg, " "))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="14" height="4" fill="%s"/><text x="%.1f" y="%.1f">%s</text>`+"\n",
			w-right+12, top+float64(i)*20+6, c, w-right+32, top+float64(i)*20+12, escape(name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// smooth is how many samples on each side of one the chart's thick lines
// average (±2 samples of 250 ms: about a second).
const smooth = 2

// mean averages the samples within k of sample j.
func mean(ticks []Tick, j, k int) float64 {
	lo, hi := max(j-k, 0), min(j+k, len(ticks)-1)
	var sum float64
	for _, t := range ticks[lo : hi+1] {
		sum += t.MBps
	}
	return sum / float64(hi-lo+1)
}

func niceCeil(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
