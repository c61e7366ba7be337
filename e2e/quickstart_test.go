package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// The README's Quick start, walked as an operator would: the scripts in
// testdata/quickstart run the built agents (on PATH, as the README
// assumes) with the README's commands and its two configs. Setup writes
// the configs from README.md itself, changing only the addresses (free
// loopback ports, echo targets standing in for BGP and ssh), and
// TestQuickstartScriptIsTheReadme keeps readme.txtar's commands equal to
// the README's, so the README cannot drift from what works.
func TestQuickstart(t *testing.T) {
	t.Parallel()
	srvHCL, cliHCL, _ := readmeQuickstart(t)
	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "quickstart"),
		Setup: func(env *testscript.Env) error {
			env.Setenv("PATH", filepath.Dir(serverBin)+string(os.PathListSeparator)+env.Getenv("PATH"))
			return quickstartSetup(env, srvHCL, cliHCL)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"roundtrip": cmdRoundtrip,
		},
		RequireExplicitExec: true,
	})
}

// quickstartSetup writes server/server.hcl and client/client.hcl, the
// README's configs with their addresses changed, and starts the echo
// targets of the two services.
func quickstartSetup(env *testscript.Env, srvHCL, cliHCL string) error {
	bgp, err := startGreetingEcho(env, "bgp")
	if err != nil {
		return err
	}
	ssh, err := startGreetingEcho(env, "ssh")
	if err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	tunnel, serverFwd, clientFwd := ports[0], ports[1], ports[2]
	env.Setenv("SERVER_FORWARD", serverFwd) // edge-ssh: 127.0.0.1:2222 in the README
	env.Setenv("CLIENT_FORWARD", clientFwd) // bgp: 127.0.0.1:1179 in the README
	srv, err := substitute(srvHCL, "server.hcl",
		`"0.0.0.0:8443"`, quote(tunnel),
		`"127.0.0.1:179"`, quote(bgp),
		`"127.0.0.1:2222"`, quote(serverFwd))
	if err != nil {
		return err
	}
	cli, err := substitute(cliHCL, "client.hcl",
		`"tunnel.example.net:8443"`, quote(tunnel),
		// tunnel.example.net does not resolve here: dial the address and
		// check the certificate's name as the client would after DNS.
		"tls {\n", "tls {\n  server_name = \"tunnel.example.net\"\n",
		`"127.0.0.1:1179"`, quote(clientFwd),
		`"127.0.0.1:22"`, quote(ssh))
	if err != nil {
		return err
	}
	for dir, text := range map[string]string{"server/server.hcl": srv, "client/client.hcl": cli} {
		p := filepath.Join(env.WorkDir, dir)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func quote(s string) string { return `"` + s + `"` }

// substitute replaces each old with its new in text; each old must occur
// exactly once, or the README has changed under the test.
func substitute(text, name string, oldNew ...string) (string, error) {
	for i := 0; i+1 < len(oldNew); i += 2 {
		if n := strings.Count(text, oldNew[i]); n != 1 {
			return "", fmt.Errorf("README's %s holds %q %d times, want once: update quickstart_test.go with the README", name, oldNew[i], n)
		}
		text = strings.Replace(text, oldNew[i], oldNew[i+1], 1)
	}
	return text, nil
}

// freePorts returns n loopback addresses free a moment ago.
func freePorts(n int) ([]string, error) {
	var out []string
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}

// startGreetingEcho runs an echo server that first writes "name: ", so a
// round trip shows which target it reached. It stops when the script ends.
func startGreetingEcho(env *testscript.Env, name string) (string, error) {
	addr, stop, err := serveTarget(func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(waitLimit))
		if _, err := io.WriteString(c, name+": "); err == nil {
			_, _ = io.Copy(c, c)
		}
	})
	if err != nil {
		return "", err
	}
	env.Defer(stop)
	return addr, nil
}

// cmdRoundtrip: roundtrip ADDR NAME connects to ADDR, sends a line and
// expects it back from the echo target NAME, retrying while the tunnel
// comes up (bounded by waitLimit).
func cmdRoundtrip(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: roundtrip ADDR NAME")
	}
	addr, name := args[0], args[1]
	line := fmt.Sprintf("a byte through the tunnel to %s at %s", name, time.Now().Format(time.RFC3339Nano))
	want := name + ": " + line
	deadline := time.Now().Add(waitLimit)
	var last error
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		got, err := roundtrip(addr, line, deadline)
		if err == nil && got == want {
			ts.Logf("roundtrip %s: %q", addr, got)
			return
		}
		if err == nil {
			err = fmt.Errorf("got %q, want %q", got, want)
		}
		last = err
	}
	ts.Fatalf("roundtrip %s: no echo from %s within %s: %v", addr, name, waitLimit, last)
}

func roundtrip(addr, line string, deadline time.Time) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w (after %q)", err, got)
	}
	return strings.TrimSuffix(got, "\n"), nil
}

// readmeQuickstart returns the README Quick start's server.hcl and
// client.hcl, and its agent commands in order (each `a && b` as two).
func readmeQuickstart(t testing.TB) (serverHCL, clientHCL string, commands []string) {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## Quick start")
	if start < 0 {
		t.Fatal("README has no Quick start section")
	}
	text = text[start+1:]
	if end := strings.Index(text, "\n## "); end >= 0 {
		text = text[:end]
	}
	// Each fenced block, with the last line of text before it (`server.hcl`:).
	var label, lang, body string
	inBlock := false
	for line := range strings.Lines(text) {
		switch {
		case !inBlock && strings.HasPrefix(line, "```"):
			inBlock, lang, body = true, strings.TrimSpace(strings.TrimPrefix(line, "```")), ""
		case !inBlock:
			if l := strings.TrimSpace(line); l != "" {
				label = l
			}
		case strings.TrimSpace(line) != "```":
			body += line
		default:
			inBlock = false
			switch {
			case lang == "hcl" && label == "`server.hcl`:":
				serverHCL = body
			case lang == "hcl" && label == "`client.hcl`:":
				clientHCL = body
			case lang == "sh":
				for l := range strings.Lines(body) {
					l, _, _ = strings.Cut(l, "#")
					for cmd := range strings.SplitSeq(l, "&&") {
						cmd = strings.Join(strings.Fields(cmd), " ")
						if strings.HasPrefix(cmd, "tunnel-server ") || strings.HasPrefix(cmd, "tunnel-client ") {
							commands = append(commands, cmd)
						}
					}
				}
			}
			label = ""
		}
	}
	if serverHCL == "" || clientHCL == "" || len(commands) == 0 {
		t.Fatalf("README's Quick start: found server.hcl %t, client.hcl %t, %d commands; the test reads the blocks after the lines \"`server.hcl`:\" and \"`client.hcl`:\" and the tunnel-* lines of the sh blocks",
			serverHCL != "", clientHCL != "", len(commands))
	}
	return serverHCL, clientHCL, commands
}

// scriptCommands returns the agent commands a testscript file runs
// (`exec tunnel-…`, without a background marker), in order.
func scriptCommands(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "-- ") {
			break // the files of the archive
		}
		cmd, ok := strings.CutPrefix(strings.TrimSpace(line), "exec ")
		if !ok || !strings.HasPrefix(cmd, "tunnel-") {
			continue
		}
		cmd = regexp.MustCompile(`\s+&(\w+&)?$`).ReplaceAllString(cmd, "")
		out = append(out, strings.Join(strings.Fields(cmd), " "))
	}
	if len(out) == 0 {
		return nil, errors.New("no exec tunnel-… lines")
	}
	return out, nil
}

// readme.txtar runs the README's commands, all of them and nothing else,
// in the README's order.
func TestQuickstartScriptIsTheReadme(t *testing.T) {
	t.Parallel()
	_, _, want := readmeQuickstart(t)
	got, err := scriptCommands(filepath.Join("testdata", "quickstart", "readme.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("testdata/quickstart/readme.txtar runs\n\t%s\nthe README's Quick start says\n\t%s\n(change both together)",
			strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
	}
}
