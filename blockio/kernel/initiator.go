package kernel

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// DefaultInitiatorFile is where open-iscsi keeps the host's initiator name.
const DefaultInitiatorFile = "/etc/iscsi/initiatorname.iscsi"

// InitiatorName reads the host's initiator name from an open-iscsi
// initiatorname file ("InitiatorName=iqn…"; comments and blank lines
// ignored): the name Cinder must be given as this host's connector when
// volumes attach through the kernel. It fails when the file is missing or
// names none.
func InitiatorName(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kernel connector: initiator name: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if v, ok := strings.CutPrefix(line, "InitiatorName="); ok && strings.TrimSpace(v) != "" {
			return strings.TrimSpace(v), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("kernel connector: initiator name: %w", err)
	}
	return "", fmt.Errorf("kernel connector: %s names no initiator", path)
}
