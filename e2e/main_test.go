package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Paths of the binaries under test, built once by TestMain.
var (
	serverBin string
	clientBin string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tunnel-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	serverBin = filepath.Join(dir, "tunnel-server")
	clientBin = filepath.Join(dir, "tunnel-client")

	fdsBefore := countFDs()
	code := m.Run()
	if code != 0 {
		return code
	}
	// The equivalent of goleak.VerifyTestMain, which would os.Exit before
	// the binaries are removed.
	if err := goleak.Find(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: goroutines leaked by the tests:", err)
		return 1
	}
	if err := checkFDs(fdsBefore); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return 0
}

// buildBinaries builds both agents with the race detector into dir, from the
// module root.
func buildBinaries(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	gomod, err := goModFile(ctx)
	if err != nil {
		return err
	}
	build := exec.CommandContext(ctx, "go", "build", "-race", "-o", dir+string(filepath.Separator), "./cmd/tunnel-server", "./cmd/tunnel-client")
	build.Dir = filepath.Dir(gomod)
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build the agents: %w\n%s", err, out)
	}
	return nil
}

// goModFile is the path of this module's go.mod.
func goModFile(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD: not inside a module (got %q)", gomod)
	}
	return gomod, nil
}

// countFDs is the number of open file descriptors of this process, or -1
// where /proc is not available.
func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// checkFDs reports descriptors still open after the tests, allowing a few
// seconds for sockets whose close is in flight.
func checkFDs(before int) error {
	if before < 0 {
		return nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		// io.Copy between TCP connections splices through pipes kept in a
		// sync.Pool; they are closed only when the GC drops them.
		runtime.GC()
		runtime.GC()
		now := countFDs()
		if now <= before {
			return nil
		}
		if time.Now().After(deadline) {
			var names []string
			ents, _ := os.ReadDir("/proc/self/fd")
			for _, e := range ents {
				if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil {
					names = append(names, e.Name()+" -> "+target)
				}
			}
			return fmt.Errorf("file descriptors leaked by the tests: %d open before, %d after:\n%s", before, now, strings.Join(names, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
