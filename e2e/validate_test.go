package e2e

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// validate runs `bin validate -config cfg` and returns its exit code and output.
func validate(t *testing.T, bin, cfg string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "validate", "-config", cfg)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("validate did not finish within %s", waitLimit)
	}
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("run validate: %v", err)
		}
	}
	return cmd.ProcessState.ExitCode(), out.String(), errb.String()
}

func TestValidate(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	goodCert, goodKey := p.clientCert(t, "client-a", pki.Options{})

	t.Run("good server config", func(t *testing.T) {
		t.Parallel()
		cfg := writeConfig(t, "server.hcl", serverHCL(p.serverCert, p.serverKey, p.caFile, `handshake_timeout = "2s"`,
			[]svc{{name: "echo", target: "127.0.0.1:7", allow: []string{"client-a"}}},
			[]fwd{{name: "back", client: "client-a", service: "echo-back"}}))
		code, stdout, stderr := validate(t, serverBin, cfg)
		if code != 0 || !strings.Contains(stdout, "ok") || !strings.Contains(stdout, "tunnel-server") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and ok", code, stdout, stderr)
		}
		t.Log(strings.TrimSpace(stdout))
	})
	t.Run("good client config", func(t *testing.T) {
		t.Parallel()
		cfg := writeConfig(t, "client.hcl", clientHCL("127.0.0.1:8443", goodCert, goodKey, p.caFile, `dial_timeout = "3s"`,
			[]fwd{{name: "echo", service: "echo"}}, []svc{{name: "echo-back", target: "127.0.0.1:7"}}))
		code, stdout, stderr := validate(t, clientBin, cfg)
		if code != 0 || !strings.Contains(stdout, "ok") || !strings.Contains(stdout, "client-a") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and ok", code, stdout, stderr)
		}
		t.Log(strings.TrimSpace(stdout))
	})
	t.Run("several mistakes", func(t *testing.T) {
		t.Parallel()
		// One mistake per line, on the lines named in want.
		text := strings.Join([]string{
			`listen = "127.0.0.1:99999"`, // 1
			`handshake_timeout = 5`,      // 2
			`lgo_level = "debug"`,        // 3
			`tls {`,                      // 4
			`  cert = "` + p.serverCert + `"`,
			`  key  = "` + p.serverKey + `"`,
			`  ca   = "` + p.caFile + `"`,
			`}`,
			`service "echo" {`,       // 9
			`  target = "127.0.0.1"`, // 10
			`}`,
			`forward "back" {`, // 12
			`  listen  = "127.0.0.1:0"`,
			`  service = "echo-back"`,
			`}`,
		}, "\n") + "\n"
		cfg := writeConfig(t, "bad.hcl", text)
		code, stdout, stderr := validate(t, serverBin, cfg)
		if code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
		if strings.Contains(stdout, "ok") {
			t.Errorf("stdout says ok: %q", stdout)
		}
		want := []struct{ line, says string }{
			{"bad.hcl:1:", "out of range"},
			{"bad.hcl:2:", `"10s"`},
			{"bad.hcl:3:", "log_level"},
			{"bad.hcl:9:", "allow"},
			{"bad.hcl:10:", "missing port"},
			{"bad.hcl:12:", "client"},
		}
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		for _, w := range want {
			found := false
			for _, l := range lines {
				if strings.Contains(l, w.line) && strings.Contains(l, w.says) {
					found = true
				}
			}
			if !found {
				t.Errorf("no problem reported at %s saying %q", w.line, w.says)
			}
		}
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr)
		} else {
			t.Logf("%d problems:\n%s", len(lines), stderr)
		}
	})
	t.Run("expired certificate", func(t *testing.T) {
		t.Parallel()
		cert, key := p.clientCert(t, "client-old", pki.Options{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
		cfg := writeConfig(t, "client.hcl", clientHCL("127.0.0.1:8443", cert, key, p.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil))
		code, stdout, stderr := validate(t, clientBin, cfg)
		if code != 2 || !strings.Contains(stderr, "expired") || !strings.Contains(stderr, "client-old") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 2 and the certificate reported expired", code, stdout, stderr)
		}
		t.Log(strings.TrimSpace(stderr))
	})
	t.Run("expired certificate beside a broken CA bundle", func(t *testing.T) {
		t.Parallel()
		// Both named in one run: the bundle that cannot be loaded does
		// not hide what is wrong with the certificate.
		cert, key := p.clientCert(t, "client-older", pki.Options{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
		cfg := writeConfig(t, "client.hcl", clientHCL("127.0.0.1:8443", cert, key, key, "", []fwd{{name: "echo", service: "echo"}}, nil))
		code, stdout, stderr := validate(t, clientBin, cfg)
		if code != 2 || !strings.Contains(stderr, "expired") || !strings.Contains(stderr, "no CERTIFICATE blocks") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 2, the bundle and the expired certificate both reported", code, stdout, stderr)
		}
		t.Log(strings.TrimSpace(stderr))
	})
}

// Each side's tls.ca is the bundle the PEER's certificate must chain to: a
// server certificate from one CA and client certificates from another, each
// side trusting the other's CA, is a setup that runs, and `validate && run`
// must accept it.
func TestValidateTwoCAs(t *testing.T) {
	t.Parallel()
	a, b := newPKI(t), newPKI(t) // a issues the server's certificate, b the clients'
	cert, key := b.clientCert(t, "client-a", pki.Options{})
	target := startEcho(t)
	srvText := serverHCL(a.serverCert, a.serverKey, b.caFile, "", []svc{{name: "echo", target: target, allow: []string{"client-a"}}}, nil)
	code, stdout, stderr := validate(t, serverBin, writeConfig(t, "server.hcl", srvText))
	if code != 0 || !strings.Contains(stdout, "ok") || !strings.Contains(stdout, "note:") || strings.Contains(stdout+stderr, "peer's") {
		t.Fatalf("server validate: exit %d, stdout %q, stderr %q; want 0, ok and a note", code, stdout, stderr)
	}
	t.Log(strings.TrimSpace(stdout))
	srv := startServer(t, srvText)
	defer srv.stop(t)
	cliText := clientHCL(srv.addr, cert, key, a.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil)
	code, stdout, stderr = validate(t, clientBin, writeConfig(t, "client.hcl", cliText))
	if code != 0 || !strings.Contains(stdout, "ok") || strings.Contains(stdout+stderr, "peer's") {
		t.Fatalf("client validate: exit %d, stdout %q, stderr %q; want 0 and ok", code, stdout, stderr)
	}
	t.Log(strings.TrimSpace(stdout))
	cli := startClient(t, cliText, 1)
	defer cli.stop(t)
	cli.waitLine(t, "session up:")
	c := dial(t, cli.forwards["echo"], waitLimit)
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo through the tunnel: %q %v", buf, err)
	}

	// A server certificate used as the client's is still refused, with
	// words about our own certificate.
	wrongText := clientHCL(srv.addr, a.serverCert, a.serverKey, a.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil)
	code, stdout, stderr = validate(t, clientBin, writeConfig(t, "wrong.hcl", wrongText))
	if code != 2 || !strings.Contains(stderr, "our certificate") || !strings.Contains(stderr, "not issued for this use") || strings.Contains(stderr, "peer's") {
		t.Fatalf("server certificate as client's: exit %d, stdout %q, stderr %q; want 2 and our certificate named", code, stdout, stderr)
	}
	t.Log(strings.TrimSpace(stderr))
}

// A private key that group or others can read, and a public admin
// listener (no authentication exists), are warned about by validate (exit
// status unchanged) and by run: one WARN line each at start and on reload.
func TestSetupWarnings(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	if err := os.Chmod(p.serverKey, 0o640); err != nil {
		t.Fatal(err)
	}
	text := serverHCL(p.serverCert, p.serverKey, p.caFile, "admin {\n  listen = \"0.0.0.0:0\"\n  public = true\n}\n",
		[]svc{{name: "echo", target: "127.0.0.1:7", allow: []string{"client-a"}}}, nil)
	cfg := writeConfig(t, "server.hcl", text)
	code, stdout, stderr := validate(t, serverBin, cfg)
	if code != 0 || !strings.Contains(stdout, "ok") {
		t.Fatalf("validate: exit %d, stdout %q, stderr %q; want 0 and ok", code, stdout, stderr)
	}
	for _, w := range []string{"warning: private key " + p.serverKey + " is readable", "mode 0640", "warning: admin { public = true }", "without authentication"} {
		if !strings.Contains(stderr, w) {
			t.Errorf("validate stderr lacks %q:\n%s", w, stderr)
		}
	}
	t.Log(strings.TrimSpace(stderr))

	srv := startProc(t, "tunnel-server", serverBin, "run", "-config", cfg)
	srv.waitMatch(t, reListening)
	keyWarn := []string{"[WARN]", "private key " + p.serverKey, "mode 0640"}
	adminWarn := []string{"[WARN]", "admin { public = true }", "without authentication"}
	if n, m := srv.countLines(keyWarn...), srv.countLines(adminWarn...); n != 1 || m != 1 {
		t.Errorf("at start: %d key warnings, %d admin warnings; want one each", n, m)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	srv.waitLine(t, "reloaded")
	if n, m := srv.countLines(keyWarn...), srv.countLines(adminWarn...); n != 2 || m != 2 {
		t.Errorf("after a reload: %d key warnings, %d admin warnings; want two each", n, m)
	}
	// Fixed: the next reload says nothing more (warnings come before the
	// reloaded line).
	if err := os.Chmod(p.serverKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second reload", func() bool { return srv.countLines("reloaded") == 2 })
	if n := srv.countLines(keyWarn...); n != 2 {
		t.Errorf("key warned about after chmod 600: %d lines", n)
	}
	srv.stop(t)
}
