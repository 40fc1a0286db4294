package local

import (
	"testing"

	"github.com/cinderport/cinderport/cinder/cindertest"
)

// TestConformance runs the suite the Cinder adapter passes against the
// real Cinder.
func TestConformance(t *testing.T) {
	v, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	cindertest.Run(t, v)
	if n := v.Attachments(); n != 0 {
		t.Errorf("%d attachments left", n)
	}
}
