package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// CinderLab is a real Keystone + Cinder (Debian's packages) on loopback:
// PostgreSQL, RabbitMQ (with its own epmd), Keystone and cinder-api under
// uwsgi, cinder-scheduler, cinder-volume with the LVM driver over sparse
// files (an LVM stand-in, lvmshim.py), and a tgtd of its own that exports
// the volumes over real iSCSI with CHAP.
//
// Every lab is independent: its own directory, ports, RabbitMQ node and epmd,
// volume group name, tgtd control port and portal (Cinder reaches that tgtd
// through tgtadm/tgt-admin wrappers), so two test binaries can each run one
// at the same time (go test -p 2). Bring-up takes 15–30 s and ~1 GiB of
// memory: share one per test package with SharedCinderLab.
type CinderLab struct {
	// AuthURL is Keystone's v3 endpoint.
	AuthURL string
	// VolumeURL is Cinder's API root (the catalog holds
	// VolumeURL/v3/%(project_id)s).
	VolumeURL string
	Region    string
	// Project is the service project the image store works in, and User /
	// Password its user there (role admin, as glance's service user).
	Project, ProjectID string
	User, Password     string
	// CloudsFile is a clouds.yaml with cloud "cinderlab" for User;
	// GlanceConfFile a glance-api.conf whose [glance_store] section holds
	// the same credentials under glance_store's option names.
	CloudsFile, GlanceConfFile string
	// Portal is the lab's tgtd portal (host:port).
	Portal string
	// VolumeGroup is the (stand-in) LVM volume group; Host cinder's host.
	VolumeGroup, Host string

	dir                                  string
	pgPort, amqpPort, distPort, epmdPort int
	keystonePort, cinderPort             int
	adminPassword, cinderPassword        string
	tgtd                                 *Tgtd
	tgtdPath, tgtadmPath, tgtAdminPath   string
	pgBin                                string
	mu                                   sync.Mutex
	procs                                []*labProc
	httpc                                *http.Client
}

// cinderLabPrograms are what the lab runs, by name on PATH or in sbin.
var cinderLabPrograms = []string{"keystone-manage", "keystone-wsgi-public", "cinder-manage", "cinder-wsgi",
	"cinder-scheduler", "cinder-volume", "privsep-helper", "uwsgi", "epmd", "tgtd", "tgtadm", "tgt-admin", "psql"}

// cinderLabMissing says what the machine lacks to run a lab, or "".
func cinderLabMissing() string {
	if os.Geteuid() != 0 {
		return "the lab runs cinder-volume, tgtd and PostgreSQL's owner switch as root"
	}
	var missing []string
	for _, p := range cinderLabPrograms {
		if LookPath(p) == "" {
			missing = append(missing, p)
		}
	}
	for _, f := range []string{"/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/lib/uwsgi/plugins/python3_plugin.so",
		"/usr/bin/python3", "/etc/cinder/api-paste.ini"} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if pgBinDir() == "" {
		missing = append(missing, "/usr/lib/postgresql/*/bin/postgres")
	}
	if _, err := user.Lookup("postgres"); err != nil {
		missing = append(missing, "user postgres")
	}
	if len(missing) > 0 {
		return "missing " + strings.Join(missing, ", ")
	}
	return ""
}

// pgBinDir is the newest PostgreSQL's bin directory, or "".
func pgBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	return ""
}

// StartCinderLab brings a lab up for t and tears it down at t's cleanup.
// Without the Debian packages (`make test-deps`) or root, t skips, or fails
// under CINDERPORT_REQUIRE_ALL=1.
func StartCinderLab(t testing.TB) *CinderLab {
	t.Helper()
	if why := cinderLabMissing(); why != "" {
		Missing(t, "Keystone + Cinder", why)
	}
	l, err := NewCinderLab(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// SharedCinderLab starts one lab for a whole test binary, on first use, and
// stops it when TestMain calls Close:
//
//	var lab harness.SharedCinderLab
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		lab.Close()
//		os.Exit(code)
//	}
//
//	func TestSomething(t *testing.T) { l := lab.Get(t); … }
//
// A bring-up failure fails every test that asks for the lab.
type SharedCinderLab struct {
	once sync.Once
	lab  *CinderLab
	err  error
}

// Get returns the lab, starting it on the first call. Without the Debian
// packages or root, t skips (or fails under CINDERPORT_REQUIRE_ALL=1).
func (s *SharedCinderLab) Get(t testing.TB) *CinderLab {
	t.Helper()
	if why := cinderLabMissing(); why != "" {
		Missing(t, "Keystone + Cinder", why)
	}
	s.once.Do(func() {
		start := time.Now()
		s.lab, s.err = NewCinderLab(context.Background())
		if s.err == nil {
			fmt.Fprintf(os.Stderr, "cinder lab up in %.1f s (Keystone %s, Cinder %s, tgtd %s)\n",
				time.Since(start).Seconds(), s.lab.AuthURL, s.lab.VolumeURL, s.lab.Portal)
		}
	})
	if s.err != nil {
		t.Fatalf("cinder lab: %v", s.err)
	}
	return s.lab
}

// Close stops the lab if it was started, and reports on stderr what could
// not be cleaned up.
func (s *SharedCinderLab) Close() {
	if s.lab == nil {
		return
	}
	start := time.Now()
	if err := s.lab.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "cinder lab teardown: %v\n", err)
	}
	fmt.Fprintf(os.Stderr, "cinder lab down in %.1f s\n", time.Since(start).Seconds())
}

// NewCinderLab brings a lab up in a new directory under the system's
// temporary directory; Close tears it down and removes the directory
// (CINDERLAB_KEEP=1 keeps it, with the services' logs). The caller checks
// prerequisites (StartCinderLab and SharedCinderLab do).
func NewCinderLab(ctx context.Context) (*CinderLab, error) {
	id := randHex(8)
	dir, err := os.MkdirTemp("", "cinderlab-")
	if err != nil {
		return nil, err
	}
	// PostgreSQL runs as postgres and must reach its data directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	l := &CinderLab{
		dir: dir, Region: "RegionOne", Project: "service", User: "glance",
		VolumeGroup: "cinderlab-" + id, Host: "cinderlab-" + id,
		adminPassword: randHex(20), cinderPassword: randHex(20), Password: randHex(20),
		tgtdPath: LookPath("tgtd"), tgtadmPath: LookPath("tgtadm"), tgtAdminPath: LookPath("tgt-admin"),
		pgBin: pgBinDir(), httpc: &http.Client{Timeout: 60 * time.Second},
	}
	if err := l.up(ctx); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = fmt.Errorf("%w; teardown: %v", err, cerr)
		}
		return nil, err
	}
	return l, nil
}

func (l *CinderLab) path(parts ...string) string {
	return filepath.Join(append([]string{l.dir}, parts...)...)
}

func (l *CinderLab) keystoneURL() string { return "http://127.0.0.1:" + strconv.Itoa(l.keystonePort) }

func (l *CinderLab) addProc(p *labProc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.procs = append(l.procs, p)
}

func (l *CinderLab) proc(name string) *labProc {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// start spawns a lab server and records it for Close.
func (l *CinderLab) start(name string, env []string, cred *syscall.Credential, stopSig syscall.Signal, args ...string) error {
	p, err := spawn(l.path("logs"), name, env, cred, stopSig, args...)
	if err != nil {
		return err
	}
	l.addProc(p)
	return nil
}

func (l *CinderLab) up(ctx context.Context) error {
	for _, d := range []string{"logs", "pg", "rabbit", "cinder/volumes", "cinder/lock", "cinder/coordination"} {
		if err := os.MkdirAll(l.path(d), 0o755); err != nil {
			return err
		}
	}
	ports := []*int{&l.pgPort, &l.amqpPort, &l.distPort, &l.epmdPort, &l.keystonePort, &l.cinderPort}
	for _, p := range ports {
		port, err := freePort()
		if err != nil {
			return err
		}
		*p = port
	}
	l.AuthURL = l.keystoneURL() + "/v3"
	l.VolumeURL = "http://127.0.0.1:" + strconv.Itoa(l.cinderPort)

	// Tier 1: tgtd, PostgreSQL, RabbitMQ and the files, side by side.
	err := parallel(
		func() error {
			d, err := startTgtd(l.tgtdPath, l.path("logs"), "127.0.0.1")
			if err != nil {
				return err
			}
			l.tgtd, l.Portal = d, d.Portal
			return l.installBin()
		},
		l.startPostgres,
		l.startRabbit,
		func() error {
			for _, d := range []string{"fernet", "receipts", "credential"} {
				if err := fernetKeys(l.path("keystone", d)); err != nil {
					return err
				}
			}
			return writeFile(l.path("keystone.conf"), l.keystoneConf(), 0o600)
		},
	)
	if err != nil {
		return err
	}
	if err := writeFile(l.path("cinder.conf"), l.cinderConf(), 0o600); err != nil {
		return err
	}
	// Tier 2: Keystone (schema, bootstrap, server, users and catalog) and
	// Cinder (schema, then its services once RabbitMQ listens).
	err = parallel(l.startKeystone, l.startCinder)
	if err != nil {
		return err
	}
	if err := l.waitCinder(ctx); err != nil {
		return err
	}
	l.CloudsFile, l.GlanceConfFile = l.path("clouds.yaml"), l.path("glance-api.conf")
	if err := writeFile(l.CloudsFile, l.cloudsYAML(), 0o600); err != nil {
		return err
	}
	return writeFile(l.GlanceConfFile, l.glanceConf(), 0o600)
}

func postgresCred() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (l *CinderLab) startPostgres() error {
	cred, err := postgresCred()
	if err != nil {
		return err
	}
	if err := os.Chown(l.path("pg"), int(cred.Uid), int(cred.Gid)); err != nil {
		return err
	}
	data := l.path("pg", "data")
	if err := run([]string{"LANG=C", "LC_ALL=C"}, cred, filepath.Join(l.pgBin, "initdb"), "-D", data,
		"-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions"); err != nil {
		return err
	}
	// Durability is of no use to a throw-away database.
	err = l.start("postgres", []string{"LANG=C", "LC_ALL=C"}, cred, syscall.SIGINT,
		filepath.Join(l.pgBin, "postgres"), "-D", data, "-p", strconv.Itoa(l.pgPort), "-k", l.path("pg"),
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	if err != nil {
		return err
	}
	psql := func(args ...string) error {
		return run(nil, nil, append([]string{LookPath("psql"), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(l.pgPort),
			"-U", "postgres", "-v", "ON_ERROR_STOP=1"}, args...)...)
	}
	err = poll(30*time.Second, 100*time.Millisecond, "postgres", func() error {
		if p := l.proc("postgres"); p.exited() {
			return errors.New("postgres exited: " + p.tail())
		}
		return psql("-c", "select 1")
	})
	if err != nil {
		return err
	}
	return psql("-c", "create database keystone", "-c", "create database cinder")
}

func (l *CinderLab) startRabbit() error {
	if err := l.start("epmd", nil, nil, syscall.SIGKILL, LookPath("epmd"),
		"-port", strconv.Itoa(l.epmdPort), "-address", "127.0.0.1"); err != nil {
		return err
	}
	base := l.path("rabbit")
	if err := writeFile(filepath.Join(base, "rabbitmq-env.conf"), "", 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(base, "enabled_plugins"), "[].\n", 0o644); err != nil {
		return err
	}
	env := []string{
		"HOME=" + base, // the Erlang cookie
		"ERL_EPMD_PORT=" + strconv.Itoa(l.epmdPort),
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(base, "rabbitmq-env.conf"),
		"RABBITMQ_NODENAME=" + l.Host + "@localhost",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(l.amqpPort),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(l.distPort),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(base, "mnesia"),
		"RABBITMQ_LOG_BASE=" + l.path("logs"),
		"RABBITMQ_LOGS=-",
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(base, "enabled_plugins"),
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(base, "rabbitmq"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(base, "advanced.config"),
		"RABBITMQ_PID_FILE=" + filepath.Join(base, "rabbit.pid"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
	}
	return l.start("rabbitmq", env, nil, syscall.SIGKILL, "/usr/lib/rabbitmq/bin/rabbitmq-server")
}

// waitPort waits until something accepts connections on 127.0.0.1:port,
// failing early if proc exits.
func (l *CinderLab) waitPort(proc string, port int, timeout time.Duration) error {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	return poll(timeout, 100*time.Millisecond, proc, func() error {
		if p := l.proc(proc); p != nil && p.exited() {
			return fmt.Errorf("%s exited: %s", proc, p.tail())
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		return nil
	})
}

// uwsgi returns the arguments serving a WSGI script on port. uwsgi's
// http-socket closes the connection after each answer: it says so
// (Connection: close), or clients that reuse the connection see a reset.
func uwsgi(port int, script string, extra ...string) []string {
	args := []string{LookPath("uwsgi"), "--plugins", "python3", "--http-socket", "127.0.0.1:" + strconv.Itoa(port),
		"--wsgi-file", script, "--processes", "2", "--threads", "1", "--master", "--die-on-term",
		"--no-orphans", "--lazy-apps", "--buffer-size", "65535", "--disable-logging",
		"--add-header", "Connection: close"}
	return append(args, extra...)
}

func (l *CinderLab) startKeystone() error {
	conf := l.path("keystone.conf")
	manage := LookPath("keystone-manage")
	if err := run(nil, nil, manage, "--config-file", conf, "db_sync"); err != nil {
		return err
	}
	url := l.AuthURL + "/"
	if err := run(nil, nil, manage, "--config-file", conf, "bootstrap", "--bootstrap-password", l.adminPassword,
		"--bootstrap-region-id", l.Region, "--bootstrap-admin-url", url, "--bootstrap-internal-url", url,
		"--bootstrap-public-url", url); err != nil {
		return err
	}
	if err := l.start("keystone", []string{"OS_KEYSTONE_CONFIG_FILES=" + conf}, nil, syscall.SIGKILL,
		uwsgi(l.keystonePort, LookPath("keystone-wsgi-public"))...); err != nil {
		return err
	}
	err := poll(60*time.Second, 200*time.Millisecond, "keystone", func() error {
		if p := l.proc("keystone"); p.exited() {
			return errors.New("keystone exited: " + p.tail())
		}
		resp, err := l.httpc.Get(l.AuthURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", l.AuthURL, resp.Status)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return l.bootstrapIdentity(context.Background())
}

func (l *CinderLab) startCinder() error {
	conf := l.path("cinder.conf")
	if err := run(nil, nil, LookPath("cinder-manage"), "--config-file", conf, "db", "sync"); err != nil {
		return err
	}
	if err := l.waitPort("rabbitmq", l.amqpPort, 60*time.Second); err != nil {
		return err
	}
	path := "PATH=" + l.path("bin") + ":" + os.Getenv("PATH") + ":/usr/sbin:/sbin"
	err := errors.Join(
		l.start("cinder-scheduler", nil, nil, syscall.SIGKILL, LookPath("cinder-scheduler"), "--config-file", conf),
		l.start("cinder-volume", []string{path}, nil, syscall.SIGKILL, LookPath("cinder-volume"), "--config-file", conf),
		l.start("cinder-api", nil, nil, syscall.SIGKILL, uwsgi(l.cinderPort, LookPath("cinder-wsgi"), "--pyargv", "--config-file "+conf)...),
	)
	if err != nil {
		return err
	}
	return l.waitPort("cinder-api", l.cinderPort, 60*time.Second)
}

// waitCinder waits until the scheduler knows the LVM pool: only then can a
// volume be created.
func (l *CinderLab) waitCinder(ctx context.Context) error {
	return poll(90*time.Second, 250*time.Millisecond, "cinder pool", func() error {
		for _, name := range []string{"cinder-api", "cinder-scheduler", "cinder-volume"} {
			if p := l.proc(name); p.exited() {
				return fmt.Errorf("%s exited: %s", name, p.tail())
			}
		}
		pools, err := l.pools(ctx)
		if err != nil {
			return err
		}
		if len(pools) == 0 {
			return errors.New("no pool reported to the scheduler yet")
		}
		return nil
	})
}

// Close stops every lab process (API servers first, then the services they
// need), removes the volume group's /dev links and the lab's directory.
// Everything is thrown away, so only PostgreSQL gets a graceful (fast)
// shutdown, which releases its shared memory; the rest is killed.
func (l *CinderLab) Close() error {
	stop := func(names ...string) {
		var fns []func() error
		for _, n := range names {
			if p := l.proc(n); p != nil {
				fns = append(fns, func() error { p.stop(5 * time.Second); return nil })
			}
		}
		parallel(fns...)
	}
	stop("cinder-api", "keystone", "cinder-volume", "cinder-scheduler")
	stop("rabbitmq", "postgres")
	stop("epmd")
	if l.tgtd != nil {
		l.tgtd.Stop()
	}
	var errs []error
	if l.VolumeGroup != "" {
		if err := os.RemoveAll(filepath.Join("/dev", l.VolumeGroup)); err != nil {
			errs = append(errs, err)
		}
	}
	if os.Getenv("CINDERLAB_KEEP") != "1" {
		if err := os.RemoveAll(l.dir); err != nil {
			errs = append(errs, err)
		}
	} else {
		fmt.Fprintf(os.Stderr, "cinder lab: kept %s (CINDERLAB_KEEP)\n", l.dir)
	}
	return errors.Join(errs...)
}

// Dir is the lab's directory (configuration, logs, volume files).
func (l *CinderLab) Dir() string { return l.dir }

// Logs returns the end of one lab server's logs ("cinder-volume",
// "cinder-scheduler", "keystone", "uwsgi" for cinder-api's own log, …), for
// a failing test to show.
func (l *CinderLab) Logs(name string) string {
	return tailFile(l.path("logs", name+".log"), 4000) + "\n" + tailFile(l.path("logs", name+".out"), 2000)
}
