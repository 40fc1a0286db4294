package cinder_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/cinder"
	"github.com/cinderport/cinderport/state"
)

// Glance's cinder store options configure the client as they configure
// glance_store.
func ExampleParseGlanceConfig() {
	cfg, err := cinder.ParseGlanceConfig([]byte(`
[glance_store]
cinder_store_auth_address = https://keystone.example:5000/v3
cinder_store_user_name = glance
cinder_store_password = secret
cinder_store_project_name = service
cinder_catalog_info = volumev3::internalURL
cinder_volume_type = images
`), "")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg)
	fmt.Println(cfg.StateTransitionTimeout, cfg.AttachmentRetryAttempts, cfg.Validate() == nil)
	// Output:
	// cinder{auth_url=https://keystone.example:5000/v3 user=glance project=service region= service=volumev3//internalURL endpoint_template= volume_type=images}
	// 5m0s 5 true
}

// A worker builds its client from glance-api.conf and keeps the generated
// initiator name in its journal.
func ExampleNew() {
	ctx := context.Background()
	journal, err := state.Open("/var/lib/cinderport/journal.db", state.Options{})
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := cinder.LoadGlanceConfig("/etc/glance/glance-api.conf", "")
	if err != nil {
		log.Fatal(err)
	}
	client, err := cinder.New(ctx, cfg, cinder.WithHostStore(journal),
		cinder.WithLogger(zerolog.New(os.Stderr)))
	if err != nil {
		log.Fatal(err)
	}
	// client is the runner's jobs.Volumes; the userspace initiator logs in
	// with the connector's name.
	caps, _ := client.Capabilities(ctx)
	fmt.Println(client.Connector().InitiatorName, caps.OnlineExtend)
}
