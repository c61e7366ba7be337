package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The shipped units are exactly what `install` generates for the standard
// paths: one source for the hardening. UPDATE_UNITS=1 rewrites them.
func shippedUnits() map[string]string {
	return map[string]string{
		"tunnel-server.service":  systemdUnit(unitSpec{Binary: "/usr/bin/tunnel-server", Description: "Secure TCP tunnel server", Doc: "tunnel-server", Config: "/etc/tunnel/server.hcl", User: "tunnel", LowPort: true}),
		"tunnel-client.service":  systemdUnit(unitSpec{Binary: "/usr/bin/tunnel-client", Description: "Secure TCP tunnel client", Doc: "tunnel-client", Config: "/etc/tunnel/client.hcl", User: "tunnel"}),
		"tunnel-client@.service": systemdUnit(unitSpec{Binary: "/usr/bin/tunnel-client", Description: "Secure TCP tunnel client %i", Doc: "tunnel-client", Config: "/etc/tunnel/client-%i.hcl", User: "tunnel"}),
	}
}

func TestShippedUnitsMatchGenerated(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "systemd")
	for name, want := range shippedUnits() {
		path := filepath.Join(dir, name)
		if os.Getenv("UPDATE_UNITS") != "" {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s differs from what install generates (run UPDATE_UNITS=1 go test ./cmd/internal/cli -run TestShippedUnits)", path)
		}
	}
}

func TestGeneratedUnit(t *testing.T) {
	u := systemdUnit(unitSpec{Binary: "/opt/t/tunnel-client", Description: "d", Doc: "tunnel-client", Config: "/srv/c.hcl", User: "svc"})
	for _, line := range []string{
		"ExecStart=/opt/t/tunnel-client run -config /srv/c.hcl",
		"ExecStartPre=/opt/t/tunnel-client validate -config /srv/c.hcl",
		"ExecReload=/bin/kill -HUP $MAINPID",
		"User=svc", "Group=svc", "Restart=on-failure", "CapabilityBoundingSet=\n",
		"ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
	} {
		if !strings.Contains(u, line) {
			t.Errorf("generated unit lacks %q", line)
		}
	}
	if strings.Contains(u, "CAP_NET_BIND_SERVICE") {
		t.Error("client unit grants a capability")
	}
	s := systemdUnit(unitSpec{Binary: "/usr/bin/tunnel-server", Config: "/etc/tunnel/server.hcl", User: "tunnel", LowPort: true})
	if !strings.Contains(s, "AmbientCapabilities=CAP_NET_BIND_SERVICE") {
		t.Error("server unit cannot bind port 179")
	}
}

// systemd-analyze (Debian's systemd package; no running systemd needed)
// verifies the units and rates their exposure, which must be 2.0 or better.
func TestUnitsVerifyAndScore(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	root := t.TempDir()
	for _, bin := range []string{"/usr/bin/tunnel-server", "/usr/bin/tunnel-client", "/bin/kill"} {
		p := filepath.Join(root, bin)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
	}
	// The units' dependencies (sysinit.target, network-online.target...)
	// come from the system's own unit directory.
	sysUnits := filepath.Join(root, "usr", "lib", "systemd", "system")
	os.MkdirAll(sysUnits, 0o755)
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system/.", sysUnits+"/").CombinedOutput(); err != nil {
		t.Fatalf("copy the system's units: %v %s", err, out)
	}
	unitDir := filepath.Join(root, "etc", "systemd", "system")
	os.MkdirAll(unitDir, 0o755)
	for name, text := range shippedUnits() {
		os.WriteFile(filepath.Join(unitDir, name), []byte(text), 0o644)
	}
	for name := range shippedUnits() {
		unit := name
		if strings.HasSuffix(name, "@.service") {
			unit = strings.Replace(name, "@.service", "@edge.service", 1)
		}
		out, err := exec.Command(analyze, "verify", "--root="+root, "--man=no", unit).CombinedOutput()
		if err != nil || strings.Contains(string(out), "Unknown key") || strings.Contains(string(out), "Invalid") {
			t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
		out, err = exec.Command(analyze, "security", "--offline=yes", "--root="+root, "--threshold=20", unit).CombinedOutput()
		if err != nil {
			t.Errorf("systemd-analyze security %s: exposure above 2.0 (%v)\n%s", unit, err, lastLines(string(out), 3))
		} else {
			t.Logf("%s: %s", unit, lastLines(string(out), 1))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
