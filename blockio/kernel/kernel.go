package kernel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/blockio/iscsi"
	"github.com/cinderport/cinderport/jobs"
)

// iscsiadm exit codes (iscsiadm(8), open-iscsi's iscsi_err.h).
const (
	exitDB              = 6  // node or discovery database failure
	exitInvalid         = 7  // invalid argument
	exitNoTransport     = 12 // transport module not loaded
	exitAccess          = 13 // no permission to reach iscsid
	exitSessionExists   = 15 // session already logged in
	exitFatalLogin      = 19 // fatal login error (target not found, ...)
	exitNoObjects       = 21 // no records, targets or sessions found
	exitLoginAuthFailed = 24 // authentication failed
)

// Config configures a Connector. Zero values take the documented defaults.
type Config struct {
	// Iscsiadm is the iscsiadm program, looked up on PATH when it has no
	// slash (default "iscsiadm").
	Iscsiadm string
	// ByPathDir is where udev links iSCSI disks by path (default
	// /dev/disk/by-path).
	ByPathDir string
	// DeviceTimeout bounds the wait for the disk's link after login
	// (default 30 s).
	DeviceTimeout time.Duration
	// CommandTimeout bounds each iscsiadm run (default 2 min: a login
	// retries for a while on its own).
	CommandTimeout time.Duration
	// Runner runs iscsiadm (default ExecRunner logging to Log).
	Runner Runner
	// Log receives the connector's events; secrets never reach it.
	Log zerolog.Logger
}

func (c *Config) defaults() {
	if c.Iscsiadm == "" {
		c.Iscsiadm = "iscsiadm"
	}
	if c.ByPathDir == "" {
		c.ByPathDir = "/dev/disk/by-path"
	}
	if c.DeviceTimeout == 0 {
		c.DeviceTimeout = 30 * time.Second
	}
	if c.CommandTimeout == 0 {
		c.CommandTimeout = 2 * time.Minute
	}
	if c.Runner == nil {
		c.Runner = ExecRunner{Log: c.Log.With().Str("component", "kernel-iscsi").Logger()}
	}
}

// Validate reports a configuration that cannot work.
func (c *Config) Validate() error {
	if c.DeviceTimeout < 0 || c.CommandTimeout < 0 {
		return jobs.Permanentf("kernel connector: negative timeout")
	}
	return nil
}

// Connector attaches Cinder "iscsi" volumes through the kernel's initiator:
// iscsiadm creates the node record (with CHAP set by --op update), logs in,
// and the disk appears under ByPathDir; it is then used as a file. Several
// volumes behind one target share its session: the last Close logs out,
// and only from sessions this connector logged in. Multipath is not
// handled: the first path that logs in is used. It satisfies
// jobs.Connector.
type Connector struct {
	cfg Config
	log zerolog.Logger

	mu      sync.Mutex
	targets map[string]*target // by portal and IQN
}

// target is the shared state of one logged-in (portal, IQN).
type target struct {
	holders int // under Connector.mu: devices, and attaches under way

	mu       sync.Mutex // serializes login and logout
	devices  int
	loggedIn bool
	owned    bool // we logged in, so we log out
}

var _ jobs.Connector = (*Connector)(nil)

// NewConnector returns a Connector, or a permanent error for an invalid
// configuration.
func NewConnector(cfg Config) (*Connector, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Connector{cfg: cfg, log: cfg.Log.With().Str("component", "kernel-iscsi").Logger(), targets: map[string]*target{}}, nil
}

// Connect implements jobs.Connector. Malformed connection info and refused
// CHAP credentials are permanent errors; errors never show secrets.
func (c *Connector) Connect(ctx context.Context, conn jobs.Connection, mode jobs.AttachMode) (jobs.Device, error) {
	if !strings.EqualFold(conn.Driver, "iscsi") {
		return nil, jobs.Permanentf("kernel connector: cannot attach a %q volume", conn.Driver)
	}
	info, err := iscsi.ParseConnection(conn.Data)
	if err != nil {
		return nil, jobs.Permanent(fmt.Errorf("kernel connector: %w", err))
	}
	paths := info.Paths
	if len(paths) == 0 {
		if paths, err = c.discover(ctx, info); err != nil {
			return nil, err
		}
	}
	var errs []error
	for _, p := range paths {
		dev, err := c.attach(ctx, p, info.Auth, mode)
		if err == nil {
			return dev, nil
		}
		if jobs.IsPermanent(err) || ctx.Err() != nil {
			return nil, err
		}
		c.log.Warn().Err(err).Str("portal", p.Portal).Str("target", p.Target).Msg("iSCSI path failed: trying the next")
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("kernel connector: no path worked: %w", errors.Join(errs...))
}

// run runs iscsiadm with the connector's timeout.
func (c *Connector) run(ctx context.Context, sensitive []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CommandTimeout)
	defer cancel()
	return c.cfg.Runner.Run(ctx, Command{Name: c.cfg.Iscsiadm, Args: args, Sensitive: sensitive})
}

func nodeArgs(p iscsi.Path, portal string, more ...string) []string {
	return append([]string{"-m", "node", "-T", p.Target, "-p", portal}, more...)
}

// classify turns an iscsiadm failure into the domain's terms.
func classify(op string, err error) error {
	err = fmt.Errorf("kernel connector: %s: %w", op, err)
	switch ExitCode(err) {
	case exitLoginAuthFailed:
		return jobs.Permanent(fmt.Errorf("%w: %w", iscsi.ErrAuth, err))
	case exitFatalLogin, exitInvalid, exitAccess, exitNoTransport:
		return jobs.Permanent(err)
	case -1:
		var ce *CommandError
		if errors.As(err, &ce) && errors.Is(ce.Err, exec.ErrNotFound) {
			return jobs.Permanent(err) // no iscsiadm on this host
		}
	}
	return err
}

// login makes sure a session to p exists; owned says whether we created it.
func (c *Connector) login(ctx context.Context, p iscsi.Path, portal string, auth iscsi.Auth) (owned bool, err error) {
	if _, err := c.run(ctx, nil, nodeArgs(p, portal)...); err != nil {
		if ExitCode(err) != exitNoObjects {
			return false, classify("look up the node record", err)
		}
		if _, err := c.run(ctx, nil, nodeArgs(p, portal, "--interface", "default", "--op", "new")...); err != nil {
			return false, classify("create the node record", err)
		}
	}
	method := "None"
	if auth.User != "" {
		method = "CHAP"
	}
	updates := [][2]string{{"node.session.auth.authmethod", method}}
	if auth.User != "" {
		updates = append(updates, [2]string{"node.session.auth.username", auth.User}, [2]string{"node.session.auth.password", auth.Secret})
		if auth.TargetUser != "" {
			updates = append(updates, [2]string{"node.session.auth.username_in", auth.TargetUser}, [2]string{"node.session.auth.password_in", auth.TargetSecret})
		}
	}
	for _, u := range updates {
		if _, err := c.run(ctx, []string{auth.Secret, auth.TargetSecret}, nodeArgs(p, portal, "--op", "update", "-n", u[0], "-v", u[1])...); err != nil {
			return false, classify("set "+u[0], err)
		}
	}
	_, err = c.run(ctx, nil, nodeArgs(p, portal, "--login")...)
	switch {
	case err == nil:
		return true, nil
	case ExitCode(err) == exitSessionExists:
		return false, nil
	}
	return false, classify("log in", err)
}

// logout ends our session and removes the node record; records or
// sessions already gone are fine.
func (c *Connector) logout(ctx context.Context, p iscsi.Path, portal string) error {
	var errs []error
	for _, op := range [][]string{{"--logout"}, {"--op", "delete"}} {
		if _, err := c.run(ctx, nil, nodeArgs(p, portal, op...)...); err != nil && ExitCode(err) != exitNoObjects {
			errs = append(errs, classify(strings.Join(op, " "), err))
		}
	}
	return errors.Join(errs...)
}

func (c *Connector) hold(key string) *target {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.targets[key]
	if t == nil {
		t = &target{}
		c.targets[key] = t
	}
	t.holders++
	return t
}

func (c *Connector) unhold(key string, t *target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.holders--
	if t.holders == 0 {
		delete(c.targets, key)
	}
}

// attach logs in to p (unless a device of ours already did), waits for the
// disk and opens it.
func (c *Connector) attach(ctx context.Context, p iscsi.Path, auth iscsi.Auth, mode jobs.AttachMode) (*Device, error) {
	portal, err := iscsi.NormalizePortal(p.Portal)
	if err != nil {
		return nil, jobs.Permanent(fmt.Errorf("kernel connector: %w", err))
	}
	key := portal + " " + p.Target
	t := c.hold(key)
	t.mu.Lock()
	if !t.loggedIn {
		owned, err := c.login(ctx, p, portal, auth)
		if err != nil {
			t.mu.Unlock()
			c.unhold(key, t)
			return nil, err
		}
		t.loggedIn, t.owned = true, owned
	}
	t.devices++
	t.mu.Unlock()
	d := &Device{c: c, t: t, key: key, path: p, portal: portal}
	link := filepath.Join(c.cfg.ByPathDir, byPathName(portal, p.Target, p.LUN))
	if d.FileDevice, err = c.open(ctx, link, mode); err != nil {
		d.release(context.WithoutCancel(ctx))
		return nil, err
	}
	c.log.Info().Str("portal", portal).Str("target", p.Target).Int("lun", p.LUN).Msg("iSCSI volume attached through the kernel")
	return d, nil
}

// byPathName is udev's name for an iSCSI disk: the portal without IPv6
// brackets, and LUNs from 256 up in SAM's 64-bit hex form (as os-brick
// expects them).
func byPathName(portal, iqn string, lun int) string {
	portal = strings.NewReplacer("[", "", "]", "").Replace(portal)
	id := fmt.Sprint(lun)
	if lun >= 256 {
		id = fmt.Sprintf("0x%04x%04x00000000", lun&0xffff, lun>>16&0xffff)
	}
	return fmt.Sprintf("ip-%s-iscsi-%s-lun-%s", portal, iqn, id)
}

// open waits for the disk's link and opens what it points to.
func (c *Connector) open(ctx context.Context, link string, mode jobs.AttachMode) (*blockio.FileDevice, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DeviceTimeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		dev, err := filepath.EvalSymlinks(link)
		if err == nil {
			return blockio.OpenFileDevice(dev, mode)
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("kernel connector: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("kernel connector: %s did not appear: %w", link, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// discover asks the portals for their targets (iscsiadm sendtargets
// discovery, with CHAP when given) and returns the paths of the one target
// they must name.
func (c *Connector) discover(ctx context.Context, info iscsi.ConnectionInfo) ([]iscsi.Path, error) {
	var errs []error
	for _, portal := range info.DiscoveryPortals {
		portal, err := iscsi.NormalizePortal(portal)
		if err != nil {
			return nil, jobs.Permanent(fmt.Errorf("kernel connector: %w", err))
		}
		out, err := c.sendTargets(ctx, portal, info.DiscoveryAuth)
		if err != nil {
			if jobs.IsPermanent(err) {
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		found := map[string][]string{}
		var order []string
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			// "10.0.0.1:3260,1 iqn.2010-10.org.openstack:volume-..."
			addr, iqn, ok := strings.Cut(strings.TrimSpace(sc.Text()), " ")
			if !ok {
				continue
			}
			addr, _, _ = strings.Cut(addr, ",")
			if _, seen := found[iqn]; !seen {
				order = append(order, iqn)
			}
			found[iqn] = append(found[iqn], addr)
		}
		if len(order) != 1 {
			return nil, jobs.Permanentf("kernel connector: the connection info names no target and %s offers %d", portal, len(order))
		}
		var paths []iscsi.Path
		for _, a := range found[order[0]] {
			paths = append(paths, iscsi.Path{Portal: a, Target: order[0], LUN: info.LUN})
		}
		return paths, nil
	}
	return nil, fmt.Errorf("kernel connector: discovery failed on every portal: %w", errors.Join(errs...))
}

func (c *Connector) sendTargets(ctx context.Context, portal string, auth iscsi.Auth) ([]byte, error) {
	if auth.User == "" {
		out, err := c.run(ctx, nil, "-m", "discovery", "-t", "sendtargets", "-p", portal)
		if err != nil {
			return nil, classify("discover targets", err)
		}
		return out, nil
	}
	db := []string{"-m", "discoverydb", "-t", "sendtargets", "-p", portal}
	if _, err := c.run(ctx, nil, append(db, "--op", "new")...); err != nil && ExitCode(err) != exitDB {
		return nil, classify("create the discovery record", err)
	}
	set := append(db, "--op", "update",
		"-n", "discovery.sendtargets.auth.authmethod", "-v", "CHAP",
		"-n", "discovery.sendtargets.auth.username", "-v", auth.User,
		"-n", "discovery.sendtargets.auth.password", "-v", auth.Secret)
	if _, err := c.run(ctx, []string{auth.Secret}, set...); err != nil {
		return nil, classify("set the discovery credentials", err)
	}
	out, err := c.run(ctx, nil, append(db, "--discover")...)
	if err != nil {
		return nil, classify("discover targets", err)
	}
	return out, nil
}

// Device is a volume attached through the kernel: the disk used as a file.
// Close flushes it and logs out when it was the target's last device.
type Device struct {
	*blockio.FileDevice
	c      *Connector
	t      *target
	key    string
	path   iscsi.Path
	portal string
	once   sync.Once
	err    error
}

var (
	_ jobs.Device    = (*Device)(nil)
	_ jobs.Refresher = (*Device)(nil)
)

// closeTimeout bounds Close's logout, which has no caller context.
const closeTimeout = 2 * time.Minute

// Refresh has the kernel rescan the session (after an online extend), then
// re-reads the size.
func (d *Device) Refresh(ctx context.Context) error {
	if _, err := d.c.run(ctx, nil, nodeArgs(d.path, d.portal, "--rescan")...); err != nil {
		return classify("rescan", err)
	}
	return d.FileDevice.Refresh(ctx)
}

// Close flushes the kernel's buffers for the disk (fsync: nothing may be
// lost by the logout), closes it and, for the target's last device, logs
// out and deletes the node record. It returns the first failure; a second
// Close returns the same.
func (d *Device) Close() error {
	d.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		var errs []error
		if err := d.FileDevice.Flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("kernel connector: flush before logout: %w", err))
		}
		if err := d.FileDevice.Close(); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, d.release(ctx))
		d.err = errors.Join(errs...)
	})
	return d.err
}

// release drops the device's hold on its target, logging out after the
// last one.
func (d *Device) release(ctx context.Context) error {
	t := d.t
	t.mu.Lock()
	t.devices--
	var err error
	if t.devices == 0 && t.loggedIn {
		if t.owned {
			err = d.c.logout(ctx, d.path, d.portal)
		}
		t.loggedIn = false
	}
	t.mu.Unlock()
	d.c.unhold(d.key, t)
	return err
}
