package cli

import (
	"bytes"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// shippedUnits are the files in systemd/: exactly what `install` generates
// for the standard paths. UPDATE_UNITS=1 rewrites them.
func shippedUnits() map[string]string {
	return map[string]string{
		"tunnel-server.service":  systemdUnit(unitSpec{Name: "tunnel-server", Binary: "/usr/bin/tunnel-server", Description: "Secure TCP tunnel server", Doc: "tunnel-server", Config: "/etc/tunnel/server.hcl", User: "tunnel", LowPort: true}),
		"tunnel-client.service":  systemdUnit(unitSpec{Name: "tunnel-client", Binary: "/usr/bin/tunnel-client", Description: "Secure TCP tunnel client", Doc: "tunnel-client", Config: "/etc/tunnel/client.hcl", User: "tunnel"}),
		"tunnel-client@.service": systemdUnit(unitSpec{Name: "tunnel-client@NAME", Binary: "/usr/bin/tunnel-client", Description: "Secure TCP tunnel client %i", Doc: "tunnel-client", Config: "/etc/tunnel/client-%i.hcl", User: "tunnel"}),
	}
}

// settings are the non-comment lines of a unit fragment.
func settings(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func hasLine(unit, line string) bool {
	for _, l := range strings.Split(unit, "\n") {
		if l == line {
			return true
		}
	}
	return false
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
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		got := string(b)
		// Every hardening line, named, before the whole-file comparison.
		for _, line := range settings(unitHardening) {
			if !hasLine(got, line) {
				t.Errorf("%s lacks the hardening line %q", path, line)
			}
		}
		if got != want {
			t.Errorf("%s differs from what install generates; if the change is meant, put it in service.go and run: UPDATE_UNITS=1 go test ./cmd/internal/cli -run TestShippedUnits", path)
		}
	}
}

// The unit install hands to kardianos/service for a given binary, config
// and user: the agent's command lines, the user, the whole sandbox.
func TestInstallUnit(t *testing.T) {
	for _, tc := range []struct {
		role        Role
		exe, config string
		user, group string
		// as written in the unit
		wantExe, wantConfig string
	}{
		{Client, "/opt/t/tunnel-client", "/srv/c.hcl", "svc", "svcgrp", "/opt/t/tunnel-client", "/srv/c.hcl"},
		{Server, "/usr/local/bin/tunnel-server", "/etc/tunnel/server.hcl", "tunnel", "", "/usr/local/bin/tunnel-server", "/etc/tunnel/server.hcl"},
		{Client, "/opt/my tools/tunnel-client", "/etc/tunnel/50%$x.hcl", "tunnel", "tunnel", `"/opt/my tools/tunnel-client"`, "/etc/tunnel/50%%$$x.hcl"},
	} {
		prog := "tunnel-" + string(tc.role)
		sc, err := serviceConfig(tc.role, prog, serviceOptions{config: tc.config, user: tc.user, group: tc.group, name: prog, exe: tc.exe})
		if err != nil {
			t.Fatal(err)
		}
		if sc.Executable != tc.exe || strings.Join(sc.Arguments, " ") != "run -config "+tc.config || sc.UserName != tc.user {
			t.Errorf("service config: executable %q arguments %q user %q", sc.Executable, sc.Arguments, sc.UserName)
		}
		unit, _ := sc.Option["SystemdScript"].(string)
		if strings.Contains(unit, "{{") {
			t.Errorf("unit contains {{, which kardianos/service would expand")
		}
		group := tc.group
		if group == "" {
			group = tc.user
		}
		want := []string{
			"ExecStart=" + tc.wantExe + " run -config " + tc.wantConfig,
			"ExecStartPre=" + tc.wantExe + " validate -config " + tc.wantConfig,
			"ExecReload=/bin/kill -HUP $MAINPID",
			"Type=notify", "NotifyAccess=all",
			"#   systemctl kill -s USR2 --kill-whom=main " + prog,
			"User=" + tc.user, "Group=" + group,
			"Restart=on-failure", "RestartSec=2", "KillSignal=SIGTERM", "TimeoutStopSec=30",
			"WantedBy=multi-user.target",
		}
		want = append(want, settings(unitHardening)...)
		if tc.role == Server {
			want = append(want, settings(capsLowPort)...)
		} else {
			want = append(want, settings(capsNone)...)
		}
		for _, line := range want {
			if !hasLine(unit, line) {
				t.Errorf("%s unit lacks %q", tc.role, line)
			}
		}
		if tc.role == Client && strings.Contains(unit, "CAP_NET_BIND_SERVICE") {
			t.Error("client unit grants a capability")
		}
		if tc.role == Server && strings.Contains(unit, "PrivateUsers") {
			t.Error("server unit sets PrivateUsers, which voids CAP_NET_BIND_SERVICE")
		}
		if t.Failed() {
			t.Logf("unit:\n%s", unit)
			return
		}
	}
}

func TestSystemdArg(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/tunnel/server.hcl": "/etc/tunnel/server.hcl",
		"/a b/c":                 `"/a b/c"`,
		`/a"b\c`:                 `"/a\"b\\c"`,
		"/100%":                  "/100%%",
		"/$HOME":                 "/$$HOME",
	} {
		if got := systemdArg(in); got != want {
			t.Errorf("systemdArg(%q) = %q, want %q", in, got, want)
		}
	}
	if _, err := serviceConfig(Client, "tunnel-client", serviceOptions{config: "/x\nExecStartPost=/bin/sh", user: "tunnel", name: "tunnel-client", exe: "/usr/bin/tunnel-client"}); err == nil {
		t.Error("a config path with a newline was accepted")
	}
}

// systemd-analyze (Debian's systemd package; no running systemd needed)
// verifies the shipped units and one generated for other paths, and rates
// their exposure, which must be 2.0 or better.
func TestUnitsVerifyAndScore(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	if _, err := os.Stat("/usr/lib/systemd/system/sysinit.target"); err != nil {
		t.Skip("no system units in /usr/lib/systemd/system to verify against")
	}
	root := t.TempDir()
	units := shippedUnits()
	sc, err := serviceConfig(Client, "tunnel-client", serviceOptions{config: "/srv/tunnel/edge 1.hcl", user: "svc", name: "tunnel-client-edge", exe: "/opt/tunnel/tunnel-client"})
	if err != nil {
		t.Fatal(err)
	}
	units["tunnel-client-edge.service"] = sc.Option["SystemdScript"].(string)
	mkfile := func(path, text string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
	// verify checks that the commands exist and are executable.
	for _, bin := range []string{"/usr/bin/tunnel-server", "/usr/bin/tunnel-client", "/opt/tunnel/tunnel-client", "/bin/kill"} {
		mkfile(bin, "#!/bin/sh\n", 0o755)
	}
	// The units' dependencies (sysinit.target, network-online.target...)
	// come from the system's own unit directory.
	sysUnits := filepath.Join(root, "usr", "lib", "systemd")
	if err := os.MkdirAll(sysUnits, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", sysUnits+"/").CombinedOutput(); err != nil {
		t.Fatalf("copy the system's units: %v %s", err, out)
	}
	for name, text := range units {
		mkfile(filepath.Join("etc", "systemd", "system", name), text, 0o644)
	}
	for name := range units {
		unit := strings.Replace(name, "@.service", "@edge.service", 1)
		out, err := exec.Command(analyze, "verify", "--root="+root, "--man=no", unit).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
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

// The command line: usage errors exit 2 before anything else; as a normal
// user every action exits 1 saying root is needed; as root, controlling a
// service that does not exist exits 1 saying so. Nothing here changes the
// system.
func TestServiceCommandErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "client.hcl")
	if err := os.WriteFile(cfg, []byte("server = \"x:1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	absent := "tunnel-test-absent-7f3a"
	type want struct {
		code int
		msg  string
	}
	cases := map[string]want{
		"install":                                             {exitUsage, "-config FILE is required"},
		"install -config " + cfg + " extra":                   {exitUsage, `unexpected argument "extra"`},
		"install -config " + dir + "/none.hcl":                {exitUsage, "no such file"},
		"install -config " + dir:                              {exitUsage, "is a directory"},
		"install -config " + cfg + " -user no-such-user-7f3a": {exitUsage, "no such user"},
		"start -name ../etc/passwd":                           {exitUsage, "-name"},
		"stop -config x":                                      {exitUsage, "flag provided but not defined: -config"},
	}
	if runtime.GOOS == "windows" {
		// No root check there: anything past the flags would reach the
		// service manager.
		delete(cases, "install -config "+cfg+" -user no-such-user-7f3a")
	} else if os.Geteuid() != 0 {
		cases["start"] = want{exitFailure, "must run as root"}
		cases["install -config "+cfg+" -user "+me.Username] = want{exitFailure, "must run as root"}
	} else {
		for _, a := range []string{"start", "stop", "restart", "uninstall"} {
			cases[a+" -name "+absent] = want{exitFailure, "service " + absent + " is not installed (install it: tunnel-client install -config FILE -name " + absent + ")"}
		}
	}
	for line, w := range cases {
		var stdout, stderr bytes.Buffer
		code := Main(Client, strings.Fields(line), &stdout, &stderr)
		if code != w.code || !strings.Contains(stderr.String(), w.msg) {
			t.Errorf("tunnel-client %s: exit %d, stderr %q; want exit %d and %q", line, code, stderr.String(), w.code, w.msg)
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
