package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// ErrAuth is returned (wrapped, and permanent) when the target refuses our
// CHAP credentials or fails mutual CHAP.
var ErrAuth = errors.New("iscsi: authentication failed")

// Login stages.
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// Auth is CHAP credentials. With User empty, no authentication is offered.
// TargetUser/TargetSecret enable mutual CHAP: the target must prove it
// knows TargetSecret.
type Auth struct {
	User, Secret             string
	TargetUser, TargetSecret string
}

// params are the negotiated operational parameters.
type params struct {
	headerDigest, dataDigest  bool
	sendDSL                   int // the target's MaxRecvDataSegmentLength: our Data-Out limit
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

// loginError carries the target's status class and detail.
type loginError struct {
	class, detail byte
	redirect      string
}

func (e *loginError) Error() string {
	switch e.class {
	case 1:
		return fmt.Sprintf("iscsi login: target moved to %s", e.redirect)
	case 2:
		return fmt.Sprintf("iscsi login refused by the target (initiator error %d/%d)", e.class, e.detail)
	}
	return fmt.Sprintf("iscsi login failed: target error %d/%d", e.class, e.detail)
}

// loginConn runs the login phase on conn.
type loginConn struct {
	conn      net.Conn
	isid      [6]byte
	tsih      uint16
	itt       uint32
	cmdSN     uint32
	expStatSN uint32
	cfg       *Config
	target    string
}

// newISID is a random-type ISID (0x80 + 3 random bytes + qualifier).
func newISID() [6]byte {
	var b [6]byte
	rand.Read(b[1:])
	b[0] = 0x80
	return b
}

func (l *loginConn) exchange(csg, nsg int, transit bool, kv textKV) (*pdu, map[string]string, error) {
	h := header(opLoginReq, true, byte(csg)<<2|byte(nsg))
	if transit {
		h[1] |= 0x80
	}
	copy(h[8:14], l.isid[:])
	binary.BigEndian.PutUint16(h[14:], l.tsih)
	put32(h, 16, l.itt)
	put32(h, 24, l.cmdSN)
	put32(h, 28, l.expStatSN)
	data := kv.encode()
	setDataLen(h, len(data))
	buf := append(h, data...)
	buf = append(buf, make([]byte, pad4(len(data))-len(data))...)
	l.conn.SetDeadline(time.Now().Add(l.cfg.LoginTimeout))
	defer l.conn.SetDeadline(time.Time{})
	if _, err := l.conn.Write(buf); err != nil {
		return nil, nil, err
	}
	var all []byte
	for {
		p := &pdu{}
		n, err := readHeader(l.conn, p, false, make([]byte, 1024))
		if err != nil {
			return nil, nil, err
		}
		if p.opcode() != opLoginResp {
			return nil, nil, fmt.Errorf("iscsi login: unexpected opcode 0x%02x", p.opcode())
		}
		seg := make([]byte, n)
		if err := readData(l.conn, seg, false); err != nil {
			return nil, nil, err
		}
		all = append(all, seg...)
		if class, detail := p.bhs[36], p.bhs[37]; class != 0 {
			e := &loginError{class: class, detail: detail}
			if kv, err := parseText(all); err == nil {
				e.redirect = kv["TargetAddress"]
			}
			return p, nil, e
		}
		l.expStatSN = p.u32(24) + 1
		if p.flags()&0x40 == 0 { // not continued
			kv, err := parseText(all)
			return p, kv, err
		}
		// Continued: ask for the rest with an empty request.
		h := header(opLoginReq, true, byte(csg)<<2|byte(nsg))
		copy(h[8:14], l.isid[:])
		put32(h, 16, l.itt)
		put32(h, 24, l.cmdSN)
		put32(h, 28, l.expStatSN)
		if _, err := l.conn.Write(h); err != nil {
			return nil, nil, err
		}
	}
}

// chapResponse is MD5(id || secret || challenge) in hex.
func chapResponse(id byte, secret string, challenge []byte) string {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return "0x" + hex.EncodeToString(h.Sum(nil))
}

func decodeCHAPBinary(s string) ([]byte, error) {
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		return hex.DecodeString(s[2:])
	case strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B"):
		return base64.StdEncoding.DecodeString(s[2:])
	}
	return nil, fmt.Errorf("iscsi: CHAP value %q is neither hex nor base64", truncate(s, 16))
}

func authError(format string, args ...any) error {
	return jobs.Permanent(fmt.Errorf("%w: "+format, append([]any{ErrAuth}, args...)...))
}

// run performs the whole login and returns the negotiated state.
func (l *loginConn) run() (loginState, error) {
	a := l.cfg.Auth
	method := "None"
	if a.User != "" {
		method = "CHAP,None"
	}
	sec := textKV{{"InitiatorName", l.cfg.InitiatorName}, {"TargetName", l.target}, {"SessionType", "Normal"}, {"AuthMethod", method}}
	p, kv, err := l.exchange(stageSecurity, stageOperational, true, sec)
	if err != nil {
		return loginState{}, l.classify(err)
	}
	if kv["AuthMethod"] == "CHAP" {
		if a.User == "" {
			return loginState{}, authError("the target requires CHAP and no credentials were given")
		}
		if p, err = l.chap(); err != nil {
			return loginState{}, err
		}
	} else if a.User != "" && l.cfg.RequireAuth {
		return loginState{}, authError("the target accepted us without CHAP")
	}
	for p.flags()&0x80 == 0 || int(p.flags()&0x03) != stageOperational { // target not yet moving on
		if p, _, err = l.exchange(stageSecurity, stageOperational, true, nil); err != nil {
			return loginState{}, l.classify(err)
		}
	}

	want := params{recvDSL: l.cfg.MaxRecvDataSegmentLength, maxBurst: 16776192, firstBurst: 262144,
		initialR2T: false, immediateData: true}
	digest := "None"
	if l.cfg.Digests {
		digest = "CRC32C,None"
	}
	op := textKV{
		{"HeaderDigest", digest}, {"DataDigest", digest},
		{"MaxRecvDataSegmentLength", strconv.Itoa(want.recvDSL)},
		{"InitialR2T", "No"}, {"ImmediateData", "Yes"},
		{"MaxBurstLength", strconv.Itoa(want.maxBurst)}, {"FirstBurstLength", strconv.Itoa(want.firstBurst)},
		{"MaxOutstandingR2T", "1"}, {"DataPDUInOrder", "Yes"}, {"DataSequenceInOrder", "Yes"},
		{"ErrorRecoveryLevel", "0"}, {"MaxConnections", "1"}, {"DefaultTime2Wait", "0"}, {"DefaultTime2Retain", "0"},
		{"IFMarker", "No"}, {"OFMarker", "No"},
	}
	got := map[string]string{}
	for req := op; ; req = nil {
		p, kv, err = l.exchange(stageOperational, stageFullFeature, true, req)
		if err != nil {
			return loginState{}, l.classify(err)
		}
		for k, v := range kv {
			got[k] = v
		}
		if p.flags()&0x80 != 0 && int(p.flags()&0x03) == stageFullFeature {
			break
		}
	}
	res := want
	res.sendDSL = 8192 // the default when the target declares nothing
	num := func(k string, def int) int {
		if v, err := strconv.Atoi(got[k]); err == nil && v > 0 {
			return v
		}
		return def
	}
	res.sendDSL = min(num("MaxRecvDataSegmentLength", 8192), 16<<20)
	res.maxBurst = min(num("MaxBurstLength", 262144), want.maxBurst)
	res.firstBurst = min(num("FirstBurstLength", 65536), want.firstBurst, res.maxBurst)
	res.initialR2T = got["InitialR2T"] != "No"       // OR: No only if both say No
	res.immediateData = got["ImmediateData"] != "No" // AND with our Yes
	if _, ok := got["ImmediateData"]; !ok {
		res.immediateData = true
	}
	if _, ok := got["InitialR2T"]; !ok {
		res.initialR2T = true
	}
	res.headerDigest = got["HeaderDigest"] == "CRC32C"
	res.dataDigest = got["DataDigest"] == "CRC32C"
	return loginState{p: res, tsih: binary.BigEndian.Uint16(p.bhs[14:]), cmdSN: l.cmdSN,
		expStatSN: l.expStatSN, maxCmdSN: p.u32(32)}, nil
}

func (l *loginConn) classify(err error) error {
	var le *loginError
	if errors.As(err, &le) && le.class == 2 && le.detail == 1 {
		return authError("the target refused the CHAP credentials of user %q", l.cfg.Auth.User)
	}
	if errors.As(err, &le) && le.class == 2 {
		return jobs.Permanent(fmt.Errorf("target %s: %w", l.target, err))
	}
	return err
}

func (l *loginConn) chap() (*pdu, error) {
	a := l.cfg.Auth
	_, kv, err := l.exchange(stageSecurity, stageOperational, false, textKV{{"CHAP_A", "5"}})
	if err != nil {
		return nil, l.classify(err)
	}
	if kv["CHAP_A"] != "5" {
		return nil, authError("the target wants CHAP algorithm %q; only MD5 (5) is supported", kv["CHAP_A"])
	}
	id, err := strconv.Atoi(kv["CHAP_I"])
	if err != nil || id < 0 || id > 255 {
		return nil, authError("bad CHAP_I from the target")
	}
	challenge, err := decodeCHAPBinary(kv["CHAP_C"])
	if err != nil || len(challenge) == 0 || len(challenge) > 1024 {
		return nil, authError("bad CHAP_C from the target")
	}
	resp := textKV{{"CHAP_N", a.User}, {"CHAP_R", chapResponse(byte(id), a.Secret, challenge)}}
	var myID byte
	var myChallenge []byte
	if a.TargetUser != "" {
		var b [17]byte
		rand.Read(b[:])
		myID, myChallenge = b[0], b[1:]
		resp = append(resp, [2]string{"CHAP_I", strconv.Itoa(int(myID))}, [2]string{"CHAP_C", "0x" + hex.EncodeToString(myChallenge)})
	}
	p, kv, err := l.exchange(stageSecurity, stageOperational, true, resp)
	if err != nil {
		return nil, l.classify(err)
	}
	if a.TargetUser != "" {
		if kv["CHAP_N"] != a.TargetUser {
			return nil, authError("mutual CHAP: the target named itself %q", truncate(kv["CHAP_N"], 40))
		}
		got, err := decodeCHAPBinary(kv["CHAP_R"])
		want, _ := decodeCHAPBinary(chapResponse(myID, a.TargetSecret, myChallenge))
		if err != nil || subtle.ConstantTimeCompare(got, want) != 1 {
			return nil, authError("mutual CHAP: the target does not know the target secret")
		}
	}
	return p, nil
}

