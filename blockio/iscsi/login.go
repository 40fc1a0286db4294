package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Login stages (RFC 7143 §11.12.3).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// maxLoginRounds bounds the exchanges of one login stage: a target that
// never moves on is broken.
const maxLoginRounds = 16

// Login failures the callers branch on.
var (
	// ErrAuth is returned (wrapped, and permanent) when the target refuses
	// our CHAP credentials, requires credentials we do not have, or fails
	// mutual CHAP.
	ErrAuth = errors.New("iscsi: authentication failed")
	// ErrNoTarget is returned (wrapped) when the portal does not serve the
	// target (login status "not found" or "removed").
	ErrNoTarget = errors.New("iscsi: no such target")
)

// params are the negotiated operational parameters (RFC 7143 §13).
type params struct {
	headerDigest, dataDigest  bool
	sendDSL                   int // the target's MaxRecvDataSegmentLength: our Data-Out and immediate data limit
	recvDSL                   int // ours, declared to the target
	maxBurst, firstBurst      int
	initialR2T, immediateData bool
}

// loginState is what a successful login hands the full feature phase.
type loginState struct {
	p         params
	tsih      uint16
	cmdSN     uint32
	expStatSN uint32
	maxCmdSN  uint32
}

// loginError is a login response with a non-zero status (RFC 7143
// §11.13.5).
type loginError struct {
	class, detail byte
	redirect      string
}

func (e *loginError) Error() string {
	switch e.class {
	case 1:
		return fmt.Sprintf("iscsi login: target moved to %s", e.redirect)
	case 2:
		return fmt.Sprintf("iscsi login refused: %s (status 0x%02x%02x)", initiatorDetail(e.detail), e.class, e.detail)
	}
	return fmt.Sprintf("iscsi login failed: target error (status 0x%02x%02x)", e.class, e.detail)
}

func (e *loginError) Is(target error) bool {
	switch target {
	case ErrAuth:
		return e.class == 2 && (e.detail == 1 || e.detail == 2)
	case ErrNoTarget:
		return e.class == 2 && (e.detail == 3 || e.detail == 4)
	}
	return false
}

// permanent reports whether retrying the same login cannot succeed.
func (e *loginError) permanent() bool { return e.class == 2 && e.detail != 6 }

func initiatorDetail(d byte) string {
	switch d {
	case 1:
		return "authentication failure"
	case 2:
		return "authorization failure"
	case 3:
		return "target not found"
	case 4:
		return "target removed"
	case 5:
		return "unsupported version"
	case 6:
		return "too many connections"
	case 7:
		return "missing parameter"
	case 9:
		return "session type not supported"
	}
	return "initiator error"
}

// login is one login phase on a TCP connection.
type login struct {
	nc        net.Conn
	rd        *pduReader
	isid      [6]byte
	tsih      uint16
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	first     bool

	initiator   string
	target      string // empty for a discovery session
	auth        Auth
	requireAuth bool
	digests     bool
	recvDSL     int
	timeout     time.Duration
}

func newLogin(nc net.Conn, cfg *Config, target string, isid [6]byte) *login {
	return &login{nc: nc, rd: newPDUReader(nc, loginMaxData), isid: isid, cmdSN: 1, first: true,
		initiator: cfg.InitiatorName, target: target, auth: cfg.Auth, requireAuth: cfg.RequireAuth,
		digests: cfg.Digests, recvDSL: cfg.MaxRecvDataSegmentLength, timeout: cfg.LoginTimeout}
}

// exchange sends one Login Request and returns the target's answer,
// reassembling continued responses.
func (l *login) exchange(csg, nsg int, transit bool, req textKV) (*pdu, map[string]string, error) {
	flags := byte(csg)<<2 | byte(nsg)
	if transit {
		flags |= flagTransit
	}
	data := req.encode()
	var all []byte
	for {
		var h [bhsLen]byte
		header(&h, opLoginReq, true, flags)
		copy(h[8:14], l.isid[:])
		binary.BigEndian.PutUint16(h[14:], l.tsih)
		put32(h[:], 16, l.itt)
		put32(h[:], 24, l.cmdSN)
		put32(h[:], 28, l.expStatSN)
		l.nc.SetDeadline(time.Now().Add(l.timeout))
		if _, err := l.nc.Write(encodePDU(nil, &h, data, false, false)); err != nil {
			return nil, nil, err
		}
		p := &pdu{}
		if err := l.rd.read(p); err != nil {
			return nil, nil, err
		}
		if p.opcode() != opLoginResp {
			return nil, nil, fmt.Errorf("iscsi login: target answered with opcode 0x%02x", p.opcode())
		}
		if p.itt() != l.itt {
			return nil, nil, fmt.Errorf("iscsi login: answer for task 0x%x, not 0x%x", p.itt(), l.itt)
		}
		if len(all)+len(p.data) > loginMaxData {
			return nil, nil, errors.New("iscsi login: the target's text exceeds 64 KiB")
		}
		all = append(all, p.data...)
		if class, detail := p.bhs[36], p.bhs[37]; class != 0 {
			e := &loginError{class: class, detail: detail}
			if kv, err := parseText(all); err == nil {
				e.redirect = kv["TargetAddress"]
			}
			return p, nil, e
		}
		if sn := p.u32(24); l.first || snLE(l.expStatSN, sn+1) {
			l.expStatSN, l.first = sn+1, false
		}
		if p.flags()&flagContinue == 0 {
			kv, err := parseText(all)
			return p, kv, err
		}
		// The answer continues: ask for the rest with an empty request
		// (RFC 7143 §6.3: T=0 while the target has more text).
		flags &^= flagTransit
		data = nil
	}
}

// transits reports whether the target moved to stage nsg.
func transits(p *pdu, nsg int) bool {
	return p.flags()&flagTransit != 0 && int(p.flags()&0x03) == nsg
}

// run performs the whole login: security, then operational negotiation,
// and returns the negotiated state.
func (l *login) run(ctx context.Context) (loginState, error) {
	stop := context.AfterFunc(ctx, func() { l.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer l.nc.SetDeadline(time.Time{})
	st, err := l.stages()
	if err != nil && ctx.Err() != nil {
		return st, fmt.Errorf("iscsi login: %w", context.Cause(ctx))
	}
	return st, err
}

func (l *login) stages() (loginState, error) {
	a := l.auth
	method := "None"
	if a.User != "" {
		method = "CHAP,None"
	}
	sec := textKV{{"InitiatorName", l.initiator}}
	if l.target != "" {
		sec = append(sec, kv{"TargetName", l.target}, kv{"SessionType", "Normal"})
	} else {
		sec = append(sec, kv{"SessionType", "Discovery"})
	}
	sec = append(sec, kv{"AuthMethod", method})
	p, keys, err := l.exchange(stageSecurity, stageOperational, true, sec)
	if err != nil {
		return loginState{}, err
	}
	switch keys["AuthMethod"] {
	case "CHAP":
		if a.User == "" {
			return loginState{}, fmt.Errorf("%w: the target requires CHAP and no credentials were given", ErrAuth)
		}
		if p, err = l.chap(); err != nil {
			return loginState{}, err
		}
	case "None", "":
		if a.User != "" && (l.requireAuth || a.TargetUser != "") {
			return loginState{}, fmt.Errorf("%w: the target let us in without CHAP", ErrAuth)
		}
	default:
		return loginState{}, fmt.Errorf("%w: the target answered AuthMethod=%s", ErrAuth, truncate(keys["AuthMethod"], 20))
	}
	for round := 0; !transits(p, stageOperational); round++ {
		if round == maxLoginRounds {
			return loginState{}, errors.New("iscsi login: the target never leaves the security stage")
		}
		if p, _, err = l.exchange(stageSecurity, stageOperational, true, nil); err != nil {
			return loginState{}, err
		}
	}
	return l.operational()
}

// Our operational offer. MaxBurstLength and FirstBurstLength are as large as
// targets accept: they negotiate to the minimum of both sides.
const (
	offerMaxBurst   = 16776192
	offerFirstBurst = 16776192
	offerMaxR2T     = 16
)

// declarative keys carry a value for the receiver and are never answered.
var declarative = map[string]bool{
	"MaxRecvDataSegmentLength": true, "TargetAlias": true, "TargetAddress": true,
	"TargetPortalGroupTag": true, "InitiatorAlias": true,
}

func (l *login) operational() (loginState, error) {
	digest := "None"
	if l.digests {
		digest = "CRC32C,None"
	}
	offer := textKV{
		{"HeaderDigest", digest}, {"DataDigest", digest},
		{"MaxRecvDataSegmentLength", strconv.Itoa(l.recvDSL)},
	}
	if l.target != "" {
		offer = append(offer, textKV{
			{"InitialR2T", "No"}, {"ImmediateData", "Yes"},
			{"MaxBurstLength", strconv.Itoa(offerMaxBurst)}, {"FirstBurstLength", strconv.Itoa(offerFirstBurst)},
			{"MaxOutstandingR2T", strconv.Itoa(offerMaxR2T)}, {"DataPDUInOrder", "Yes"}, {"DataSequenceInOrder", "Yes"},
			{"ErrorRecoveryLevel", "0"}, {"MaxConnections", "1"},
			{"DefaultTime2Wait", "0"}, {"DefaultTime2Retain", "0"},
			{"IFMarker", "No"}, {"OFMarker", "No"},
		}...)
	}
	offered := map[string]bool{}
	for _, o := range offer {
		offered[o.k] = true
	}
	got := map[string]string{}
	req := offer
	for round := 0; ; round++ {
		if round == maxLoginRounds {
			return loginState{}, errors.New("iscsi login: the target never finishes operational negotiation")
		}
		p, keys, err := l.exchange(stageOperational, stageFullFeature, true, req)
		if err != nil {
			return loginState{}, err
		}
		req = nil
		for k, v := range keys {
			if !offered[k] && !declarative[k] {
				// A key the target proposes: our answer is the outcome.
				v = answerProposal(k, v)
				req = append(req, kv{k, v})
				offered[k] = true
			}
			got[k] = v
		}
		if transits(p, stageFullFeature) {
			res, err := negotiated(got, l.recvDSL, l.target != "")
			if err != nil {
				return loginState{}, err
			}
			return loginState{p: res, tsih: binary.BigEndian.Uint16(p.bhs[14:]), cmdSN: l.cmdSN,
				expStatSN: l.expStatSN, maxCmdSN: p.u32(32)}, nil
		}
	}
}

// answerProposal answers an operational key the target offered and we did
// not: values that only restrict us are accepted, the rest is declined
// with the value we run with.
func answerProposal(k, v string) string {
	switch k {
	case "HeaderDigest", "DataDigest":
		return "None"
	case "ErrorRecoveryLevel", "DefaultTime2Wait", "DefaultTime2Retain":
		return "0"
	case "MaxConnections":
		return "1"
	case "IFMarker", "OFMarker":
		return "No"
	case "InitialR2T", "ImmediateData":
		return v // OR with our No, AND with our Yes: the target's value
	case "DataPDUInOrder", "DataSequenceInOrder":
		return "Yes" // OR with our Yes
	case "MaxBurstLength", "FirstBurstLength", "MaxOutstandingR2T":
		return v // minimum: the target's value wins
	}
	return "NotUnderstood"
}

// negotiated turns the target's answers into the session's parameters
// (RFC 7143 §13: minimum for lengths, OR for InitialR2T, AND for
// ImmediateData; MaxRecvDataSegmentLength is declarative, 8192 if never
// declared).
func negotiated(got map[string]string, recvDSL int, normal bool) (params, error) {
	num := func(k string, def, limit int) (int, error) {
		v, ok := got[k]
		if !ok || v == "Reject" || v == "NotUnderstood" || v == "Irrelevant" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 512 || n > 1<<24-1 {
			return 0, fmt.Errorf("iscsi login: %s=%s is out of range", k, truncate(v, 20))
		}
		return min(n, limit), nil
	}
	flag := func(k string, def bool) bool {
		switch got[k] {
		case "Yes":
			return true
		case "No":
			return false
		}
		return def
	}
	digest := func(k string) (bool, error) {
		switch v := got[k]; v {
		case "CRC32C":
			return true, nil
		case "None", "", "Reject", "NotUnderstood", "Irrelevant":
			return false, nil
		default:
			return false, fmt.Errorf("iscsi login: the target chose %s=%s, which we did not offer", k, truncate(v, 20))
		}
	}
	var p params
	var err error
	p.recvDSL = recvDSL
	if p.headerDigest, err = digest("HeaderDigest"); err != nil {
		return p, err
	}
	if p.dataDigest, err = digest("DataDigest"); err != nil {
		return p, err
	}
	if p.sendDSL, err = num("MaxRecvDataSegmentLength", 8192, 1<<24-1); err != nil {
		return p, err
	}
	if !normal {
		return p, nil
	}
	if p.maxBurst, err = num("MaxBurstLength", 262144, offerMaxBurst); err != nil {
		return p, err
	}
	if p.firstBurst, err = num("FirstBurstLength", 65536, offerFirstBurst); err != nil {
		return p, err
	}
	p.firstBurst = min(p.firstBurst, p.maxBurst)
	p.initialR2T = flag("InitialR2T", true)
	p.immediateData = flag("ImmediateData", true)
	if v, ok := got["ErrorRecoveryLevel"]; ok && v != "0" {
		return p, fmt.Errorf("iscsi login: the target wants ErrorRecoveryLevel=%s; only 0 is supported", truncate(v, 10))
	}
	return p, nil
}

// NormalizePortal turns a portal as Cinder or a TargetAddress key gives it
// ("host[:port][,tag]", IPv6 hosts in brackets) into host:port, port 3260
// by default. It fails on an empty or malformed address.
func NormalizePortal(addr string) (string, error) {
	addr, _, _ = strings.Cut(strings.TrimSpace(addr), ",")
	if addr == "" {
		return "", errors.New("empty portal address")
	}
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if host == "" || port == "" {
			return "", fmt.Errorf("portal %q has no host or port", addr)
		}
		return net.JoinHostPort(host, port), nil
	}
	host := addr
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.ContainsAny(host, "[]") || host == "" {
		return "", fmt.Errorf("malformed portal %q", addr)
	}
	return net.JoinHostPort(host, "3260"), nil
}
