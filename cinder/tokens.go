package cinder

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
)

// ErrInvalidToken is returned (wrapped) by ValidateToken for a token
// Keystone does not accept: unknown, expired or revoked.
var ErrInvalidToken = errors.New("invalid token")

// TokenInfo is what Keystone says of a valid token.
type TokenInfo struct {
	UserID    string
	ProjectID string
	Roles     []string
	ExpiresAt time.Time
}

// ValidateToken asks Keystone about a token presented to this worker (a
// download's X-Auth-Token), authenticated as the service user. It returns
// an error wrapping ErrInvalidToken for a token Keystone refuses; any other
// error means Keystone could not answer. The token never appears in errors.
func (c *Client) ValidateToken(ctx context.Context, token string) (TokenInfo, error) {
	pc := c.sc.ProviderClient
	endpoint := pc.IdentityEndpoint
	if !strings.HasSuffix(strings.TrimRight(endpoint, "/"), "/v3") {
		endpoint = pc.IdentityBase + "v3/"
	}
	ic := &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: gophercloud.NormalizeURL(endpoint), Type: "identity"}
	r := tokens.Get(ctx, ic, token)
	if r.Err != nil {
		if gophercloud.ResponseCodeIs(r.Err, http.StatusNotFound) || gophercloud.ResponseCodeIs(r.Err, http.StatusUnauthorized) {
			return TokenInfo{}, fmt.Errorf("keystone: %w", ErrInvalidToken)
		}
		return TokenInfo{}, classify("validate a token with Keystone", r.Err)
	}
	tok, err := r.ExtractToken()
	if err != nil {
		return TokenInfo{}, fmt.Errorf("keystone token: %w", err)
	}
	info := TokenInfo{ExpiresAt: tok.ExpiresAt}
	if u, err := r.ExtractUser(); err == nil && u != nil {
		info.UserID = u.ID
	}
	if p, err := r.ExtractProject(); err == nil && p != nil {
		info.ProjectID = p.ID
	}
	roles, err := r.ExtractRoles()
	if err != nil {
		return TokenInfo{}, fmt.Errorf("keystone token roles: %w", err)
	}
	for _, role := range roles {
		info.Roles = append(info.Roles, role.Name)
	}
	if !info.ExpiresAt.IsZero() && time.Now().After(info.ExpiresAt) {
		return TokenInfo{}, fmt.Errorf("keystone: the token expired at %s: %w", info.ExpiresAt.UTC().Format(time.RFC3339), ErrInvalidToken)
	}
	return info, nil
}
