package iscsi_test

import (
	"encoding/json"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/blockio/iscsi"
)

// A worker started with --connector userspace routes Cinder's iSCSI
// volumes to the built-in initiator; the initiator name comes from its
// configuration.
func ExampleNewConnector() {
	conn, err := iscsi.NewConnector(iscsi.Config{
		InitiatorName: "iqn.2026-11.io.cinderport:worker-1",
		Log:           zerolog.Nop(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	router := blockio.Router{"local": blockio.FileConnector{}, "iscsi": conn}
	fmt.Println(len(router))
	// Output: 2
}

// Connection info arrives from Cinder as JSON: numbers may be JSON
// numbers or strings, and the multipath lists pair up by index.
func ExampleParseConnection() {
	var data map[string]any
	json.Unmarshal([]byte(`{
		"target_portal": "192.0.2.10:3260", "target_iqn": "iqn.2010-10.org.openstack:volume-1", "target_lun": 1,
		"target_portals": ["192.0.2.10:3260", "192.0.2.11"], "target_iqns": ["iqn.2010-10.org.openstack:volume-1", "iqn.2010-10.org.openstack:volume-1"],
		"target_luns": ["1", 1],
		"auth_method": "CHAP", "auth_username": "u", "auth_password": "never printed"}`), &data)
	info, err := iscsi.ParseConnection(data)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, p := range info.Paths {
		fmt.Println(p)
	}
	fmt.Println(info.Auth)
	// Output:
	// 192.0.2.10:3260/iqn.2010-10.org.openstack:volume-1/1
	// 192.0.2.11/iqn.2010-10.org.openstack:volume-1/1
	// auth{chap user=u}
}
