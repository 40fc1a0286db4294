package iscsi

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Auth is CHAP credentials (RFC 7143 §12.1.3, MD5). With User empty, no
// authentication is offered. TargetUser and TargetSecret enable mutual
// CHAP: the target must prove it knows TargetSecret. String and GoString
// hide the secrets.
type Auth struct {
	User, Secret             string
	TargetUser, TargetSecret string
}

// String names the users only.
func (a Auth) String() string {
	if a.User == "" {
		return "auth{none}"
	}
	if a.TargetUser == "" {
		return "auth{chap user=" + a.User + "}"
	}
	return "auth{mutual chap user=" + a.User + " target=" + a.TargetUser + "}"
}

// GoString is String, so that %#v does not print the secrets either.
func (a Auth) GoString() string { return a.String() }

const (
	chapMD5          = "5"
	chapChallengeLen = 16
	// maxCHAPBinary bounds a decoded CHAP challenge or response.
	maxCHAPBinary = 1024
)

// chapResponse is MD5(id || secret || challenge) (RFC 1994 §4.1).
func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeCHAPBinary decodes a CHAP binary value: 0x-prefixed hex or
// 0b-prefixed base64 (RFC 7143 §6.1).
func decodeCHAPBinary(s string) ([]byte, error) {
	var b []byte
	var err error
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		h := s[2:]
		if len(h)%2 == 1 {
			h = "0" + h
		}
		b, err = hex.DecodeString(h)
	case strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B"):
		b, err = base64.StdEncoding.DecodeString(s[2:])
	default:
		return nil, errors.New("neither hex (0x) nor base64 (0b)")
	}
	if err != nil {
		return nil, err
	}
	if len(b) == 0 || len(b) > maxCHAPBinary {
		return nil, fmt.Errorf("%d bytes long", len(b))
	}
	return b, nil
}

// chap runs CHAP in the security stage, after the target chose it. The
// target's errors never quote our secrets; ours neither.
func (l *login) chap() (*pdu, error) {
	a := l.auth
	_, keys, err := l.exchange(stageSecurity, stageOperational, false, textKV{{"CHAP_A", chapMD5}})
	if err != nil {
		return nil, err
	}
	if keys["CHAP_A"] != chapMD5 {
		return nil, fmt.Errorf("%w: the target wants CHAP algorithm %q; only MD5 (5) is supported", ErrAuth, truncate(keys["CHAP_A"], 20))
	}
	id, err := strconv.Atoi(keys["CHAP_I"])
	if err != nil || id < 0 || id > 255 {
		return nil, fmt.Errorf("%w: the target sent a bad CHAP_I", ErrAuth)
	}
	challenge, err := decodeCHAPBinary(keys["CHAP_C"])
	if err != nil {
		return nil, fmt.Errorf("%w: the target sent a bad CHAP_C (%v)", ErrAuth, err)
	}
	resp := textKV{{"CHAP_N", a.User}, {"CHAP_R", "0x" + hex.EncodeToString(chapResponse(byte(id), a.Secret, challenge))}}
	var myID byte
	var myChallenge []byte
	if a.TargetUser != "" {
		var b [1 + chapChallengeLen]byte
		// A target that reflects our own challenge to us could make us
		// answer it: ours must differ from the one we received.
		for myChallenge == nil || bytes.Equal(myChallenge, challenge) {
			rand.Read(b[:])
			myID, myChallenge = b[0], b[1:]
		}
		resp = append(resp, kv{"CHAP_I", strconv.Itoa(int(myID))}, kv{"CHAP_C", "0x" + hex.EncodeToString(myChallenge)})
	}
	p, keys, err := l.exchange(stageSecurity, stageOperational, true, resp)
	if err != nil {
		return nil, err
	}
	if a.TargetUser == "" {
		return p, nil
	}
	if keys["CHAP_N"] != a.TargetUser {
		return nil, fmt.Errorf("%w: mutual CHAP: the target named itself %q, not %q", ErrAuth, truncate(keys["CHAP_N"], 40), a.TargetUser)
	}
	got, err := decodeCHAPBinary(keys["CHAP_R"])
	if err != nil || subtle.ConstantTimeCompare(got, chapResponse(myID, a.TargetSecret, myChallenge)) != 1 {
		return nil, fmt.Errorf("%w: mutual CHAP: the target does not know the target secret", ErrAuth)
	}
	return p, nil
}
