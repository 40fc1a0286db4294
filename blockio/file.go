package blockio

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/cinderport/cinderport/jobs"
)

// FileConnector attaches "local" volumes: connection data names the file
// ("device_path"). It serves the embedded default's volumes, and any block
// device path a connector outside the process has set up.
type FileConnector struct{}

var _ jobs.Connector = FileConnector{}

// Connect implements jobs.Connector.
func (FileConnector) Connect(ctx context.Context, conn jobs.Connection, mode jobs.AttachMode) (jobs.Device, error) {
	if conn.Driver != "local" {
		return nil, jobs.Permanentf("file connector: cannot attach a %q volume", conn.Driver)
	}
	path, _ := conn.Data["device_path"].(string)
	if path == "" {
		return nil, jobs.Permanentf("file connector: connection info has no device_path")
	}
	return OpenFileDevice(path, mode)
}

// FileDevice is a file or block device used as a jobs.Device.
type FileDevice struct {
	f    *os.File
	size atomic.Int64
}

var _ jobs.Device = (*FileDevice)(nil)
var _ jobs.Refresher = (*FileDevice)(nil)

// OpenFileDevice opens path read-write or read-only.
func OpenFileDevice(path string, mode jobs.AttachMode) (*FileDevice, error) {
	flag := os.O_RDWR
	if mode == jobs.ReadOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("open device %s: %w", path, err)
	}
	d := &FileDevice{f: f}
	if err := d.Refresh(context.Background()); err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// ReadAt implements io.ReaderAt (pread).
func (d *FileDevice) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt (pwrite).
func (d *FileDevice) WriteAt(p []byte, off int64) (int, error) { return d.f.WriteAt(p, off) }

// Size is the capacity as of the last Refresh.
func (d *FileDevice) Size() int64 { return d.size.Load() }

// BlockSize is 512.
func (d *FileDevice) BlockSize() int { return 512 }

// Flush fsyncs.
func (d *FileDevice) Flush(ctx context.Context) error { return d.f.Sync() }

// Close closes the file.
func (d *FileDevice) Close() error { return d.f.Close() }

// Refresh re-reads the capacity (after an extend).
func (d *FileDevice) Refresh(ctx context.Context) error {
	n, err := d.f.Seek(0, 2) // works for files and block devices alike
	if err != nil {
		return fmt.Errorf("size of device %s: %w", d.f.Name(), err)
	}
	d.size.Store(n)
	return nil
}

// Router dispatches Connect by the connection's driver ("local", "iscsi").
type Router map[string]jobs.Connector

var _ jobs.Connector = Router(nil)

// Connect implements jobs.Connector.
func (r Router) Connect(ctx context.Context, conn jobs.Connection, mode jobs.AttachMode) (jobs.Device, error) {
	c, ok := r[conn.Driver]
	if !ok {
		return nil, jobs.Permanentf("no connector for %q volumes on this worker", conn.Driver)
	}
	return c.Connect(ctx, conn, mode)
}
