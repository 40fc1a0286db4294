package fault

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// row is one line of the fault table: a fault, how many times it was
// injected (runs), how many of those jobs completed, what leaked
// (volumes, attachments, targets — or volumes of the local store), and the
// staging bytes read more than once ("—" where nothing is staged, such as
// for a corpus of bad messages).
type row struct {
	fault     string
	runs      int
	completed int
	leaks     int
	// read and images are the staging bytes read and the bytes of the
	// images those reads were for, when the row measures them.
	read, images int64
}

var table struct {
	mu   sync.Mutex
	rows []*row
	// failures are the tests' error messages, printed again after the
	// table: a failing test's log tails (workers, Cinder) run to hundreds
	// of lines, and a reader of the end of the output should still see
	// why it failed.
	failures []string
}

// errorf is t.Errorf, with the message kept for the summary.
func errorf(t testing.TB, format string, args ...any) {
	t.Helper()
	keepFailure(t, format, args)
	t.Errorf(format, args...)
}

// fatalf is t.Fatalf, with the message kept for the summary.
func fatalf(t testing.TB, format string, args ...any) {
	t.Helper()
	keepFailure(t, format, args)
	t.Fatalf(format, args...)
}

func keepFailure(t testing.TB, format string, args []any) {
	// The first line only: details (logs) are in the test's output, and
	// the end of the output should show every failure's headline.
	msg, more := fmt.Sprintf(format, args...), false
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg, more = msg[:i], true
	}
	if len(msg) > 500 {
		msg, more = msg[:500], true
	}
	if more {
		msg += " […]"
	}
	table.mu.Lock()
	table.failures = append(table.failures, t.Name()+": "+msg)
	table.mu.Unlock()
}

// addRow registers a test's row, filled in as the test goes; it is printed
// whether or not the test passes, with "FAIL" when it did not.
func addRow(t *testing.T, fault string) *row {
	t.Helper()
	r := &row{fault: fault}
	table.mu.Lock()
	table.rows = append(table.rows, r)
	table.mu.Unlock()
	t.Cleanup(func() {
		if t.Failed() {
			table.mu.Lock()
			r.fault += " (FAIL)"
			table.mu.Unlock()
		}
	})
	return r
}

// reRead formats the bytes read beyond the images' bytes.
func (r *row) reRead() string {
	if r.images == 0 {
		return "—"
	}
	re := r.read - r.images
	return fmt.Sprintf("%.1f MiB (%.1f%% of %.0f MiB)", float64(re)/(1<<20), 100*float64(re)/float64(r.images), float64(r.images)/(1<<20))
}

// printTable writes the table as markdown, then the failures.
func printTable(w io.Writer) {
	table.mu.Lock()
	defer table.mu.Unlock()
	if len(table.rows) > 0 {
		fmt.Fprintln(w, "\n| fault | runs | completed | leaks | bytes re-read |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		for _, r := range table.rows {
			fmt.Fprintf(w, "| %s | %d | %d | %d | %s |\n", r.fault, r.runs, r.completed, r.leaks, r.reRead())
		}
	}
	if len(table.failures) > 0 {
		fmt.Fprintln(w, "\nfailures (also in the tests' output above):")
		for _, f := range table.failures {
			fmt.Fprintln(w, "- "+f)
		}
	}
}
