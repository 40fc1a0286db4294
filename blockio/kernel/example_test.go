package kernel_test

import (
	"context"
	"fmt"

	"github.com/rs/zerolog"

	"github.com/cinderport/cinderport/blockio"
	"github.com/cinderport/cinderport/blockio/kernel"
	"github.com/cinderport/cinderport/jobs"
)

// A worker started with --connector kernel routes Cinder's iSCSI volumes
// to the kernel initiator.
func ExampleNewConnector() {
	conn, err := kernel.NewConnector(kernel.Config{Log: zerolog.Nop()})
	if err != nil {
		fmt.Println(err)
		return
	}
	router := blockio.Router{"local": blockio.FileConnector{}, "iscsi": conn}
	_, err = router.Connect(context.Background(), jobs.Connection{Driver: "rbd"}, jobs.ReadWrite)
	fmt.Println(err, jobs.IsPermanent(err))
	// Output: no connector for "rbd" volumes on this worker true
}
