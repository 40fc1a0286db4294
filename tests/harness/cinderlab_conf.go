package harness

import (
	"crypto/rand"
	_ "embed"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// lvmShim answers the LVM commands of Cinder's LVM driver with sparse files.
//
//go:embed lvmshim.py
var lvmShim []byte

// lvmCommands are the names the shim is installed under.
var lvmCommands = []string{"lvm", "vgs", "pvs", "lvs", "lvdisplay", "lvcreate", "lvremove", "lvextend",
	"lvrename", "lvchange", "vgcreate", "vgchange", "udevadm"}

// writeFile writes a lab file, creating its directory.
func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), mode)
}

// installBin fills the lab's bin directory, which comes first on the PATH of
// cinder-volume and of its privsep daemon: the LVM stand-in, and tgtadm /
// tgt-admin wrappers that address the lab's own tgtd (its control port) and
// read only the lab's target definitions.
func (l *CinderLab) installBin() error {
	bin := l.path("bin")
	if err := writeFile(filepath.Join(bin, "lvmshim"), string(lvmShim), 0o755); err != nil {
		return err
	}
	for _, c := range lvmCommands {
		if err := os.Symlink("lvmshim", filepath.Join(bin, c)); err != nil {
			return err
		}
	}
	targets := l.path("tgt", "targets.conf")
	if err := writeFile(targets, "include "+l.path("cinder", "volumes")+"/*\n", 0o644); err != nil {
		return err
	}
	wrappers := map[string]string{
		"tgtadm":    fmt.Sprintf("#!/bin/sh\nexec %s -C %d \"$@\"\n", l.tgtadmPath, l.tgtd.control),
		"tgt-admin": fmt.Sprintf("#!/bin/sh\nexec %s -C %d -c %s \"$@\"\n", l.tgtAdminPath, l.tgtd.control, targets),
	}
	for name, body := range wrappers {
		if err := writeFile(filepath.Join(bin, name), body, 0o755); err != nil {
			return err
		}
	}
	return os.MkdirAll(l.path("vg", l.VolumeGroup), 0o755)
}

// fernetKeys writes a Fernet key repository (a staged key 0 and a primary
// key 1), as keystone-manage fernet_setup would, without starting Python.
func fernetKeys(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, name := range []string{"0", "1"} {
		key := make([]byte, 32)
		rand.Read(key)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(base64.URLEncoding.EncodeToString(key)), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (l *CinderLab) keystoneConf() string {
	return fmt.Sprintf(`[DEFAULT]
log_file = %[1]s/logs/keystone.log

[database]
connection = postgresql://postgres@127.0.0.1:%[2]d/keystone

[identity]
# bcrypt's minimum cost: every token request checks a password.
password_hash_rounds = 4

[token]
provider = fernet

[fernet_tokens]
key_repository = %[1]s/keystone/fernet

[fernet_receipts]
key_repository = %[1]s/keystone/receipts

[credential]
key_repository = %[1]s/keystone/credential
`, l.dir, l.pgPort)
}

func (l *CinderLab) cinderConf() string {
	helper := fmt.Sprintf("env PATH=%s:/usr/sbin:/usr/bin:/sbin:/bin privsep-helper --config-file %s",
		l.path("bin"), l.path("cinder.conf"))
	tgtHost, tgtPort, _ := strings.Cut(l.Portal, ":")
	return fmt.Sprintf(`[DEFAULT]
auth_strategy = keystone
transport_url = rabbit://guest:guest@127.0.0.1:%[2]d/
my_ip = 127.0.0.1
host = %[3]s
enabled_backends = lvm
state_path = %[1]s/cinder
log_dir = %[1]s/logs
api_paste_config = /etc/cinder/api-paste.ini

[database]
connection = postgresql://postgres@127.0.0.1:%[4]d/cinder

[keystone_authtoken]
auth_url = %[5]s
www_authenticate_uri = %[5]s
auth_type = password
project_name = service
project_domain_name = Default
user_domain_name = Default
username = cinder
password = %[6]s
# Validate every token with Keystone: revocations take effect at once.
token_cache_time = -1

[oslo_concurrency]
lock_path = %[1]s/cinder/lock

[coordination]
backend_url = file://%[1]s/cinder/coordination

[cinder_sys_admin]
helper_command = %[7]s

[privsep_osbrick]
helper_command = %[7]s

[lvm]
volume_driver = cinder.volume.drivers.lvm.LVMVolumeDriver
volume_backend_name = lvm
volume_group = %[8]s
lvm_type = default
volume_clear = none
target_helper = tgtadm
target_protocol = iscsi
target_ip_address = %[9]s
target_port = %[10]s
use_chap_auth = True
volumes_dir = %[1]s/cinder/volumes
`, l.dir, l.amqpPort, l.Host, l.pgPort, l.keystoneURL(), l.cinderPassword, helper, l.VolumeGroup, tgtHost, tgtPort)
}

// CloudsYAML is the clouds.yaml content for the image store's user, as
// cloud "cinderlab".
func (l *CinderLab) cloudsYAML() string {
	return fmt.Sprintf(`clouds:
  cinderlab:
    auth:
      auth_url: %s
      username: %s
      password: %s
      project_name: %s
      user_domain_name: Default
      project_domain_name: Default
    region_name: %s
    interface: public
    identity_api_version: 3
`, l.AuthURL, l.User, l.Password, l.Project, l.Region)
}

// glanceConf is a glance-api.conf whose [glance_store] section points the
// cinder store at the lab, with glance_store's option names.
func (l *CinderLab) glanceConf() string {
	return fmt.Sprintf(`[DEFAULT]
enabled_backends = cinder:cinder

[glance_store]
default_backend = cinder
cinder_store_auth_address = %s
cinder_store_user_name = %s
cinder_store_password = %s
cinder_store_project_name = %s
cinder_store_user_domain_name = Default
cinder_store_project_domain_name = Default
cinder_catalog_info = volumev3::publicURL
cinder_os_region_name = %s
cinder_state_transition_timeout = 120
cinder_attachment_retry_attempts = 5
`, l.AuthURL, l.User, l.Password, l.Project, l.Region)
}
