package cli

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/agent"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// validate -online against a real server on loopback: each way it can go
// wrong is said in one line, and a server that accepts us says so.
func TestValidateOnline(t *testing.T) {
	dir := t.TempDir()
	files, err := agent.DemoPKI(dir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	// startServer runs a real server on loopback whose one service allows
	// the identities in allow.
	startServer := func(allow string) (addr, path string) {
		path = filepath.Join(t.TempDir(), "server.hcl")
		writeFile(t, path, fmt.Sprintf("listen = \"127.0.0.1:0\"\ntls {\n  cert = %q\n  key = %q\n  ca = %q\n}\nservice \"bgp\" {\n  target = \"127.0.0.1:1\"\n  class = \"control\"\n  allow = [%q]\n}\n", files.ServerCert, files.ServerKey, files.CA, allow))
		srvCfg, err := config.LoadServer(path)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := agent.NewServer(srvCfg, hclog.NewNullLogger())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { _ = srv.Run(ctx) })
		t.Cleanup(func() { cancel(); wg.Wait() })
		select {
		case <-srv.Ready():
		case <-time.After(20 * time.Second):
			t.Fatal("server not ready")
		}
		return srv.Addr("tunnel").String(), path
	}
	addr, srvPath := startServer("edge-1")
	// The same CA, but its one service allows someone else: refused by
	// policy, in the server's words.
	elsewhere, _ := startServer("edge-2")

	// A client certificate from another CA.
	other, err := pki.NewRootCA(pki.Options{CommonName: "Other CA"})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.IssueClient(pki.Options{CommonName: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	strangerCert, strangerKey := filepath.Join(dir, "stranger.crt"), filepath.Join(dir, "stranger.key")
	if err := stranger.WriteFiles(strangerCert, strangerKey); err != nil {
		t.Fatal(err)
	}
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	client := func(server, cert, key, extra string) string {
		p := filepath.Join(t.TempDir(), "client.hcl")
		writeFile(t, p, fmt.Sprintf("server = %q\ntls {\n  cert = %q\n  key = %q\n  ca = %q\n%s}\n", server, cert, key, files.CA, extra))
		return p
	}
	for _, tc := range []struct {
		name, cfg string
		code      int
		want      []string
	}{
		{"accepted", client(addr, files.ClientCert, files.ClientKey, ""), exitOK, []string{
			`server certificate: "tunnel-server" (localhost, 127.0.0.1, ::1), issued by "tunnel demo CA"`,
			`verified against tls.ca: "tunnel-server" <- "tunnel demo CA"`,
			"ok: the server accepted our certificate (agent ",
			"services we may open: bgp (control)",
			`online: ok, a server accepts us as "edge-1" (pin sha256:`}},
		{"not allowed by the server's rules", client(elsewhere, files.ClientCert, files.ClientKey, ""), exitFailure, []string{
			`PROBLEM: the server refused us: `,
			`online: no server accepted us as "edge-1"`}},
		{"nothing listening", client(closedAddr, files.ClientCert, files.ClientKey, ""), exitFailure, []string{
			"PROBLEM: connection refused by " + closedAddr + ": nothing listens on port",
			`online: no server accepted us as "edge-1"`}},
		{"our certificate from a CA the server does not trust", client(addr, strangerCert, strangerKey, ""), exitFailure, []string{
			"PROBLEM: the peer refused us: it does not trust the CA that issued our certificate (unknown CA)"}},
		{"the server's name is not in its certificate", client(addr, files.ClientCert, files.ClientKey, "  server_name = \"tunnel.example.net\"\n"), exitFailure, []string{
			`PROBLEM: tls handshake: we refused the server's certificate: name mismatch: wanted "tunnel.example.net"`}},
		{"tls.verify does not match the server", client(addr, files.ClientCert, files.ClientKey, "  verify = [\"cn:someone-else\"]\n"), exitFailure, []string{
			`PROBLEM: tls handshake: we refused the peer: server "tunnel-server" matches none of tls.verify`}},
	} {
		var out, errs bytes.Buffer
		code := Main(Client, []string{"validate", "-online", "-config", tc.cfg}, &out, &errs)
		got := out.String()
		t.Logf("%s:\n%s", tc.name, got)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: output lacks %q", tc.name, w)
			}
		}
		if code != tc.code || strings.Count(got, "PROBLEM:")+strings.Count(got, "  ok:") != 1 {
			t.Errorf("%s: exit %d (want %d), one verdict line wanted:\n%s%s", tc.name, code, tc.code, got, errs.String())
		}
	}

	if _, errs, code := call(Server, "validate", "-online", "-config", srvPath); code != exitUsage || !strings.Contains(errs, "-online is for tunnel-client") {
		t.Errorf("tunnel-server validate -online: exit %d, %q", code, errs)
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
