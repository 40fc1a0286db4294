// Package natsembed runs the real nats-server in-process with JetStream:
// the embedded default's queue, and the server of the queue tests (also as
// a 3-node cluster on loopback).
package natsembed

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure one server.
type Options struct {
	// Dir is the JetStream store directory.
	Dir string
	// Host and Port to listen on (default 127.0.0.1, a free port).
	Host string
	Port int
	// Name of the server (default: generated).
	Name string
	// Cluster, when set, joins a cluster: its name, this node's route
	// listen port, and the routes to the other nodes.
	ClusterName string
	ClusterPort int
	Routes      []string
	// TLS, when set, makes clients connect with TLS; with ClientCAs set it
	// also verifies client certificates.
	TLS *tls.Config
}

// Server is a running in-process nats-server.
type Server struct {
	s *server.Server
}

// Start runs a server and waits until it accepts connections.
func Start(o Options) (*Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: o.Name, Host: o.Host, Port: o.Port, JetStream: true, StoreDir: o.Dir,
		NoSigs: true, NoLog: true, MaxPayload: 1 << 20,
	}
	if o.TLS != nil {
		cfg := o.TLS.Clone()
		if cfg.ClientCAs != nil && cfg.ClientAuth == tls.NoClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
		opts.TLS, opts.TLSConfig, opts.TLSVerify = true, cfg, cfg.ClientCAs != nil
		opts.TLSTimeout = 5
	}
	if o.ClusterName != "" {
		opts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
		for _, r := range o.Routes {
			opts.Routes = append(opts.Routes, server.RoutesFromStr(r)...)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("nats-server did not start within 15 s")
	}
	return &Server{s: s}, nil
}

// ClientURL is the URL clients connect to.
func (s *Server) ClientURL() string { return s.s.ClientURL() }

// Name is the server's name (a cluster's nodes are n0, n1, …), as stream
// and bucket infos name their leaders.
func (s *Server) Name() string { return s.s.Name() }

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.s.Shutdown()
	s.s.WaitForShutdown()
}

// Cluster is several servers routed together on loopback.
type Cluster struct {
	Servers []*Server
	opts    []Options
}

// StartCluster runs n JetStream servers in one cluster, with store
// directories dir/n0, dir/n1, …, and waits until JetStream has a leader.
func StartCluster(dir string, n int) (*Cluster, error) {
	c := &Cluster{}
	ports := make([]int, n)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	for i := range n {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(p))
			}
		}
		o := Options{Dir: fmt.Sprintf("%s/n%d", dir, i), Name: fmt.Sprintf("n%d", i), ClusterName: "cinderport", ClusterPort: ports[i], Routes: routes}
		c.opts = append(c.opts, o)
	}
	// Servers start concurrently: each waits for its routes.
	errs := make(chan error, n)
	c.Servers = make([]*Server, n)
	for i := range n {
		go func() {
			s, err := Start(c.opts[i])
			c.Servers[i] = s
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			c.Shutdown()
			return nil, err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c.Servers[0].s.JetStreamIsCurrent() && c.Servers[0].s.JetStreamIsClustered() {
			for _, s := range c.Servers {
				if s.s.JetStreamIsLeader() {
					return c, nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Shutdown()
	return nil, fmt.Errorf("JetStream cluster elected no leader within 30 s")
}

// URLs are the client URLs of every node, comma separated.
func (c *Cluster) URLs() string {
	var u string
	for i, s := range c.Servers {
		if s == nil {
			continue
		}
		if i > 0 {
			u += ","
		}
		u += s.ClientURL()
	}
	return u
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for _, s := range c.Servers {
		if s != nil {
			s.Shutdown()
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
