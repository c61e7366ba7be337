package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a log sink the test can read while agents write.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

type rig struct {
	dir         string
	files       DemoFiles
	ca          *pki.Cert
	srvPath     string
	srv         *Server
	cli         *Client
	srvLog      *syncBuffer
	cliLog      *syncBuffer
	echo        string
	cancel      func()
	done        sync.WaitGroup
	serverAllow string
}

func serverHCL(echo, allow, extra string) string {
	return fmt.Sprintf(`listen = "127.0.0.1:0"
tls {
  cert = "server.crt"
  key  = "server.key"
  ca   = "ca.crt"
}
service "echo" {
  target = %q
  allow  = [%s]
}
%s`, echo, allow, extra)
}

func startRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{dir: t.TempDir(), srvLog: &syncBuffer{}, cliLog: &syncBuffer{}}
	ca, err := pki.NewRootCA(pki.Options{CommonName: "agent test CA"})
	if err != nil {
		t.Fatal(err)
	}
	r.ca = ca
	r.files = writePKI(t, r.dir, ca)
	r.echo = echoServer(t)
	r.srvPath = filepath.Join(r.dir, "server.hcl")
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, ""))
	var ctx context.Context
	r.srv, ctx, r.cancel = runServerFile(t, r.srvPath, r.srvLog, &r.done)
	cliPath := r.writeClient(t, "127.0.0.1:0")
	ccfg, err := config.LoadClient(cliPath)
	if err != nil {
		t.Fatal(err)
	}
	r.cli, err = NewClient(ccfg, hclog.New(&hclog.LoggerOptions{Output: r.cliLog, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	r.done.Go(func() { _ = r.cli.Run(ctx) })
	<-r.cli.Ready()
	waitFor(t, "the session", func() bool { return r.cli.Session() != nil })
	t.Cleanup(func() {
		r.cancel()
		r.done.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s\nclient log:\n%s", r.srvLog, r.cliLog)
		}
	})
	return r
}

func writePKI(t *testing.T, dir string, ca *pki.Cert) DemoFiles {
	t.Helper()
	f := DemoFiles{CA: filepath.Join(dir, "ca.crt"), ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"), ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key")}
	srv, err := ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.IssueClient(pki.Options{CommonName: "client-a"})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(f.CA, ca.CertPEM(), 0o644)
	if err := srv.WriteFiles(f.ServerCert, f.ServerKey); err != nil {
		t.Fatal(err)
	}
	if err := cli.WriteFiles(f.ClientCert, f.ClientKey); err != nil {
		t.Fatal(err)
	}
	return f
}

func (r *rig) writeServer(t *testing.T, hcl string) {
	t.Helper()
	if err := os.WriteFile(r.srvPath, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runServerFile loads the server config at path and runs the server on
// wg, logging at debug to log; it returns once the server is ready.
// Cancelling the returned context's cancel stops it.
func runServerFile(t *testing.T, path string, log io.Writer, wg *sync.WaitGroup) (*Server, context.Context, context.CancelFunc) {
	t.Helper()
	return runServerWith(t, path, log, wg, func(*Server) {})
}

// runServerWith is runServerFile with prepare run on the server before it
// starts.
func runServerWith(t *testing.T, path string, log io.Writer, wg *sync.WaitGroup, prepare func(*Server)) (*Server, context.Context, context.CancelFunc) {
	t.Helper()
	cfg, err := config.LoadServer(path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	prepare(srv)
	ctx, cancel := context.WithCancel(context.Background())
	wg.Go(func() { _ = srv.Run(ctx) })
	<-srv.Ready()
	return srv, ctx, cancel
}

func echoServer(t *testing.T) string {
	return testServer(t, func(c net.Conn) { io.Copy(c, c) })
}

// testServer runs a loopback TCP server whose handle owns each connection
// until it returns; cleanup closes the listener and waits for every handler.
func testServer(t *testing.T, handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); handle(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func roundTrip(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("got %d bytes back, want %d", len(got), len(msg))
	}
	return nil
}

func TestReloadRemovesAllowAndClosesSession(t *testing.T) {
	r := startRig(t)
	fwd := r.cli.Addr("echo").String()
	if err := roundTrip(fwd, []byte("before")); err != nil {
		t.Fatal(err)
	}
	r.writeServer(t, serverHCL(r.echo, `"client-b"`, ""))
	if err := r.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to close the session", func() bool {
		return strings.Contains(r.srvLog.String(), "closing session: its client no longer passes")
	})
	if !strings.Contains(r.srvLog.String(), `changes="services: echo changed"`) {
		t.Errorf("reloaded line does not say what changed:\n%s", r.srvLog)
	}
	// The client reconnects and is refused in the handshake now.
	waitFor(t, "the refused reconnect", func() bool {
		return strings.Contains(r.srvLog.String(), `\"client-a\" is not allowed by any service`)
	})
}

func TestReloadBrokenFileKeepsRunningConfig(t *testing.T) {
	r := startRig(t)
	fwd := r.cli.Addr("echo").String()
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, "nonsense = 1\n"))
	err := r.srv.Reload()
	if err == nil || !strings.Contains(err.Error(), "nonsense") {
		t.Fatalf("reload of a broken file: %v", err)
	}
	// A certificate that does not match its key is refused too.
	other, _ := r.ca.IssueServer(pki.Options{CommonName: "other", DNSNames: []string{"localhost"}})
	os.WriteFile(r.files.ServerCert, other.CertPEM(), 0o644)
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, ""))
	if err := r.srv.Reload(); err == nil || !strings.Contains(err.Error(), "private key does not match") {
		t.Fatalf("reload with a mismatched key: %v", err)
	}
	if err := roundTrip(fwd, []byte("still served by the old configuration")); err != nil {
		t.Fatal(err)
	}
	if r.cli.Session() == nil || strings.Contains(r.srvLog.String(), "closing session") {
		t.Fatal("a failed reload touched the session")
	}
}

// A reload refuses our own certificate when every handshake would fail
// with it (validate's verdict), names the file, and keeps the running one:
// new handshakes still get the old certificate.
func TestReloadRefusesUnusableCertificate(t *testing.T) {
	r := startRig(t)
	serial := r.srv.tls.Policy().Material.Leaf.SerialNumber
	expired, err := r.ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	clientOnly, err := r.ca.IssueClient(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *pki.Cert
		want string
	}{
		{"expired", expired, "expired on"},
		{"clientAuth only", clientOnly, "not issued for this use"},
	} {
		if err := replaceFiles(tc.cert, r.files.ServerCert, r.files.ServerKey); err != nil {
			t.Fatal(err)
		}
		err := r.srv.Reload()
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), r.files.ServerCert) {
			t.Fatalf("%s: reload: %v", tc.name, err)
		}
		if got := handshakeSerial(t, r); got.Cmp(serial) != 0 {
			t.Fatalf("%s: the server presents serial %s, want the running %s", tc.name, ssl.FormatSerial(got), ssl.FormatSerial(serial))
		}
	}
	if strings.Contains(r.srvLog.String(), "reloaded") {
		t.Errorf("a refused reload logged as applied:\n%s", r.srvLog)
	}

	// The client likewise keeps its certificate: after the refused reload
	// its next session comes up, which the server would refuse with the
	// expired one.
	cliSerial := r.cli.tls.Policy().Material.Leaf.SerialNumber
	old, err := r.ca.IssueClient(pki.Options{CommonName: "client-a", NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := replaceFiles(old, r.files.ClientCert, r.files.ClientKey); err != nil {
		t.Fatal(err)
	}
	if err := r.cli.Reload(); err == nil || !strings.Contains(err.Error(), "expired on") || !strings.Contains(err.Error(), r.files.ClientCert) {
		t.Fatalf("client reload with an expired certificate: %v", err)
	}
	sess := r.cli.Session()
	sess.CloseWithReason(errors.New("test: reconnect"))
	waitFor(t, "a new session", func() bool { s := r.cli.Session(); return s != nil && s != sess })
	if got := r.cli.tls.Policy().Material.Leaf.SerialNumber; got.Cmp(cliSerial) != 0 {
		t.Errorf("the client holds serial %s, want the running %s", ssl.FormatSerial(got), ssl.FormatSerial(cliSerial))
	}
}

// replaceFiles writes c over an existing pair (WriteFiles keeps a key file).
func replaceFiles(c *pki.Cert, certFile, keyFile string) error {
	if err := os.Remove(keyFile); err != nil {
		return err
	}
	return c.WriteFiles(certFile, keyFile)
}

// handshakeSerial runs a TLS handshake with the rig's server as its client
// and returns the serial of the certificate the server presented.
func handshakeSerial(t *testing.T, r *rig) *big.Int {
	t.Helper()
	m, err := ssl.LoadMaterial(r.files.ClientCert, r.files.ClientKey, r.files.CA)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", r.srv.Addr("tunnel").String())
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, ssl.ClientConfig(m, "localhost"))
	defer conn.Close()
	if err := ssl.Handshake(context.Background(), conn, 10*time.Second); err != nil {
		t.Fatalf("handshake with the server: %v", err)
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

// Started with a certificate that every handshake would refuse, neither
// agent starts, and the error names the file.
func TestStartRefusesUnusableCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "agent test CA"})
	if err != nil {
		t.Fatal(err)
	}
	files := writePKI(t, dir, ca)
	expired := pki.Options{CommonName: "x", DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour}
	srvCert, err := ca.IssueServer(expired)
	if err != nil {
		t.Fatal(err)
	}
	if err := replaceFiles(srvCert, files.ServerCert, files.ServerKey); err != nil {
		t.Fatal(err)
	}
	cliCert, err := ca.IssueClient(expired)
	if err != nil {
		t.Fatal(err)
	}
	if err := replaceFiles(cliCert, files.ClientCert, files.ClientKey); err != nil {
		t.Fatal(err)
	}
	srvPath, cliPath := filepath.Join(dir, "server.hcl"), filepath.Join(dir, "client.hcl")
	if err := os.WriteFile(srvPath, []byte(serverHCL("127.0.0.1:1", `"client-a"`, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cliPath, []byte("server = \"127.0.0.1:1\"\ntls {\n  cert = \"client.crt\"\n  key = \"client.key\"\n  ca = \"ca.crt\"\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scfg, err := config.LoadServer(srvPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewServer(scfg, hclog.NewNullLogger()); err == nil || !strings.Contains(err.Error(), "expired on") || !strings.Contains(err.Error(), files.ServerCert) {
		t.Errorf("server with an expired certificate: %v", err)
	}
	ccfg, err := config.LoadClient(cliPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewClient(ccfg, hclog.NewNullLogger()); err == nil || !strings.Contains(err.Error(), "expired on") || !strings.Contains(err.Error(), files.ClientCert) {
		t.Errorf("client with an expired certificate: %v", err)
	}
}

func TestCertificateSwapUnderLoad(t *testing.T) {
	r := startRig(t)
	fwd := r.cli.Addr("echo").String()
	oldSerial := r.cli.Session().Peer.Leaf.SerialNumber

	// A stream keeps moving data across the reload.
	c, err := net.Dial("tcp", fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := make(chan struct{})
	var sent, got bytes.Buffer
	var pumps sync.WaitGroup
	pumps.Go(func() {
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-stop:
				c.(*net.TCPConn).CloseWrite()
				return
			default:
			}
			for j := range buf {
				buf[j] = byte(i + j)
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
			sent.Write(buf)
		}
	})
	pumps.Go(func() { io.Copy(&got, c) })

	next, err := r.ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(r.files.ServerKey)
	if err := next.WriteFiles(r.files.ServerCert, r.files.ServerKey); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := r.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.srvLog.String(), "certificate (serial") {
		t.Errorf("reloaded line does not name the new certificate:\n%s", r.srvLog)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	pumps.Wait()
	if sent.Len() == 0 || sha256.Sum256(sent.Bytes()) != sha256.Sum256(got.Bytes()) {
		t.Fatalf("stream across the reload: sent %d, got %d bytes", sent.Len(), got.Len())
	}
	// The running session was not touched; a new one sees the new certificate.
	if r.cli.Session().Peer.Leaf.SerialNumber.Cmp(oldSerial) != 0 {
		t.Fatal("session was replaced by the reload")
	}
	r.cli.Session().CloseWithReason(fmt.Errorf("test forces a reconnect"))
	waitFor(t, "a session with the new certificate", func() bool {
		s := r.cli.Session()
		return s != nil && s.Peer.Leaf.SerialNumber.Cmp(next.Cert.SerialNumber) == 0
	})
}

func TestReloadAddsAndRemovesForwards(t *testing.T) {
	r := startRig(t)
	extra := `forward "back" {
  listen  = "127.0.0.1:0"
  client  = "client-a"
  service = "nothing"
}
`
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, extra))
	if err := r.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	addr := r.srv.Addr("back")
	if addr == nil {
		t.Fatal("added forward not listening")
	}
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, ""))
	if err := r.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if r.srv.Addr("back") != nil {
		t.Fatal("removed forward still listed")
	}
	if c, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c.Close()
		t.Fatal("removed forward still accepts")
	}
	if err := roundTrip(r.cli.Addr("echo").String(), []byte("unchanged")); err != nil {
		t.Fatal(err)
	}
}

// Reload starts, moves and stops the admin listener, and says so in the
// reloaded line; a key it cannot apply is named as needing a restart.
func TestReloadAppliesAdmin(t *testing.T) {
	r := startRig(t)
	if r.srv.Addr("admin") != nil {
		t.Fatal("admin listener without an admin block")
	}
	healthz := func(addr string) error {
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "ok\n" {
			return fmt.Errorf("/healthz: %s %q", resp.Status, b)
		}
		return nil
	}
	reloaded := func(t *testing.T, extra string) string {
		t.Helper()
		before := strings.Count(r.srvLog.String(), "reloaded:")
		r.writeServer(t, serverHCL(r.echo, `"client-a"`, extra))
		if err := r.srv.Reload(); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(r.srvLog.String(), "\n")
		var got []string
		for _, l := range lines {
			if strings.Contains(l, "reloaded:") {
				got = append(got, l)
			}
		}
		if len(got) != before+1 {
			t.Fatalf("%d reloaded lines, want %d", len(got), before+1)
		}
		return got[len(got)-1]
	}

	line := reloaded(t, "admin {\n  listen = \"127.0.0.1:0\"\n}\n")
	first := r.srv.Addr("admin")
	if first == nil {
		t.Fatalf("reload did not start the admin listener: %s", line)
	}
	if !strings.Contains(line, `changes="admin listener started on `+first.String()+`"`) {
		t.Errorf("reloaded line: %s", line)
	}
	if err := healthz(first.String()); err != nil {
		t.Fatal(err)
	}

	// Moved: the new port answers, the old one is closed.
	free, err := net.Listen("tcp", "127.0.0.1:0") // a port to move to
	if err != nil {
		t.Fatal(err)
	}
	to := free.Addr().String()
	free.Close()
	moveTo := fmt.Sprintf("log_level = \"debug\"\nadmin {\n  listen = %q\n}\n", to)
	line = reloaded(t, moveTo)
	second := r.srv.Addr("admin")
	if second == nil || second.String() != to {
		t.Fatalf("admin listener not moved: %v; %s", second, line)
	}
	if !strings.Contains(line, "admin listener moved from "+first.String()+" to "+second.String()) || !strings.Contains(line, "needs a restart to apply: log_level") {
		t.Errorf("reloaded line: %s", line)
	}
	if err := healthz(second.String()); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, first.String())

	// The same port under another name overlaps the old listener: it is
	// freed first.
	_, port, _ := net.SplitHostPort(to)
	overlap := fmt.Sprintf("log_level = \"debug\"\nadmin {\n  listen = \"localhost:%s\"\n}\n", port)
	if line = reloaded(t, overlap); !strings.Contains(line, "admin listener moved from "+to+" to ") {
		t.Errorf("reloaded line: %s", line)
	}
	if got := r.srv.Addr("admin"); got == nil || !strings.HasSuffix(got.String(), ":"+port) {
		t.Fatalf("admin listener after moving to localhost:%s: %v", port, got)
	}
	if err := healthz(r.srv.Addr("admin").String()); err != nil {
		t.Fatal(err)
	}
	second = r.srv.Addr("admin")

	// Unchanged: nothing to say about it.
	if line = reloaded(t, overlap); !strings.Contains(line, `changes="nothing changed"`) {
		t.Errorf("reloaded line: %s", line)
	}
	if r.srv.Addr("admin").String() != second.String() {
		t.Error("an unchanged admin block moved the listener")
	}

	// Removed: the port closes.
	line = reloaded(t, "")
	if r.srv.Addr("admin") != nil || !strings.Contains(line, "admin listener on "+second.String()+" stopped") {
		t.Errorf("admin listener not stopped: %s", line)
	}
	expectClosed(t, second.String())
	if err := roundTrip(r.cli.Addr("echo").String(), []byte("unchanged")); err != nil {
		t.Fatal(err)
	}
}

// A reload whose admin address cannot be opened keeps the old listener
// and says why.
func TestReloadAdminBusyKeepsOld(t *testing.T) {
	r := startRig(t)
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, "admin {\n  listen = \"127.0.0.1:0\"\n}\n"))
	if err := r.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	old := r.srv.Addr("admin").String()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r.writeServer(t, serverHCL(r.echo, `"client-a"`, fmt.Sprintf("admin {\n  listen = %q\n}\n", busy.Addr())))
	err = r.srv.Reload()
	var inc *IncompleteReloadError
	if !errors.As(err, &inc) || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), "still on "+old) {
		t.Fatalf("reload onto a busy port: %v", err)
	}
	log := &syncBuffer{}
	LogReloadFailure(hclog.New(&hclog.LoggerOptions{Output: log}), err)
	if !strings.Contains(log.String(), "reload applied except for some listeners") {
		t.Errorf("logged as %q", log)
	}
	if got := r.srv.Addr("admin"); got == nil || got.String() != old {
		t.Fatalf("admin listener after a failed move: %v, want %s", got, old)
	}
	c, err := net.DialTimeout("tcp", old, 5*time.Second)
	if err != nil {
		t.Fatalf("old admin listener closed: %v", err)
	}
	c.Close()
}

func expectClosed(t *testing.T, addr string) {
	t.Helper()
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts", addr)
	}
}

// The client's reloaded line names what only a restart applies; a new
// traffic class gets its session at once.
func TestReloadNamesRestartKeys(t *testing.T) {
	r := startRig(t)
	cliPath := filepath.Join(r.dir, "client.hcl")
	if err := os.WriteFile(cliPath, fmt.Appendf(nil, `server = %q
log_format = "json"
reload_interval = "1h"
bulk_connections = 3
tls {
  cert = "client.crt"
  key  = "client.key"
  ca   = "ca.crt"
  server_name = "localhost"
}
forward "echo" {
  listen = "127.0.0.1:0"
}
forward "bgp" {
  listen = "127.0.0.1:0"
  class  = "control"
}
`, r.srv.Addr("tunnel").String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.cli.Reload(); err != nil {
		t.Fatal(err)
	}
	want := `changes="forwards: bgp added; needs a restart to apply: log_format, reload_interval, bulk_connections"`
	if !strings.Contains(r.cliLog.String(), want) {
		t.Errorf("reloaded line lacks %s:\n%s", want, r.cliLog)
	}
	waitFor(t, "the new class's session", func() bool {
		ks := r.cli.keeperList()[classControl]
		return ks != nil && ks[0].current.get() != nil
	})
	if err := roundTrip(r.cli.Addr("echo").String(), []byte("unchanged")); err != nil {
		t.Fatal(err)
	}
	// The lanes stay as they started until the next start.
	if got := len(r.cli.Lanes(classBulk)); got != config.DefaultBulkConnections {
		t.Errorf("%d bulk lanes after a reload to bulk_connections = 3, want the %d it started with", got, config.DefaultBulkConnections)
	}
}

// Two hosts with one certificate replace each other's session on the
// server. Each is told it was replaced and backs off before taking the
// place back, and says so once a minute, not on every round.
func TestReplacedClientBacksOff(t *testing.T) {
	r := startRig(t)
	cfg, err := config.LoadClient(filepath.Join(r.dir, "client.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	log2 := &syncBuffer{}
	twin, err := NewClient(cfg, hclog.New(&hclog.LoggerOptions{Output: log2, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var done sync.WaitGroup
	done.Go(func() { _ = twin.Run(ctx) })
	defer func() { cancel(); done.Wait() }()
	start := time.Now()
	waitFor(t, "the first replacement", func() bool {
		return strings.Contains(r.cliLog.String(), "session replaced by a newer one")
	})
	time.Sleep(4*time.Second - time.Since(start))
	replaced := strings.Count(r.srvLog.String(), "client reconnected; draining its previous session")
	t.Logf("%d replacements in 4 s", replaced)
	// Backing off from 100 ms doubling to 2 s, the two take turns about
	// a dozen times in 4 s; reconnecting at once they would take turns as
	// fast as handshakes go, hundreds of times.
	if replaced > 40 {
		t.Errorf("%d replacements in 4 s: the replaced client does not back off", replaced)
	}
	for name, log := range map[string]*syncBuffer{"first": r.cliLog, "twin": log2} {
		if n := strings.Count(log.String(), "session replaced by a newer one"); n > 1 {
			t.Errorf("%s client logged the replacement %d times in 4 s, want at most once a minute", name, n)
		}
	}
}

// Streams refused by the server are counted by kind and logged once per
// interval per kind and peer, however many there are.
func TestRefusalsCountedAndLoggedOnce(t *testing.T) {
	r := startRig(t)
	sess := r.cli.Session()
	const n = 20
	for i := range n {
		name := "nope"
		if i%2 == 1 {
			name = "echo-" + fmt.Sprint(i) // many names, still one line
		}
		st, err := sess.Open(context.Background(), name, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "is not available to you") {
			t.Fatalf("open %q: %v", name, err)
		}
		st.Close()
	}
	got := metricValue(t, r.srv.metrics.StreamsRefused.WithLabelValues(mux.RefusedUnknown))
	if got != n {
		t.Errorf("tunnel_streams_refused_total{kind=unknown_service} = %v, want %d", got, n)
	}
	if c := strings.Count(r.srvLog.String(), "stream refused: unknown service"); c != 1 {
		t.Errorf("server logged %d refusal lines for %d refusals, want 1", c, n)
	}
	if metricValue(t, r.srv.metrics.AwaitingHeader) != 0 {
		t.Error("streams still counted as awaiting their header")
	}
}

// metricValue reads a counter's or gauge's value.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var v dto.Metric
	if err := m.Write(&v); err != nil {
		t.Fatal(err)
	}
	if c := v.GetCounter(); c != nil {
		return c.GetValue()
	}
	return v.GetGauge().GetValue()
}

// A client whose hello names a traffic class outside the fixed set is
// refused; the server says why, quoting the value, and counts it as a
// bad hello, never as a class label.
func TestHelloWithUnknownClassRefused(t *testing.T) {
	r := startRig(t)
	m, err := ssl.LoadMaterial(r.files.ClientCert, r.files.ClientKey, r.files.CA)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.DialTimeout("tcp", r.srv.Addr("tunnel").String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, ssl.ClientConfig(m, "localhost"))
	defer conn.Close()
	if err := ssl.Handshake(context.Background(), conn, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Our side of the hello exchange succeeds; the server closes the
	// connection once it has read ours.
	if sess, err := mux.Establish(context.Background(), conn, mux.RoleClient, ssl.Identity{}, mux.Config{Class: "gold-" + strings.Repeat("x", 100)}); err == nil {
		defer sess.Close()
	}
	waitFor(t, "the refusal", func() bool {
		return strings.Contains(r.srvLog.String(), `peer's hello names traffic class \"gold-xxxxxxxxxxxxxxxxxxxxxxxxxxx\"... (105 bytes)`)
	})
	if got := metricValue(t, r.srv.metrics.HandshakeFailures.WithLabelValues("bad_hello")); got != 1 {
		t.Errorf("handshake failures{bad_hello} = %v, want 1", got)
	}
	if strings.Contains(r.srvLog.String(), "session up: class=gold") {
		t.Error("a session came up with an unknown class")
	}
}
