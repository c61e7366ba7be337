package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// RunDemo brings up a server and a client on loopback with a throwaway CA,
// an echo service on each side and a forward in each direction, prints what
// to try, and runs until ctx is cancelled. Nothing is left on disk.
func RunDemo(ctx context.Context, out io.Writer, log hclog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir, err := os.MkdirTemp("", "tunnel-demo-")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer os.RemoveAll(dir)
	if _, err := DemoPKI(dir, "demo-client"); err != nil {
		return err
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	echoServer, err := startEcho(ctx, &wg, "from the server's side: ")
	if err != nil {
		return err
	}
	echoClient, err := startEcho(ctx, &wg, "from the client's side: ")
	if err != nil {
		return err
	}

	srvPath := filepath.Join(dir, "server.hcl")
	if err := os.WriteFile(srvPath, fmt.Appendf(nil, `listen = "127.0.0.1:0"
tls {
  cert = "server.crt"
  key  = "server.key"
  ca   = "ca.crt"
}
service "echo" {
  target = %q
  allow  = ["demo-client"]
}
forward "reverse-echo" {
  listen  = "127.0.0.1:0"
  client  = "demo-client"
  service = "echo-back"
}
`, echoServer), 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	srvCfg, err := config.LoadServer(srvPath)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	srv, err := NewServer(srvCfg, log.Named("server"))
	if err != nil {
		return err
	}
	srvErr := make(chan error, 1)
	wg.Go(func() { srvErr <- srv.Run(ctx) })
	select {
	case <-srv.Ready():
	case err := <-srvErr:
		return err
	}

	cliPath := filepath.Join(dir, "client.hcl")
	if err := os.WriteFile(cliPath, fmt.Appendf(nil, `server = %q
tls {
  cert        = "client.crt"
  key         = "client.key"
  ca          = "ca.crt"
  server_name = "localhost"
}
forward "echo" {
  listen = "127.0.0.1:0"
}
service "echo-back" {
  target = %q
}
`, srv.Addr("tunnel").String(), echoClient), 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cliCfg, err := config.LoadClient(cliPath)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cli, err := NewClient(cliCfg, log.Named("client"))
	if err != nil {
		return err
	}
	cliErr := make(chan error, 1)
	wg.Go(func() { cliErr <- cli.Run(ctx) })
	select {
	case <-cli.Ready():
	case err := <-cliErr:
		return err
	}

	fmt.Fprintf(out, `
Tunnel demo running: one server and one client on loopback, mutually
authenticated with a throwaway CA, one TLS session carrying every stream.

  client -> server:  nc %[1]s %[2]s     (echo service on the server's host)
  server -> client:  nc %[3]s %[4]s     (echo service on the client's host)

Type a line and it comes back through the tunnel. Ctrl-C stops the demo.
`, host(cli.Addr("echo")), port(cli.Addr("echo")), host(srv.Addr("reverse-echo")), port(srv.Addr("reverse-echo")))

	select {
	case <-ctx.Done():
		return nil
	case err := <-srvErr:
		return err
	case err := <-cliErr:
		return err
	}
}

func host(a net.Addr) string { h, _, _ := net.SplitHostPort(a.String()); return h }
func port(a net.Addr) string { _, p, _ := net.SplitHostPort(a.String()); return p }

// DemoFiles are the paths DemoPKI wrote.
type DemoFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// DemoPKI writes a fresh CA, a server certificate for localhost/127.0.0.1
// and a client certificate named clientName into dir.
func DemoPKI(dir, clientName string) (DemoFiles, error) {
	f := DemoFiles{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
	}
	ca, err := pki.NewRootCA(pki.Options{CommonName: "tunnel demo CA"})
	if err != nil {
		return f, err
	}
	srv, err := ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}})
	if err != nil {
		return f, err
	}
	cli, err := ca.IssueClient(pki.Options{CommonName: clientName})
	if err != nil {
		return f, err
	}
	if err := os.WriteFile(f.CA, ca.CertPEM(), 0o644); err != nil {
		return f, fmt.Errorf("write CA: %w", err)
	}
	if err := srv.WriteFiles(f.ServerCert, f.ServerKey); err != nil {
		return f, err
	}
	return f, cli.WriteFiles(f.ClientCert, f.ClientKey)
}

// startEcho runs an echo server that greets first, on loopback for the demo.
func startEcho(ctx context.Context, wg *sync.WaitGroup, prefix string) (string, error) {
	ln, err := forward.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	wg.Go(func() {
		var conns sync.WaitGroup
		defer conns.Wait()
		_ = forward.Serve(ctx, ln, hclog.NewNullLogger(), func(c net.Conn) {
			stop := context.AfterFunc(ctx, func() { c.Close() })
			conns.Go(func() {
				defer stop()
				defer c.Close()
				_, _ = io.WriteString(c, prefix)
				_, _ = io.Copy(c, c)
			})
		})
	})
	return ln.Addr().String(), nil
}
