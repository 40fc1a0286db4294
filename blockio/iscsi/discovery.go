package iscsi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// DiscoveredTarget is a target a portal offers, with the portals
// (host:port) it is reachable through.
type DiscoveredTarget struct {
	Name    string
	Portals []string
}

// maxDiscoveryText bounds a SendTargets answer, across continuations.
const maxDiscoveryText = 1 << 20

// Discover runs a SendTargets discovery session (RFC 7143 §4.3, appendix C)
// on portal with cfg's initiator name, CHAP credentials and timeouts
// (cfg.Paths is not used). Authentication failures are permanent and wrap
// ErrAuth.
func Discover(ctx context.Context, cfg Config, portal string) ([]DiscoveredTarget, error) {
	cfg.defaults()
	if cfg.InitiatorName == "" {
		return nil, jobs.Permanentf("iscsi: no initiator name configured")
	}
	addr, err := NormalizePortal(portal)
	if err != nil {
		return nil, jobs.Permanent(fmt.Errorf("iscsi discovery: %w", err))
	}
	d := net.Dialer{Timeout: cfg.LoginTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("iscsi discovery at %s: %w", addr, err)
	}
	defer nc.Close()
	st, err := newLogin(nc, &cfg, "", newISID()).run(ctx)
	if err != nil {
		err = fmt.Errorf("iscsi discovery at %s: %w", addr, err)
		if errors.Is(err, ErrAuth) {
			return nil, jobs.Permanent(err)
		}
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	text, err := sendTargets(nc, st, cfg.LoginTimeout)
	if err != nil {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
		}
		return nil, fmt.Errorf("iscsi discovery at %s: %w", addr, err)
	}
	targets, err := parseSendTargets(text, addr)
	if err != nil {
		return nil, fmt.Errorf("iscsi discovery at %s: %w", addr, err)
	}
	return targets, nil
}

// sendTargets asks for every target and returns the answer's text,
// following continuations, then logs out (best effort).
func sendTargets(nc net.Conn, st loginState, timeout time.Duration) ([]byte, error) {
	rd := newPDUReader(nc, st.p.recvDSL)
	rd.headerDigest, rd.dataDigest = st.p.headerDigest, st.p.dataDigest
	cmdSN, expStatSN := st.cmdSN, st.expStatSN
	ttt := uint32(reservedTag)
	req := textKV{{"SendTargets", "All"}}.encode()
	var all []byte
	for {
		var h [bhsLen]byte
		header(&h, opTextReq, false, flagFinal)
		put32(h[:], 16, 1)
		put32(h[:], 20, ttt)
		put32(h[:], 24, cmdSN)
		put32(h[:], 28, expStatSN)
		nc.SetDeadline(time.Now().Add(timeout))
		if _, err := nc.Write(encodePDU(nil, &h, req, st.p.headerDigest, st.p.dataDigest)); err != nil {
			return nil, err
		}
		cmdSN++
		var p pdu
		if err := rd.read(&p); err != nil {
			return nil, err
		}
		if p.opcode() != opTextResp {
			return nil, fmt.Errorf("the target answered SendTargets with opcode 0x%02x", p.opcode())
		}
		expStatSN = p.u32(24) + 1
		if len(all)+len(p.data) > maxDiscoveryText {
			return nil, errors.New("the SendTargets answer exceeds 1 MiB")
		}
		all = append(all, p.data...)
		if p.flags()&flagContinue == 0 {
			break
		}
		ttt, req = p.u32(20), nil
	}
	var h [bhsLen]byte
	header(&h, opLogoutReq, true, flagFinal)
	put32(h[:], 16, 2)
	put32(h[:], 24, cmdSN)
	put32(h[:], 28, expStatSN)
	if _, err := nc.Write(encodePDU(nil, &h, nil, st.p.headerDigest, false)); err == nil {
		var p pdu
		rd.read(&p)
	}
	return all, nil
}

// parseSendTargets reads TargetName and TargetAddress keys: each
// TargetAddress belongs to the TargetName before it; a target without one
// is reached through the portal that answered.
func parseSendTargets(text []byte, portal string) ([]DiscoveredTarget, error) {
	list, err := parseTextList(text)
	if err != nil {
		return nil, err
	}
	var out []DiscoveredTarget
	for _, p := range list {
		switch p.k {
		case "TargetName":
			out = append(out, DiscoveredTarget{Name: p.v})
		case "TargetAddress":
			if len(out) == 0 {
				return nil, errors.New("TargetAddress before any TargetName")
			}
			addr, err := NormalizePortal(p.v)
			if err != nil {
				return nil, err
			}
			t := &out[len(out)-1]
			t.Portals = append(t.Portals, addr)
		}
	}
	for i := range out {
		if len(out[i].Portals) == 0 {
			out[i].Portals = []string{portal}
		}
	}
	return out, nil
}
