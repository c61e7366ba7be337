package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// commands is every command and subcommand of both binaries.
var commands = []string{
	"run", "validate", "status", "demo", "version",
	"install", "uninstall", "start", "stop", "restart",
	"cert", "cert ca", "cert ca create", "cert ca intermediate",
	"cert issue", "cert revoke", "cert inspect",
}

func call(role Role, args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	code = Main(role, args, &out, &errb)
	return out.String(), errb.String(), code
}

// Asking any command for help prints its usage to stdout and exits 0,
// however it is asked; nothing goes to stderr.
func TestHelpOnEveryCommand(t *testing.T) {
	for _, role := range []Role{Server, Client} {
		prog := "tunnel-" + string(role)
		for _, cmd := range commands {
			words := strings.Fields(cmd)
			for _, args := range [][]string{
				append(words[:len(words):len(words)], "-h"),
				append(words[:len(words):len(words)], "--help"),
				append(words[:len(words):len(words)], "-help"),
				append([]string{"help"}, words...),
			} {
				out, errs, code := call(role, args...)
				if code != exitOK || errs != "" || !strings.HasPrefix(out, "usage: "+prog+" "+cmd+" ") {
					t.Errorf("%s %s: exit %d, stdout %q, stderr %q; want exit 0 and the usage of %q on stdout", prog, strings.Join(args, " "), code, out, errs, cmd)
				}
			}
		}
		for _, args := range [][]string{{"-h"}, {"--help"}, {"-help"}, {"help"}} {
			out, errs, code := call(role, args...)
			if code != exitOK || errs != "" || !strings.HasPrefix(out, "usage: "+prog+" <command>") {
				t.Errorf("%s %v: exit %d, stdout %q, stderr %q", prog, args, code, out, errs)
			}
		}
	}
}

// Every command the top-level usage lists has its own help, and the other
// way round: the list in this test is the binary's.
func TestUsageListsEveryCommand(t *testing.T) {
	out, _, _ := call(Server, "--help")
	for _, cmd := range commands {
		if first := strings.Fields(cmd)[0]; !strings.Contains(out, "  "+first) && !strings.Contains(out, "| "+first) {
			t.Errorf("usage does not list %q:\n%s", first, out)
		}
	}
	certOut, _, _ := call(Server, "cert", "help")
	for _, cmd := range commands {
		if sub, ok := strings.CutPrefix(cmd, "cert "); ok && !strings.Contains(certOut, "\n  "+sub+" ") && sub != "ca" {
			t.Errorf("cert help does not list %q:\n%s", sub, certOut)
		}
	}
}

// A flag's usage shows its default, so an operator need not guess it.
func TestHelpShowsDefaults(t *testing.T) {
	out, _, _ := call(Server, "cert", "revoke", "-h")
	if !strings.Contains(out, "(default 7)") || !strings.Contains(out, `(default "unspecified")`) {
		t.Errorf("cert revoke -h lacks its defaults:\n%s", out)
	}
}

func TestVersionFlag(t *testing.T) {
	for _, role := range []Role{Server, Client} {
		for _, arg := range []string{"--version", "-version", "version"} {
			out, errs, code := call(role, arg)
			if code != exitOK || errs != "" || !strings.HasPrefix(out, "tunnel-"+string(role)+" ") || !strings.Contains(out, "protocol") {
				t.Errorf("%s %s: exit %d, stdout %q, stderr %q", role, arg, code, out, errs)
			}
		}
	}
}

// Mistakes still exit 2 with the reason on stderr and nothing on stdout.
func TestUsageMistakes(t *testing.T) {
	cases := map[string]string{
		"":                  "usage: tunnel-server <command>",
		"bogus":             `unknown command "bogus"`,
		"run":               "-config FILE is required",
		"run -bogus":        "flag provided but not defined: -bogus",
		"run -config a b":   `unexpected argument "b"`,
		"run server.hcl":    `unexpected argument "server.hcl" (the config file goes after -config: -config server.hcl)`,
		"version extra":     `unexpected argument "extra"`,
		"demo extra":        "takes no arguments",
		"status":            "give -config FILE or -admin HOST:PORT",
		"cert":              "usage: tunnel-server cert <command>",
		"cert ca":           "cert ca: which one? create or intermediate",
		"cert ca bogus":     `unknown command "ca bogus"`,
		"cert issue -bogus": "flag provided but not defined: -bogus",
		"cert inspect":      "want exactly one FILE",
	}
	for line, want := range cases {
		out, errs, code := call(Server, strings.Fields(line)...)
		if code != exitUsage || out != "" || !strings.Contains(errs, want) {
			t.Errorf("tunnel-server %s: exit %d, stdout %q, stderr %q; want exit 2 and %q", line, code, out, errs, want)
		}
	}
}

// Every way a config fails to load names the program first, as run does,
// and the other agent's config is called what it is.
func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	clientCfg := write("client.hcl", "server = \"tunnel.example.net:8443\"\ntls {\n  cert = \"a.crt\"\n  key = \"a.key\"\n  ca = \"ca.crt\"\n}\n")
	serverCfg := write("server.hcl", "listen = \"0.0.0.0:8443\"\ntls {\n  cert = \"a.crt\"\n  key = \"a.key\"\n  ca = \"ca.crt\"\n}\n")
	missing := filepath.Join(dir, "missing.hcl")
	for _, cmd := range []string{"validate", "run", "status"} {
		for _, tc := range []struct {
			role      Role
			cfg, want string
		}{
			{Server, missing, "tunnel-server: load server config: open " + missing},
			{Client, missing, "tunnel-client: load client config: open " + missing},
			{Server, clientCfg, "tunnel-server: " + clientCfg + " looks like a tunnel-client config (it sets server, not listen)"},
			{Client, serverCfg, "tunnel-client: " + serverCfg + " looks like a tunnel-server config (it sets listen, not server)"},
		} {
			if cmd == "status" {
				tc.want = strings.Replace(tc.want, ": ", " status: ", 1)
			}
			_, errs, code := call(tc.role, cmd, "-config", tc.cfg)
			if code != exitUsage || !strings.HasPrefix(errs, tc.want) {
				t.Errorf("%s %s -config %s: exit %d, stderr %q; want exit 2 and a first line %q", tc.role, cmd, tc.cfg, code, errs, tc.want)
			}
		}
	}
	// A config of the right side with a mistake gets no such line.
	broken := write("broken.hcl", "listen = \"0.0.0.0:8443\"\nbogus = 1\n")
	if _, errs, _ := call(Server, "validate", "-config", broken); strings.Contains(errs, "looks like") || !strings.Contains(errs, "bogus") {
		t.Errorf("validate of a broken server config: %q", errs)
	}
}
