// Package embedded runs cinderport's all-in-one default: the real
// nats-server in-process, an in-process S3 endpoint on local disk, and
// volumes as local files. A worker started with nothing configured uses it,
// and writes where it listens to <data-dir>/endpoints.json so that the
// enqueue CLI on the same machine finds it.
package embedded

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// EndpointsFile is the name of the endpoints file in the data directory.
const EndpointsFile = "endpoints.json"

// Endpoints says where an embedded worker listens. The file holds the
// in-process S3 endpoint's generated keys, so it is written mode 0600.
type Endpoints struct {
	NATSURL     string `json:"nats_url"`
	S3Endpoint  string `json:"s3_endpoint"`
	S3AccessKey string `json:"s3_access_key"`
	S3SecretKey string `json:"s3_secret_key"`
	Bucket      string `json:"bucket"`
	HTTPURL     string `json:"http_url"`
	PID         int    `json:"pid"`
}

// Write stores e in dir atomically.
func (e Endpoints) Write(dir string) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, EndpointsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write endpoints: %w", err)
	}
	return os.Rename(tmp, filepath.Join(dir, EndpointsFile))
}

// ReadEndpoints loads the endpoints a worker wrote in dir. It returns an
// error wrapping os.ErrNotExist when no embedded worker has run there.
func ReadEndpoints(dir string) (Endpoints, error) {
	var e Endpoints
	b, err := os.ReadFile(filepath.Join(dir, EndpointsFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return e, fmt.Errorf("no embedded worker has run in %s (start `worker` first, or pass --nats-url): %w", dir, err)
		}
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("read %s: %w", filepath.Join(dir, EndpointsFile), err)
	}
	return e, nil
}

// RemoveEndpoints deletes the file when the worker stops.
func RemoveEndpoints(dir string) { os.Remove(filepath.Join(dir, EndpointsFile)) }

// DefaultDataDir is $CINDERPORT_DATA_DIR's default: ~/.local/state/cinderport.
func DefaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "cinderport")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "cinderport")
	}
	return filepath.Join(home, ".local", "state", "cinderport")
}
