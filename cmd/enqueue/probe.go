package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// probe is a health check for images without a shell: GET the URL, exit 0
// on 200.
func (c *cli) probe(ctx context.Context, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(c.stderr, "enqueue probe: give one URL")
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		return c.fail("probe: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c.fail("probe: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.fail("probe %s: %s", args[0], resp.Status)
	}
	return exitOK
}
