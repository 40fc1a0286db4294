// Package docs keeps the configuration reference complete: every flag and
// CINDERPORT_* variable of the worker and of each enqueue command, and every
// glance_store option the Cinder adapter reads, must appear in
// docs/configuration.md.
package docs

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cinderport/cinderport/tests/harness"
)

var (
	flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)
	envVar   = regexp.MustCompile(`\$(CINDERPORT_[A-Z0-9_]+)`)
	command  = regexp.MustCompile(`(?m)^  enqueue ([a-z-]+)`)
	option   = regexp.MustCompile(`"(cinder_[a-z_]+)"`)
)

func help(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, _ := exec.Command(bin, append(args, "--help")...).CombinedOutput() // --help exits non-zero by design
	if len(out) == 0 {
		t.Fatalf("%s %v --help printed nothing", bin, args)
	}
	return string(out)
}

func TestConfigurationReferenceIsComplete(t *testing.T) {
	dir := t.TempDir()
	if err := harness.BuildBinaries(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	missing := map[string]bool{}
	check := func(out string) int {
		n := 0
		for _, m := range flagLine.FindAllStringSubmatch(out, -1) {
			n++
			name := "`--" + m[1] + "`"
			if len(m[1]) == 1 {
				name = "`-" + m[1] + "`"
			}
			if !strings.Contains(doc, name) {
				missing[name] = true
			}
		}
		for _, m := range envVar.FindAllStringSubmatch(out, -1) {
			if !strings.Contains(doc, m[1]) && !strings.Contains(doc, m[1][:strings.LastIndex(m[1], "_")]+"_*") {
				missing[m[1]] = true
			}
		}
		return n
	}
	if n := check(help(t, filepath.Join(dir, "worker"))); n < 30 {
		t.Fatalf("worker --help lists only %d flags", n)
	}
	cmds := command.FindAllStringSubmatch(help(t, filepath.Join(dir, "enqueue")), -1)
	if len(cmds) < 10 {
		t.Fatalf("enqueue --help lists only %d commands", len(cmds))
	}
	for _, c := range cmds {
		if !strings.Contains(doc, "enqueue "+c[1]) && !strings.Contains(doc, "### "+c[1]) && !strings.Contains(doc, ", "+c[1]) {
			missing["enqueue "+c[1]] = true
		}
		check(help(t, filepath.Join(dir, "enqueue"), c[1]))
	}
	src, err := os.ReadFile("../../cinder/load.go")
	if err != nil {
		t.Fatal(err)
	}
	opts := option.FindAllStringSubmatch(string(src), -1)
	if len(opts) < 15 {
		t.Fatalf("found only %d glance_store options in cinder/load.go", len(opts))
	}
	for _, m := range opts {
		if !strings.Contains(doc, "`"+m[1]+"`") {
			missing[m[1]] = true
		}
	}
	for name := range missing {
		t.Errorf("docs/configuration.md does not document %s", name)
	}
}
