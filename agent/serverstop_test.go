package agent

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// A session whose handshake and admission ended as the server began to
// stop, and that joins the server's set after its drain began: it is
// drained at once (the client hears it and connects elsewhere), not left
// to take new streams on a stopping server. Seen in CI: a client's second
// lane came up on a draining server and carried the connections meant
// for its successor.
func TestSessionUpWhileStoppingIsDrained(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "stop test CA"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srvCert.WriteFiles(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")); err != nil {
		t.Fatal(err)
	}
	srvPath := filepath.Join(dir, "server.hcl")
	if err := os.WriteFile(srvPath, []byte(serverHCL(echoServer(t), `"edge"`, "drain_timeout = \"30s\"\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	srvLog := &syncBuffer{}
	var running sync.WaitGroup
	// Lane 1's session waits between its admission and joining the set.
	lane1Held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv, _, stopServer := runServerWith(t, srvPath, srvLog, &running, func(s *Server) {
		s.beforePut = func(_ string, lane int) {
			if lane == 1 {
				once.Do(func() { close(lane1Held); <-release })
			}
		}
	})
	defer running.Wait()
	defer stopServer()
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()
	cliCert, err := ca.IssueClient(pki.Options{CommonName: "edge"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cliCert.WriteFiles(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")); err != nil {
		t.Fatal(err)
	}
	cliPath := filepath.Join(dir, "client.hcl")
	if err := os.WriteFile(cliPath, []byte(`server = "`+srv.Addr("tunnel").String()+`"
tls {
  cert = "client.crt"
  key  = "client.key"
  ca   = "ca.crt"
  server_name = "localhost"
}
bulk_connections = 2
forward "echo" {
  listen = "127.0.0.1:0"
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadClient(cliPath)
	if err != nil {
		t.Fatal(err)
	}
	cliLog := &syncBuffer{}
	cli, err := NewClient(cfg, hclog.New(&hclog.LoggerOptions{Output: cliLog, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	cliCtx, stopClient := context.WithCancel(context.Background())
	running.Go(func() { _ = cli.Run(cliCtx) })
	defer stopClient()
	defer func() {
		if t.Failed() {
			t.Logf("server log:\n%s\nclient log:\n%s", srvLog, cliLog)
		}
	}()
	<-cli.Ready()
	waitFor(t, "lane 0 up", func() bool { return cli.Lanes(classBulk)[0] != nil })
	select {
	case <-lane1Held:
	case <-time.After(10 * time.Second):
		t.Fatal("lane 1 did not reach the server")
	}

	// A stream in flight keeps the server draining.
	long, err := net.Dial("tcp", cli.Addr("echo").String())
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	_ = long.SetDeadline(time.Now().Add(time.Minute))
	if _, err := long.Write([]byte("hold")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}

	stopServer()
	waitFor(t, "the server draining", func() bool { return strings.Contains(srvLog.String(), "stopping: draining streams") })
	releaseOnce() // lane 1's session joins the set now
	waitFor(t, "the client told that lane 1 drains", func() bool {
		for _, line := range strings.Split(cliLog.String(), "\n") {
			if strings.Contains(line, "server is draining; connecting a new session") && strings.Contains(line, "lane=1") {
				return true
			}
		}
		return false
	})
	if !strings.Contains(srvLog.String(), "session came up while stopping; draining it") {
		t.Error("the server did not say why it drains a new session")
	}
	// The stream in flight still works, then ends the drain.
	if _, err := long.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	long.Close()
}
