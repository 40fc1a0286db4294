package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cinderport/cinderport/internal/envflag"
	"github.com/cinderport/cinderport/jobs/httpapi"
)

// downloadKeyFile is the name of the signing key file in a worker's data
// directory.
const downloadKeyFile = "download.key"

// authFlags adds the flags that authenticate downloads.
func (c *cli) authFlags(fs *envflag.Set) {
	fs.String(&c.keyFile, "download-key-file", "", "file with the workers' download signing key (default: the embedded worker's, in --data-dir)")
	fs.String(&c.authToken, "auth-token", "", "a Keystone token to download with, instead of a signed URL (env CINDERPORT_AUTH_TOKEN)")
	fs.Duration(&c.urlTTL, "url-ttl", time.Hour, "how long a signed download URL stays valid")
}

// signer returns the download URL signer from --download-key-file, or from
// the embedded worker's data directory.
func (c *cli) signer() (httpapi.SignedURLs, error) {
	path := c.keyFile
	if path == "" {
		path = filepath.Join(c.dataDir, downloadKeyFile)
		if _, err := os.Stat(path); err != nil {
			return httpapi.SignedURLs{}, errors.New("no download credentials: pass --download-key-file or --auth-token")
		}
	}
	keys, err := httpapi.LoadKeys(path)
	if err != nil {
		return httpapi.SignedURLs{}, err
	}
	return httpapi.SignedURLs{Keys: keys}, nil
}

// imageURL is the worker's download URL of volumeID, signed unless a
// token authenticates the request instead.
func (c *cli) imageURL(volumeID string, signed bool) (string, error) {
	u := strings.TrimRight(c.workerURL, "/") + httpapi.ImagePath(volumeID)
	if !signed {
		return u, nil
	}
	s, err := c.signer()
	if err != nil {
		return "", err
	}
	ttl := c.urlTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	q, err := s.Sign(volumeID, time.Now().Add(ttl))
	if err != nil {
		return "", err
	}
	return u + "?" + q, nil
}

// downloadRequest builds the authenticated GET of volumeID's image.
func (c *cli) downloadRequest(ctx context.Context, volumeID string) (*http.Request, error) {
	u, err := c.imageURL(volumeID, c.authToken == "")
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if c.authToken != "" {
		req.Header.Set("X-Auth-Token", c.authToken)
	}
	return req, nil
}

// httpClient is the client for workers' HTTP APIs: the default one, or one
// that trusts --worker-tls-ca.
func (c *cli) httpClient() (*http.Client, error) {
	if c.workerCA == "" {
		return http.DefaultClient, nil
	}
	pem, err := os.ReadFile(c.workerCA)
	if err != nil {
		return nil, fmt.Errorf("--worker-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--worker-tls-ca: no certificate in %s", c.workerCA)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}

// signURL prints a signed download URL: what a Glance plugin or any HTTP
// client needs to read an image without credentials of its own.
func (c *cli) signURL(ctx context.Context, args []string) int {
	fa := &flagsWithArgs{Set: c.flags("sign-url", "sign-url VOLUME_ID [--url-ttl 1h] [flags]")}
	c.authFlags(fa.Set)
	if err := fa.Parse(args); err != nil {
		return exitUsage
	}
	if fa.NArg() != 1 {
		fmt.Fprintln(c.stderr, "enqueue sign-url: give one VOLUME_ID")
		return exitUsage
	}
	if c.urlTTL <= 0 {
		fmt.Fprintln(c.stderr, "enqueue sign-url: --url-ttl must be positive")
		return exitUsage
	}
	if err := c.resolve(); err != nil && c.workerURL == "" {
		return c.fail("%v", err)
	}
	if c.workerURL == "" {
		return c.fail("no worker URL: pass --worker-url or run an embedded worker")
	}
	u, err := c.imageURL(fa.Arg(0), true)
	if err != nil {
		return c.fail("%v", err)
	}
	fmt.Fprintln(c.stdout, u)
	return exitOK
}
