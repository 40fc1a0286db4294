// Package compose validates the deployment files with the compose
// specification's own loader (no container engine runs on the test
// machines): every service, image, port, volume and health check must
// resolve, workers must run unprivileged, and every CINDERPORT_* variable
// they set must be one the worker reads.
package compose

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

const composeDir = "../../deploy/compose"

func load(t *testing.T, file string, env []string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(composeDir, file)},
		cli.WithWorkingDirectory(composeDir), cli.WithEnv(env), cli.WithResolvedPaths(true))
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

// workerVariables lists the CINDERPORT_* variables `worker --help` names.
func workerVariables(t *testing.T) map[string]bool {
	t.Helper()
	out, _ := exec.Command("go", "run", "../../cmd/worker", "--help").CombinedOutput()
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$(CINDERPORT_[A-Z0-9_]+)`).FindAllStringSubmatch(string(out), -1) {
		vars[m[1]] = true
	}
	if len(vars) < 10 {
		t.Fatalf("worker --help names only %d variables:\n%s", len(vars), out)
	}
	return vars
}

func TestComposeFilesResolve(t *testing.T) {
	known := workerVariables(t)
	for _, tc := range []struct {
		file    string
		nats    []string
		workers int
	}{
		{"compose.yaml", []string{"nats"}, 2},
		{"compose.cluster.yaml", []string{"nats-1", "nats-2", "nats-3"}, 3},
	} {
		t.Run(tc.file, func(t *testing.T) {
			p, err := load(t, tc.file, []string{"MINIO_ROOT_PASSWORD=secret-for-test", "CINDERPORT_DOWNLOAD_KEY=" + strings.Repeat("ab", 32)})
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			for _, name := range append(tc.nats, "minio") {
				if _, err := p.GetService(name); err != nil {
					t.Errorf("service %s: %v", name, err)
				}
			}
			workers := 0
			for name, s := range p.Services {
				if s.Image == "" {
					t.Errorf("%s: no image", name)
				}
				if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 {
					t.Errorf("%s: no health check", name)
				}
				for _, port := range s.Ports {
					if port.Target == 0 || (port.Published != "" && port.HostIP != "127.0.0.1") {
						t.Errorf("%s: port %+v must target a port and publish on loopback only", name, port)
					}
				}
				for _, v := range s.Volumes {
					switch v.Type {
					case types.VolumeTypeVolume:
						if _, ok := p.Volumes[v.Source]; !ok {
							t.Errorf("%s: volume %q is not declared", name, v.Source)
						}
					case types.VolumeTypeBind:
						if _, err := os.Stat(v.Source); err != nil {
							t.Errorf("%s: bind source: %v", name, err)
						}
					}
				}
				for dep := range s.DependsOn {
					if _, err := p.GetService(dep); err != nil {
						t.Errorf("%s depends on %s: %v", name, dep, err)
					}
				}
				if !strings.HasPrefix(name, "worker-") {
					continue
				}
				workers++
				if s.User == "" || s.User == "0" || strings.HasPrefix(s.User, "root") || strings.HasPrefix(s.User, "0:") {
					t.Errorf("%s: runs as %q, want a non-root user", name, s.User)
				}
				if len(s.CapDrop) != 1 || s.CapDrop[0] != "ALL" || len(s.CapAdd) != 0 || s.Privileged {
					t.Errorf("%s: capabilities: drop %v add %v privileged %v, want drop ALL and nothing added", name, s.CapDrop, s.CapAdd, s.Privileged)
				}
				for k := range s.Environment {
					if strings.HasPrefix(k, "CINDERPORT_") && !known[k] {
						t.Errorf("%s sets %s, which the worker does not read", name, k)
					}
				}
				if len(s.Secrets) != 1 || s.Secrets[0].Source != "download_key" {
					t.Errorf("%s: secrets %v, want the shared download key", name, s.Secrets)
				} else if sec, ok := p.Secrets["download_key"]; !ok || sec.Environment == "" {
					t.Errorf("the download key secret is not declared from the environment: %+v", sec)
				}
			}
			if workers != tc.workers {
				t.Errorf("%d workers, want %d", workers, tc.workers)
			}
		})
	}
}

func TestComposeNeedsTheMinIOPassword(t *testing.T) {
	if _, err := load(t, "compose.yaml", nil); err == nil || !strings.Contains(err.Error(), "MINIO_ROOT_PASSWORD") {
		t.Fatalf("loading without MINIO_ROOT_PASSWORD: %v, want an error naming it", err)
	}
}

func TestDockerfileRunsUnprivileged(t *testing.T) {
	b, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var user string
	for _, line := range strings.Split(string(b), "\n") {
		if u, ok := strings.CutPrefix(strings.TrimSpace(line), "USER "); ok {
			user = u
		}
	}
	if user == "" || user == "root" || strings.HasPrefix(user, "0") {
		t.Errorf("final USER is %q, want a non-root user", user)
	}
	if !regexp.MustCompile(`(?m)^FROM .* AS build$`).Match(b) || strings.Count(string(b), "\nFROM ") < 1 {
		t.Error("want a multi-stage build")
	}
	// A named volume takes the owner of the image's directory it is mounted
	// on; one Docker creates for a bare VOLUME is root's, and the worker
	// could not write its journal there.
	vol := regexp.MustCompile(`(?m)^VOLUME (\S+)$`).FindSubmatch(b)
	if vol == nil {
		t.Fatal("no VOLUME for the worker's data directory")
	}
	owned := regexp.MustCompile(`(?m)^COPY --from=build --chown=(\S+) \S+ (\S+)$`).FindAllSubmatch(b, -1)
	ok := false
	for _, m := range owned {
		ok = ok || string(m[1]) == user && string(m[2]) == string(vol[1])
	}
	if !ok {
		t.Errorf("the data directory %s is not created owned by %s", vol[1], user)
	}
}

func TestBuildContextLeavesOutLocalData(t *testing.T) {
	b, err := os.ReadFile("../../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		have[strings.TrimSpace(line)] = true
	}
	for _, p := range []string{".git", ".demo", "bin"} {
		if !have[p] {
			t.Errorf(".dockerignore does not leave out %s", p)
		}
	}
}
