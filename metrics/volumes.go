package metrics

import (
	"context"
	"io"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// Volumes returns v with the latency and outcome of every call recorded.
func (m *Metrics) Volumes(v jobs.Volumes) jobs.Volumes { return timedVolumes{m: m, v: v} }

type timedVolumes struct {
	m *Metrics
	v jobs.Volumes
}

var _ jobs.Volumes = timedVolumes{}

func (t timedVolumes) observe(op string, start time.Time, err error) {
	t.m.volumeCalls.WithLabelValues(op, outcome(err)).Observe(time.Since(start).Seconds())
}

func (t timedVolumes) Capabilities(ctx context.Context) (c jobs.Capabilities, err error) {
	defer func(s time.Time) { t.observe("capabilities", s, err) }(time.Now())
	return t.v.Capabilities(ctx)
}

func (t timedVolumes) CreateVolume(ctx context.Context, spec jobs.VolumeSpec) (v jobs.Volume, err error) {
	defer func(s time.Time) { t.observe("create", s, err) }(time.Now())
	return t.v.CreateVolume(ctx, spec)
}

func (t timedVolumes) GetVolume(ctx context.Context, id string) (v jobs.Volume, err error) {
	defer func(s time.Time) { t.observe("get", s, err) }(time.Now())
	return t.v.GetVolume(ctx, id)
}

func (t timedVolumes) FindVolumes(ctx context.Context, md map[string]string) (v []jobs.Volume, err error) {
	defer func(s time.Time) { t.observe("find", s, err) }(time.Now())
	return t.v.FindVolumes(ctx, md)
}

func (t timedVolumes) WaitVolume(ctx context.Context, id string, want ...string) (v jobs.Volume, err error) {
	defer func(s time.Time) { t.observe("wait", s, err) }(time.Now())
	return t.v.WaitVolume(ctx, id, want...)
}

func (t timedVolumes) ExtendVolume(ctx context.Context, id string, sizeGiB int) (err error) {
	defer func(s time.Time) { t.observe("extend", s, err) }(time.Now())
	return t.v.ExtendVolume(ctx, id, sizeGiB)
}

func (t timedVolumes) SetMetadata(ctx context.Context, id string, md map[string]string) (err error) {
	defer func(s time.Time) { t.observe("set_metadata", s, err) }(time.Now())
	return t.v.SetMetadata(ctx, id, md)
}

func (t timedVolumes) SetReadOnly(ctx context.Context, id string, ro bool) (err error) {
	defer func(s time.Time) { t.observe("set_readonly", s, err) }(time.Now())
	return t.v.SetReadOnly(ctx, id, ro)
}

func (t timedVolumes) DeleteVolume(ctx context.Context, id string) (err error) {
	defer func(s time.Time) { t.observe("delete", s, err) }(time.Now())
	return t.v.DeleteVolume(ctx, id)
}

func (t timedVolumes) Attach(ctx context.Context, volumeID string, mode jobs.AttachMode) (a jobs.Attachment, err error) {
	defer func(s time.Time) { t.observe("attach", s, err) }(time.Now())
	return t.v.Attach(ctx, volumeID, mode)
}

func (t timedVolumes) CompleteAttachment(ctx context.Context, id string) (err error) {
	defer func(s time.Time) { t.observe("complete_attachment", s, err) }(time.Now())
	return t.v.CompleteAttachment(ctx, id)
}

func (t timedVolumes) Detach(ctx context.Context, id string) (err error) {
	defer func(s time.Time) { t.observe("detach", s, err) }(time.Now())
	return t.v.Detach(ctx, id)
}

// Connector returns c with connects and block I/O errors counted by the
// connection's transport.
func (m *Metrics) Connector(c jobs.Connector) jobs.Connector { return countedConnector{m: m, c: c} }

type countedConnector struct {
	m *Metrics
	c jobs.Connector
}

func (cc countedConnector) Connect(ctx context.Context, conn jobs.Connection, mode jobs.AttachMode) (jobs.Device, error) {
	dev, err := cc.c.Connect(ctx, conn, mode)
	if err != nil {
		cc.m.connects.WithLabelValues(conn.Driver, "error").Inc()
		return nil, err
	}
	cc.m.connects.WithLabelValues(conn.Driver, "ok").Inc()
	d := countedDevice{Device: dev, m: cc.m, driver: conn.Driver}
	if rf, ok := dev.(jobs.Refresher); ok {
		return refreshingDevice{countedDevice: d, rf: rf}, nil
	}
	return d, nil
}

type countedDevice struct {
	jobs.Device
	m      *Metrics
	driver string
}

func (d countedDevice) count(op string, err error) {
	if err != nil && err != io.EOF {
		d.m.devErrors.WithLabelValues(d.driver, op).Inc()
	}
}

func (d countedDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Device.ReadAt(p, off)
	d.count("read", err)
	return n, err
}

func (d countedDevice) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.Device.WriteAt(p, off)
	d.count("write", err)
	return n, err
}

func (d countedDevice) Flush(ctx context.Context) error {
	err := d.Device.Flush(ctx)
	d.count("flush", err)
	return err
}

// refreshingDevice keeps the Refresher of devices that have one, so online
// extends still re-read the capacity through the decorator.
type refreshingDevice struct {
	countedDevice
	rf jobs.Refresher
}

func (d refreshingDevice) Refresh(ctx context.Context) error { return d.rf.Refresh(ctx) }
