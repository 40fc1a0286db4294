package iscsi

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// Limits of RFC 7143 §6.1: key names are at most 63 bytes, values at most
// 8192 (the largest, TargetAddress lists and CHAP binaries, stay far below).
const (
	maxTextKeys  = 1024
	maxKeyLen    = 63
	maxValueLen  = 8192
	textKeyChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-+@_"
)

// kv is one key=value pair of a text segment.
type kv struct{ k, v string }

// parseTextList reads "key=value\0" pairs (RFC 7143 §6) in order, keeping
// repeated keys (SendTargets answers repeat TargetName and TargetAddress).
// A missing final NUL is tolerated.
func parseTextList(b []byte) ([]kv, error) {
	var out []kv
	for len(b) > 0 {
		item := b
		if i := bytes.IndexByte(b, 0); i >= 0 {
			item, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(item) == 0 {
			continue
		}
		k, v, ok := strings.Cut(string(item), "=")
		if !ok || !validKey(k) {
			return nil, fmt.Errorf("iscsi: malformed text key %q", truncate(string(item), 40))
		}
		if len(v) > maxValueLen {
			return nil, fmt.Errorf("iscsi: value of text key %s is %d bytes long", k, len(v))
		}
		if len(out) == maxTextKeys {
			return nil, errors.New("iscsi: too many text keys")
		}
		out = append(out, kv{k, v})
	}
	return out, nil
}

// parseText reads a login text segment as a map. A key should not repeat
// (RFC 7143 §6.2), but tgtd answers an out-of-range offer with
// "Key=Reject" and then proposes "Key=value" in the same segment: the
// later value wins.
func parseText(b []byte) (map[string]string, error) {
	list, err := parseTextList(b)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(list))
	for _, p := range list {
		m[p.k] = p.v
	}
	return m, nil
}

func validKey(k string) bool {
	if k == "" || len(k) > maxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if strings.IndexByte(textKeyChars, k[i]) < 0 {
			return false
		}
	}
	return true
}

// textKV is an ordered key list for requests.
type textKV []kv

func (t textKV) encode() []byte {
	var b []byte
	for _, p := range t {
		b = append(b, p.k...)
		b = append(b, '=')
		b = append(b, p.v...)
		b = append(b, 0)
	}
	return b
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
