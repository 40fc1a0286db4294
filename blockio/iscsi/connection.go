package iscsi

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ConnectionInfo is Cinder's iSCSI connection info, parsed.
type ConnectionInfo struct {
	// Paths to the LUN, the preferred first; empty when the info names no
	// target (DiscoveryPortals then says where to look).
	Paths            []Path
	DiscoveryPortals []string
	// LUN is the LUN number for discovered targets.
	LUN int
	// Auth is the session's CHAP credentials, DiscoveryAuth the SendTargets
	// session's (the session's when no discovery_auth_method is given).
	Auth, DiscoveryAuth Auth
}

// ParseConnection reads Cinder's iSCSI connection properties (as os-brick
// does): target_portal, target_iqn, target_lun, or the lists
// target_portals, target_iqns, target_luns (paired by index; a single
// target_lun serves every path); auth_method "CHAP" with auth_username and
// auth_password; discovery_auth_method with discovery_auth_username and
// discovery_auth_password. cinderport also reads target_auth_username and
// target_auth_password for mutual CHAP. Numbers may arrive as JSON numbers
// or strings. Errors name keys, never values of secrets.
func ParseConnection(d map[string]any) (ConnectionInfo, error) {
	var info ConnectionInfo
	portals, err := stringList(d, "target_portals")
	if err != nil {
		return info, err
	}
	iqns, err := stringList(d, "target_iqns")
	if err != nil {
		return info, err
	}
	luns, err := intList(d, "target_luns")
	if err != nil {
		return info, err
	}
	portal, _, err := str(d, "target_portal")
	if err != nil {
		return info, err
	}
	iqn, _, err := str(d, "target_iqn")
	if err != nil {
		return info, err
	}
	lun, hasLUN, err := integer(d, "target_lun")
	if err != nil {
		return info, err
	}
	if !hasLUN && len(luns) > 0 {
		lun = luns[0]
	}
	info.LUN = lun

	switch {
	case len(portals) > 0 && len(iqns) > 0:
		if len(iqns) != len(portals) || (len(luns) > 0 && len(luns) != len(portals)) {
			return info, fmt.Errorf("target_portals, target_iqns and target_luns differ in length (%d, %d, %d)", len(portals), len(iqns), len(luns))
		}
		for i := range portals {
			p := Path{Portal: portals[i], Target: iqns[i], LUN: lun}
			if len(luns) > 0 {
				p.LUN = luns[i]
			}
			info.Paths = append(info.Paths, p)
		}
		// The single target_portal, when given, is tried first.
		if portal != "" && iqn != "" {
			first := Path{Portal: portal, Target: iqn, LUN: lun}
			rest := []Path{first}
			for _, p := range info.Paths {
				if p != first {
					rest = append(rest, p)
				}
			}
			info.Paths = rest
		}
	case portal != "" && iqn != "":
		info.Paths = []Path{{Portal: portal, Target: iqn, LUN: lun}}
		for _, p := range portals { // alternative portals of the same target
			if p != portal {
				info.Paths = append(info.Paths, Path{Portal: p, Target: iqn, LUN: lun})
			}
		}
	case portal != "" || len(portals) > 0:
		if portal != "" {
			info.DiscoveryPortals = append(info.DiscoveryPortals, portal)
		}
		info.DiscoveryPortals = append(info.DiscoveryPortals, portals...)
	default:
		return info, fmt.Errorf("connection info has neither target_portal nor target_portals")
	}
	for _, p := range info.Paths {
		if p.LUN < 0 || p.LUN > 16383 {
			return info, fmt.Errorf("LUN %d is out of range", p.LUN)
		}
		if _, err := NormalizePortal(p.Portal); err != nil {
			return info, err
		}
	}

	if info.Auth, err = chapCredentials(d, "auth_"); err != nil {
		return info, err
	}
	if info.Auth.User != "" {
		tu, _, err := str(d, "target_auth_username")
		if err != nil {
			return info, err
		}
		ts, _, err := str(d, "target_auth_password")
		if err != nil {
			return info, err
		}
		if (tu == "") != (ts == "") {
			return info, fmt.Errorf("target_auth_username and target_auth_password come together")
		}
		info.Auth.TargetUser, info.Auth.TargetSecret = tu, ts
	}
	if info.DiscoveryAuth, err = chapCredentials(d, "discovery_auth_"); err != nil {
		return info, err
	}
	if _, ok := d["discovery_auth_method"]; !ok {
		info.DiscoveryAuth = info.Auth
	}
	return info, nil
}

// chapCredentials reads <prefix>method, <prefix>username and
// <prefix>password.
func chapCredentials(d map[string]any, prefix string) (Auth, error) {
	method, _, err := str(d, prefix+"method")
	if err != nil {
		return Auth{}, err
	}
	switch strings.ToUpper(method) {
	case "", "NONE":
		return Auth{}, nil
	case "CHAP":
	default:
		return Auth{}, fmt.Errorf("%smethod %q is not supported (CHAP or None)", prefix, truncate(method, 20))
	}
	user, _, err := str(d, prefix+"username")
	if err != nil {
		return Auth{}, err
	}
	secret, _, err := str(d, prefix+"password")
	if err != nil {
		return Auth{}, err
	}
	if user == "" || secret == "" {
		return Auth{}, fmt.Errorf("%smethod is CHAP but %susername or %spassword is missing", prefix, prefix, prefix)
	}
	return Auth{User: user, Secret: secret}, nil
}

// str reads a string property; a missing or null one is "".
func str(d map[string]any, key string) (string, bool, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return "", false, nil
	}
	s, ok := v.(string)
	if !ok {
		return "", false, fmt.Errorf("%s is a %T, not a string", key, v)
	}
	return s, true, nil
}

// integer reads a number given as a JSON number (float64, json.Number), a
// Go integer or a decimal string.
func integer(d map[string]any, key string) (int, bool, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return 0, false, nil
	}
	n, err := toInt(v)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %w", key, err)
	}
	return n, true, nil
}

func toInt(v any) (int, error) {
	switch x := v.(type) {
	case float64:
		if x != math.Trunc(x) || x < math.MinInt32 || x > math.MaxInt32 {
			return 0, fmt.Errorf("%v is not an integer", x)
		}
		return int(x), nil
	case int:
		return x, nil
	case int64:
		if x < math.MinInt32 || x > math.MaxInt32 {
			return 0, fmt.Errorf("%d is out of range", x)
		}
		return int(x), nil
	case json.Number:
		n, err := strconv.Atoi(string(x))
		if err != nil {
			return 0, fmt.Errorf("%q is not an integer", truncate(string(x), 20))
		}
		return n, nil
	case string:
		n, err := strconv.Atoi(strings.TrimSpace(x))
		if err != nil {
			return 0, fmt.Errorf("%q is not an integer", truncate(x, 20))
		}
		return n, nil
	}
	return 0, fmt.Errorf("a %T is not a number", v)
}

func stringList(d map[string]any, key string) ([]string, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return nil, nil
	}
	switch x := v.(type) {
	case []string:
		return x, nil
	case []any:
		out := make([]string, len(x))
		for i, e := range x {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("%s[%d] is a %T, not a string", key, i, e)
			}
			out[i] = s
		}
		return out, nil
	}
	return nil, fmt.Errorf("%s is a %T, not a list", key, v)
}

func intList(d map[string]any, key string) ([]int, error) {
	v, ok := d[key]
	if !ok || v == nil {
		return nil, nil
	}
	var elems []any
	switch x := v.(type) {
	case []any:
		elems = x
	case []int:
		return x, nil
	default:
		return nil, fmt.Errorf("%s is a %T, not a list", key, v)
	}
	out := make([]int, len(elems))
	for i, e := range elems {
		n, err := toInt(e)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", key, i, err)
		}
		out[i] = n
	}
	return out, nil
}
