package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// call makes a JSON request: body (if not nil) is encoded, a 2xx response is
// decoded into out (if not nil), anything else is an error with the body.
func (l *CinderLab) call(ctx context.Context, method, u, token string, body, out any, headers ...string) (http.Header, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("X-Auth-Token", token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := l.httpc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.Header, fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.Header, fmt.Errorf("%s %s: decode: %w", method, u, err)
		}
	}
	return resp.Header, nil
}

// tokenInfo is what a token request returns.
type tokenInfo struct {
	token, projectID, userID string
}

func (l *CinderLab) authenticate(ctx context.Context, user, password, project string) (tokenInfo, error) {
	body := map[string]any{"auth": map[string]any{
		"identity": map[string]any{"methods": []string{"password"}, "password": map[string]any{
			"user": map[string]any{"name": user, "domain": map[string]string{"id": "default"}, "password": password}}},
		"scope": map[string]any{"project": map[string]any{"name": project, "domain": map[string]string{"id": "default"}}},
	}}
	var out struct {
		Token struct {
			Project struct{ ID string } `json:"project"`
			User    struct{ ID string } `json:"user"`
		} `json:"token"`
	}
	h, err := l.call(ctx, "POST", l.AuthURL+"/auth/tokens", "", body, &out)
	if err != nil {
		return tokenInfo{}, err
	}
	return tokenInfo{h.Get("X-Subject-Token"), out.Token.Project.ID, out.Token.User.ID}, nil
}

// Token gets a project-scoped token for a user of the Default domain and
// returns it with the project's id.
func (l *CinderLab) Token(ctx context.Context, user, password, project string) (token, projectID string, err error) {
	ti, err := l.authenticate(ctx, user, password, project)
	return ti.token, ti.projectID, err
}

// ApplicationCredential creates an application credential of the image
// store's user in the service project and returns its id and secret.
func (l *CinderLab) ApplicationCredential(t testing.TB, name string) (id, secret string) {
	t.Helper()
	ctx := context.Background()
	ti, err := l.authenticate(ctx, l.User, l.Password, l.Project)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Credential struct{ ID, Secret string } `json:"application_credential"`
	}
	if _, err := l.call(ctx, "POST", l.AuthURL+"/users/"+ti.userID+"/application_credentials", ti.token,
		map[string]any{"application_credential": map[string]any{"name": name}}, &out); err != nil {
		t.Fatal(err)
	}
	return out.Credential.ID, out.Credential.Secret
}

func (l *CinderLab) admin(ctx context.Context) (token, projectID string, err error) {
	return l.Token(ctx, "admin", l.adminPassword, "admin")
}

func (l *CinderLab) roleID(ctx context.Context, token, name string) (string, error) {
	var out struct{ Roles []struct{ ID string } }
	if _, err := l.call(ctx, "GET", l.AuthURL+"/roles?name="+name, token, nil, &out); err != nil {
		return "", err
	}
	if len(out.Roles) == 0 {
		return "", fmt.Errorf("keystone has no role %q", name)
	}
	return out.Roles[0].ID, nil
}

// newUser creates a user of the Default domain with role in project.
func (l *CinderLab) newUser(ctx context.Context, token, projectID, name, password, role string) error {
	var u struct{ User struct{ ID string } }
	if _, err := l.call(ctx, "POST", l.AuthURL+"/users", token,
		map[string]any{"user": map[string]any{"name": name, "password": password, "domain_id": "default"}}, &u); err != nil {
		return err
	}
	rid, err := l.roleID(ctx, token, role)
	if err != nil {
		return err
	}
	_, err = l.call(ctx, "PUT", fmt.Sprintf("%s/projects/%s/users/%s/roles/%s", l.AuthURL, projectID, u.User.ID, rid), token, nil, nil)
	return err
}

func (l *CinderLab) newProject(ctx context.Context, token, name string) (string, error) {
	var p struct{ Project struct{ ID string } }
	_, err := l.call(ctx, "POST", l.AuthURL+"/projects", token,
		map[string]any{"project": map[string]any{"name": name, "domain_id": "default"}}, &p)
	return p.Project.ID, err
}

// bootstrapIdentity creates what keystone-manage bootstrap does not: the
// service project, the cinder and image-store users, and the volumev3
// service with its endpoints. Plain REST: the openstack CLI's look-ups by
// name hit 500s in this Keystone build.
func (l *CinderLab) bootstrapIdentity(ctx context.Context) error {
	token, _, err := l.admin(ctx)
	if err != nil {
		return err
	}
	if l.ProjectID, err = l.newProject(ctx, token, l.Project); err != nil {
		return err
	}
	if err := l.newUser(ctx, token, l.ProjectID, "cinder", l.cinderPassword, "admin"); err != nil {
		return err
	}
	if err := l.newUser(ctx, token, l.ProjectID, l.User, l.Password, "admin"); err != nil {
		return err
	}
	var s struct{ Service struct{ ID string } }
	if _, err := l.call(ctx, "POST", l.AuthURL+"/services", token,
		map[string]any{"service": map[string]any{"name": "cinderv3", "type": "volumev3"}}, &s); err != nil {
		return err
	}
	for _, iface := range []string{"public", "internal", "admin"} {
		if _, err := l.call(ctx, "POST", l.AuthURL+"/endpoints", token, map[string]any{"endpoint": map[string]any{
			"interface": iface, "service_id": s.Service.ID, "region_id": l.Region,
			"url": l.VolumeURL + "/v3/%(project_id)s"}}, nil); err != nil {
			return err
		}
	}
	return nil
}

// volumeAPI calls Cinder as the cloud admin, with microversion 3.27 (the
// attachments API).
func (l *CinderLab) volumeAPI(ctx context.Context, method, path string, body, out any) error {
	token, adminProject, err := l.admin(ctx)
	if err != nil {
		return err
	}
	_, err = l.call(ctx, method, l.VolumeURL+"/v3/"+adminProject+path, token, body, out,
		"OpenStack-API-Version", "volume 3.27")
	return err
}

func (l *CinderLab) pools(ctx context.Context) ([]string, error) {
	var out struct{ Pools []struct{ Name string } }
	if err := l.volumeAPI(ctx, "GET", "/scheduler-stats/get_pools", nil, &out); err != nil {
		return nil, err
	}
	var names []string
	for _, p := range out.Pools {
		names = append(names, p.Name)
	}
	return names, nil
}

// LabProject is a project made for a test, with a user holding the member
// role in it.
type LabProject struct {
	ID, Name       string
	User, Password string
}

// CreateProject makes a project and its member user, for a test that must
// not disturb the service project (quotas, for one).
func (l *CinderLab) CreateProject(t testing.TB, name string) LabProject {
	t.Helper()
	ctx := context.Background()
	token, _, err := l.admin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := LabProject{Name: name, User: name + "-user", Password: randHex(20)}
	if p.ID, err = l.newProject(ctx, token, name); err != nil {
		t.Fatal(err)
	}
	if err := l.newUser(ctx, token, p.ID, p.User, p.Password, "member"); err != nil {
		t.Fatal(err)
	}
	return p
}

// SetQuota sets Cinder quotas of a project ("volumes", "gigabytes", …).
func (l *CinderLab) SetQuota(t testing.TB, projectID string, quotas map[string]int) {
	t.Helper()
	if err := l.volumeAPI(context.Background(), "PUT", "/os-quota-sets/"+projectID,
		map[string]any{"quota_set": quotas}, nil); err != nil {
		t.Fatal(err)
	}
}

// RevokeToken revokes a token in Keystone, as an operator or an expiry
// would end it.
func (l *CinderLab) RevokeToken(t testing.TB, token string) {
	t.Helper()
	ctx := context.Background()
	admin, _, err := l.admin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.call(ctx, "DELETE", l.AuthURL+"/auth/tokens", admin, nil, nil, "X-Subject-Token", token); err != nil {
		t.Fatal(err)
	}
}

// TokenValid reports whether Keystone still accepts token.
func (l *CinderLab) TokenValid(t testing.TB, token string) bool {
	t.Helper()
	ctx := context.Background()
	admin, _, err := l.admin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = l.call(ctx, "HEAD", l.AuthURL+"/auth/tokens", admin, nil, nil, "X-Subject-Token", token)
	return err == nil
}

// LabVolume is a volume as the cloud admin sees it. Metadata holds the
// volume's metadata and, as Cinder shows them, the admin metadata keys
// readonly and attached_mode.
type LabVolume struct {
	ID, Name, Status string
	ProjectID        string `json:"os-vol-tenant-attr:tenant_id"`
	Size             int
	Metadata         map[string]string
	Attachments      []json.RawMessage
}

// Volumes lists the volumes of every project.
func (l *CinderLab) Volumes(t testing.TB) []LabVolume {
	t.Helper()
	var out struct{ Volumes []LabVolume }
	if err := l.volumeAPI(context.Background(), "GET", "/volumes/detail?all_tenants=1", nil, &out); err != nil {
		t.Fatal(err)
	}
	return out.Volumes
}

// LabAttachment is an attachment as the cloud admin sees it.
type LabAttachment struct {
	ID       string
	VolumeID string `json:"volume_id"`
	Status   string
}

// Attachments lists the attachments of every project.
func (l *CinderLab) Attachments(t testing.TB) []LabAttachment {
	t.Helper()
	var out struct{ Attachments []LabAttachment }
	if err := l.volumeAPI(context.Background(), "GET", "/attachments?all_tenants=1", nil, &out); err != nil {
		t.Fatal(err)
	}
	return out.Attachments
}

// LabConnection is what Cinder gave an attachment: its mode and iSCSI
// connection info, CHAP credentials included — never log them.
type LabConnection struct {
	AttachmentID, Status, Mode string
	Portal, IQN                string
	AuthUsername, AuthPassword string
}

// Connections returns the attachments of volumeID with the connection info
// Cinder gave them (the admin's detailed attachments view).
func (l *CinderLab) Connections(t testing.TB, volumeID string) []LabConnection {
	t.Helper()
	var out struct {
		Attachments []struct {
			ID             string
			VolumeID       string `json:"volume_id"`
			Status         string
			AttachMode     string `json:"attach_mode"`
			ConnectionInfo struct {
				TargetPortal string `json:"target_portal"`
				TargetIQN    string `json:"target_iqn"`
				AuthUsername string `json:"auth_username"`
				AuthPassword string `json:"auth_password"`
			} `json:"connection_info"`
		}
	}
	if err := l.volumeAPI(context.Background(), "GET", "/attachments/detail?all_tenants=1", nil, &out); err != nil {
		t.Fatal(err)
	}
	var conns []LabConnection
	for _, a := range out.Attachments {
		if a.VolumeID != volumeID {
			continue
		}
		ci := a.ConnectionInfo
		conns = append(conns, LabConnection{AttachmentID: a.ID, Status: a.Status, Mode: a.AttachMode,
			Portal: ci.TargetPortal, IQN: ci.TargetIQN, AuthUsername: ci.AuthUsername, AuthPassword: ci.AuthPassword})
	}
	return conns
}

// Targets counts the targets the lab's tgtd exports.
func (l *CinderLab) Targets() int { return l.tgtd.Targets() }

// VolumeTargets lists the tgtd targets that export volumeID (Cinder names
// them …:volume-<id>).
func (l *CinderLab) VolumeTargets(volumeID string) []string {
	var out []string
	for _, name := range l.tgtd.TargetNames() {
		if strings.HasSuffix(name, ":volume-"+volumeID) {
			out = append(out, name)
		}
	}
	return out
}

// VolumeFile is the sparse file behind a volume (what tgtd exports).
func (l *CinderLab) VolumeFile(volumeID string) string {
	return l.path("vg", l.VolumeGroup, "volume-"+volumeID)
}

// HoldVolumeDeletes makes cinder-volume's lvremove wait, so that a volume
// being deleted stays in status "deleting", until the returned release is
// called (also at t's cleanup).
func (l *CinderLab) HoldVolumeDeletes(t testing.TB) (release func()) {
	t.Helper()
	hold := l.path("hold-lvremove")
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	release = func() { os.Remove(hold) }
	t.Cleanup(release)
	return release
}

// WaitNoLeaks waits (up to a minute: deletions are asynchronous) until no
// volume, attachment or iSCSI target is left, and fails t with what
// remains otherwise.
func (l *CinderLab) WaitNoLeaks(t testing.TB) {
	t.Helper()
	var report string
	err := poll(time.Minute, 250*time.Millisecond, "leak check", func() error {
		var left []string
		for _, v := range l.Volumes(t) {
			left = append(left, fmt.Sprintf("volume %s (%s)", v.ID, v.Status))
		}
		for _, a := range l.Attachments(t) {
			left = append(left, fmt.Sprintf("attachment %s of volume %s (%s)", a.ID, a.VolumeID, a.Status))
		}
		if n := l.Targets(); n > 0 {
			left = append(left, fmt.Sprintf("%d tgtd target(s)", n))
		}
		report = strings.Join(left, ", ")
		if report != "" {
			return fmt.Errorf("left: %s", report)
		}
		return nil
	})
	if err != nil {
		OnFailure(t, "resources leaked: "+report)
		t.Errorf("resources leaked: %s", report)
	}
}
