package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The agents build with our patched copy of yamux (third_party/yamux,
// PATCHED.md), which changes who writes a frame, not the bytes. An agent
// built with upstream hashicorp/yamux v0.1.2 must work with ours either
// way round: bulk both ways at once on one stream, half-close, every byte.
func TestPeersOnUpstreamYamux(t *testing.T) {
	t.Parallel()
	upServer, upClient := buildWithUpstreamYamux(t)
	cases := []struct {
		name           string
		server, client string
	}{
		{"upstream client, our server", serverBin, upClient},
		{"our client, upstream server", upServer, clientBin},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkBulkBothWays(t, 16<<20, tc.server, tc.client)
		})
	}
}

// buildWithUpstreamYamux builds both agents (with -race, like the others)
// from this module without its yamux replace directive, through a copy of
// go.mod and go.sum (-modfile), so the module proxy's v0.1.2 is used.
func buildWithUpstreamYamux(t *testing.T) (server, client string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	gomod, err := goModFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(gomod)
	dir := t.TempDir()
	modfile := filepath.Join(dir, "go.mod")
	for _, f := range []struct{ from, to string }{{gomod, modfile}, {filepath.Join(root, "go.sum"), filepath.Join(dir, "go.sum")}} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.to, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("mod", "edit", "-modfile="+modfile, "-dropreplace=github.com/hashicorp/yamux")
	bin := filepath.Join(dir, "bin")
	// The tag swaps mux's uses of our patch's API (Stream.Reset, the
	// stream cap) for upstream's nearest (mux/yamux_upstream.go): what is
	// tested here is the wire.
	run("build", "-race", "-tags=upstreamyamux", "-modfile="+modfile, "-mod=mod", "-o", bin+string(filepath.Separator), "./cmd/tunnel-server", "./cmd/tunnel-client")
	// The build must really have taken yamux from the module cache.
	list := exec.CommandContext(ctx, "go", "list", "-modfile="+modfile, "-mod=mod", "-f", "{{.Version}} {{.Replace}}", "-m", "github.com/hashicorp/yamux")
	list.Dir = root
	listed, err := list.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, listed)
	}
	if got := strings.TrimSpace(string(listed)); got != "v0.1.2 <nil>" {
		t.Fatalf("upstream build: yamux is %q, want v0.1.2 without a replace", got)
	}
	return filepath.Join(bin, "tunnel-server"), filepath.Join(bin, "tunnel-client")
}
