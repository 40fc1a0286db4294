package iscsi

import (
	"errors"
	"fmt"
	"strings"
)

// maxTextKeys bounds a parsed text segment.
const maxTextKeys = 256

// parseText reads "key=value\0" pairs (RFC 7143 §6). Keys must be unique.
func parseText(b []byte) (map[string]string, error) {
	kv := map[string]string{}
	for _, item := range strings.Split(string(b), "\x00") {
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" || len(k) > 63 {
			return nil, fmt.Errorf("iscsi: malformed text key %q", truncate(item, 40))
		}
		if _, dup := kv[k]; dup {
			return nil, fmt.Errorf("iscsi: text key %s repeated", k)
		}
		if len(kv) == maxTextKeys {
			return nil, errors.New("iscsi: too many text keys")
		}
		kv[k] = v
	}
	return kv, nil
}

// textKV is an ordered key list for requests.
type textKV [][2]string

func (t textKV) encode() []byte {
	var b strings.Builder
	for _, kv := range t {
		b.WriteString(kv[0])
		b.WriteByte('=')
		b.WriteString(kv[1])
		b.WriteByte(0)
	}
	return []byte(b.String())
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
