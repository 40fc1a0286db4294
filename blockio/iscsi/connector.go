package iscsi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cinderport/cinderport/jobs"
)

// Connector attaches Cinder "iscsi" volumes with the userspace initiator:
// no root, iscsid or kernel module needed. It satisfies jobs.Connector.
type Connector struct {
	base Config
}

var _ jobs.Connector = (*Connector)(nil)

// NewConnector returns a Connector whose sessions use base for everything
// the connection info does not say: InitiatorName (required), Digests,
// QueueDepth, MaxRecvDataSegmentLength, the timeouts and Log. base.Paths
// and base.Auth are ignored. It fails permanently without an initiator
// name.
func NewConnector(base Config) (*Connector, error) {
	if base.InitiatorName == "" {
		return nil, jobs.Permanentf("iscsi connector: no initiator name configured")
	}
	base.Paths, base.Auth = nil, Auth{}
	return &Connector{base: base}, nil
}

// Connect implements jobs.Connector: it logs in to the first path of the
// connection info that accepts us (target_portal/target_iqn/target_lun, or
// the multipath lists target_portals/target_iqns/target_luns), with CHAP
// when auth_method says so, and returns the LUN as a *Device. Without a
// target IQN the portals are asked for their targets (SendTargets, with the
// discovery_auth_* credentials). Errors never quote secrets; malformed
// connection info and refused credentials are permanent.
func (c *Connector) Connect(ctx context.Context, conn jobs.Connection, mode jobs.AttachMode) (jobs.Device, error) {
	if !strings.EqualFold(conn.Driver, "iscsi") {
		return nil, jobs.Permanentf("iscsi connector: cannot attach a %q volume", conn.Driver)
	}
	info, err := ParseConnection(conn.Data)
	if err != nil {
		return nil, jobs.Permanent(fmt.Errorf("iscsi connector: %w", err))
	}
	cfg := c.base
	cfg.Auth = info.Auth
	cfg.Paths = info.Paths
	if len(cfg.Paths) == 0 {
		if cfg.Paths, err = c.discover(ctx, info); err != nil {
			return nil, err
		}
	}
	return Open(ctx, cfg, mode == jobs.ReadOnly)
}

// discover finds the target behind portals that were given without an IQN.
// Exactly one target must answer.
func (c *Connector) discover(ctx context.Context, info ConnectionInfo) ([]Path, error) {
	cfg := c.base
	cfg.Auth = info.DiscoveryAuth
	var errs []error
	for _, portal := range info.DiscoveryPortals {
		targets, err := Discover(ctx, cfg, portal)
		if err != nil {
			if jobs.IsPermanent(err) {
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		if len(targets) != 1 {
			return nil, jobs.Permanentf("iscsi connector: the connection info names no target and %s offers %d", portal, len(targets))
		}
		var paths []Path
		for _, p := range targets[0].Portals {
			paths = append(paths, Path{Portal: p, Target: targets[0].Name, LUN: info.LUN})
		}
		return paths, nil
	}
	return nil, fmt.Errorf("iscsi connector: discovery failed on every portal: %w", errors.Join(errs...))
}
