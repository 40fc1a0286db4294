package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireAll reports whether missing components are failures
// (CINDERPORT_REQUIRE_ALL=1, as CI sets it) rather than skips.
func RequireAll() bool { return os.Getenv("CINDERPORT_REQUIRE_ALL") == "1" }

// Missing skips t — or fails it under CINDERPORT_REQUIRE_ALL=1 — because
// component is not available on this machine. why says what was looked for.
func Missing(t testing.TB, component, why string) {
	t.Helper()
	msg := component + " is not available (" + why + "): run `make test-deps` as root to install it"
	if RequireAll() {
		t.Fatalf("%s; CINDERPORT_REQUIRE_ALL=1 makes this a failure", msg)
	}
	t.Skip(msg)
}

// ToolsDir is where `make test-deps` puts the binaries it builds from the Go
// module proxy (MinIO): $CINDERPORT_TOOLS, else ~/.cache/cinderport/bin.
func ToolsDir() string {
	if d := os.Getenv("CINDERPORT_TOOLS"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "cinderport-tools")
	}
	return filepath.Join(home, ".cache", "cinderport", "bin")
}

// LookPath finds a program on PATH, in /usr/sbin and /sbin (where Debian
// puts tgtd), or in ToolsDir. It returns "" when it is nowhere.
func LookPath(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{ToolsDir(), "/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Need returns the path of program name, or calls Missing.
func Need(t testing.TB, name, component string) string {
	t.Helper()
	p := LookPath(name)
	if p == "" {
		Missing(t, component, name+" not found on PATH, in /usr/sbin or in "+ToolsDir())
	}
	return p
}
