package httpapi

import "testing"

func TestParseRange(t *testing.T) {
	const size = 1000
	cases := []struct {
		h             string
		off, n        int64
		partial, fail bool
	}{
		{"", 0, 1000, false, false},
		{"bytes=0-0", 0, 1, true, false},
		{"bytes=10-19", 10, 10, true, false},
		{"bytes=990-", 990, 10, true, false},
		{"bytes=990-5000", 990, 10, true, false},
		{"bytes=-5", 995, 5, true, false},
		{"bytes=-5000", 0, 1000, true, false},
		{"bytes=1000-", 0, 0, false, true},
		{"bytes=5-4", 0, 0, false, true},
		{"bytes=-0", 0, 0, false, true},
		{"bytes=0-1,5-6", 0, 1000, false, false},
		{"items=0-1", 0, 1000, false, false},
	}
	for _, c := range cases {
		off, n, partial, err := parseRange(c.h, size)
		if (err != nil) != c.fail || (!c.fail && (off != c.off || n != c.n || partial != c.partial)) {
			t.Errorf("%q: got %d+%d partial=%v err=%v", c.h, off, n, partial, err)
		}
	}
}
