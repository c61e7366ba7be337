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

// build compiles both agents with the race detector in the main module
// (the directory above), with its own go.mod and go.sum: the binaries are
// exactly what the project ships, whatever this module requires.
func build(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-race", "-o", dir+string(filepath.Separator),
		"./cmd/tunnel-server", "./cmd/tunnel-client")
	cmd.Dir = ".."
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
