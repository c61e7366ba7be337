package interop

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// buildTimeout bounds `go build -race` of both binaries (cold cache included).
const buildTimeout = 5 * time.Minute

// binDir holds the tunnel-server and tunnel-client binaries built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tunnel-interop-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintf(os.Stderr, "interop: %v\n", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// build compiles both agents with the race detector from within this
// module, so the replace directive points them at the working tree.
func build(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-race", "-o", dir+string(filepath.Separator),
		"github.com/tunnelworks/tunnel/cmd/tunnel-server",
		"github.com/tunnelworks/tunnel/cmd/tunnel-client")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("build agents: %w\n%s", err, out)
	}
	for _, name := range []string{"tunnel-server", "tunnel-client"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("build agents: %w", err)
		}
	}
	return nil
}
