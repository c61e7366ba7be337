package agent

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// A revoked client is told so in words: its log says why, its local
// connections are refused at once (not after session_wait), and when the
// cause changes (the server no longer allows it) the new cause is logged at
// once, although the limiter holds a repeat for a minute. A raw client with
// the revoked certificate that opens a stream anyway is served nothing.
func TestRevokedClientToldWhy(t *testing.T) {
	ca, err := pki.NewRootCA(pki.Options{CommonName: "fleet test CA"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	crlPath := filepath.Join(dir, "ca.crl")
	writeCRL := func(number int64, revoked ...*big.Int) {
		t.Helper()
		var entries []x509.RevocationListEntry
		for _, s := range revoked {
			entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
		}
		pem, err := ca.NewCRL(entries, big.NewInt(number), time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crlPath, pem, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCRL(1)
	f := startFleet(t, fleetOptions{ca: ca, allow: `"edge"`, tlsExtra: fmt.Sprintf("  crl = [%q]\n", crlPath)})
	// The client may be up by the time the revocation is reloaded: then
	// the server tells it why it ends the session; after, the handshake.
	cli, cliLog, cert := f.startClient(t, pki.Options{CommonName: "edge"}, `session_wait = "30s"
forward "echo" {
  listen = "127.0.0.1:0"
}
`)
	writeCRL(2, cert.Cert.SerialNumber)
	if err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	serial := pki.FormatSerial(cert.Cert.SerialNumber)
	waitFor(t, "the client to log why it was refused", func() bool {
		l := cliLog.String()
		return strings.Contains(l, "the server refused us; retrying") && strings.Contains(l, `the server refused us: certificate \"edge\" (serial `+serial+`) is revoked`)
	})
	if strings.Contains(cliLog.String(), crlPath) {
		t.Errorf("the client was told the server's CRL file name:\n%s", cliLog)
	}
	if l := f.srvLog.String(); !strings.Contains(l, "client refused") || !strings.Contains(l, "(CRL "+crlPath) {
		t.Errorf("the server's log lacks the refusal with its CRL:\n%s", l)
	}
	// Refused at once, not after session_wait.
	start := time.Now()
	// The reset may come before the dial returns.
	if c, err := net.DialTimeout("tcp", cli.Addr("echo").String(), 5*time.Second); err == nil {
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		n, rerr := c.Read(make([]byte, 1))
		c.Close()
		if n != 0 || rerr == nil || os.IsTimeout(rerr) {
			t.Fatalf("read %d bytes, err %v", n, rerr)
		}
	} else if !strings.Contains(err.Error(), "reset") {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took >= 15*time.Second {
		t.Fatalf("local connection held %s (session_wait is 30s)", took)
	}
	t.Logf("local connection refused after %s (session_wait 30s)", took)
	waitFor(t, "the refused local connection's line", func() bool {
		return strings.Contains(cliLog.String(), "connection refused: no session to the server") && strings.Contains(cliLog.String(), "is revoked")
	})

	t.Run("raw client is served nothing", func(t *testing.T) {
		rawRevokedClient(t, f, cert)
	})

	// A new cause: no longer revoked, but no longer allowed either.
	writeCRL(3)
	srvPath := filepath.Join(f.dir, "server.hcl")
	hcl, err := os.ReadFile(srvPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(srvPath, []byte(strings.Replace(string(hcl), `allow  = ["edge"]`, `allow  = ["somebody-else"]`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new cause logged", func() bool {
		return strings.Contains(cliLog.String(), `the server refused us: \"edge\" is not allowed by any service's allow list`)
	})
	if got := f.srv.metrics.Counts("service", "echo").Total.Load(); got != 0 {
		t.Fatalf("a refused client had %d streams served", got)
	}
}

// rawRevokedClient completes TLS with a refused certificate, sends a hello
// and at once a stream to "echo", and reads: it gets the refusal and the
// connection's end, and the server serves no stream.
func rawRevokedClient(t *testing.T, f *fleet, cert *pki.Cert) {
	pem, err := os.ReadFile(filepath.Join(f.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", f.srv.Addr("tunnel").String(), &tls.Config{
		RootCAs: roots, ServerName: "localhost", NextProtos: []string{"tunnel/1"}, MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{cert.Cert.Raw}, PrivateKey: cert.Key}},
	})
	if err != nil {
		t.Fatalf("the handshake of a refused client should complete: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	body := `{"role":"client","class":"bulk"}`
	msg := append([]byte("TUNL\x01"), byte(len(body)>>8), byte(len(body)))
	msg = append(msg, body...)
	// yamux: SYN for stream 1, then a data frame with the stream header.
	msg = append(msg, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0)
	hdr := append([]byte{1, 4}, "echo\x00"...)
	msg = append(msg, 0, 0, 0, 0, 0, 0, 0, 1)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(hdr)))
	msg = append(msg, hdr...)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read: %v (got %q)", err, got)
	}
	if len(got) < 8 || string(got[:4]) != "TUNR" || got[5] != 2 || !strings.Contains(string(got[8:]), "is revoked") {
		t.Fatalf("got %q, want a refusal (revoked)", got)
	}
	if n := 8 + int(binary.BigEndian.Uint16(got[6:8])); len(got) != n {
		t.Fatalf("%d bytes after the refusal: %q", len(got)-n, got[n:])
	}
	if got := f.srv.metrics.Counts("service", "echo").Total.Load(); got != 0 {
		t.Fatalf("a refused client had %d streams served", got)
	}
}

// The README's BGP shape: the client's forward listens on an ephemeral
// port (its default class is bulk) to a service the server gives the
// control class: the forward's streams ride the control session, from the
// very first connection. A forward's own class still wins. The server
// lists only the services this client may open.
func TestServiceClassFromOwner(t *testing.T) {
	echo := echoServer(t)
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: fmt.Sprintf(`service "bgp" {
  target = %q
  allow  = ["edge"]
  class  = "control"
}
service "secret" {
  target = %q
  allow  = ["somebody-else"]
  class  = "control"
}
`, echo, echo)})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, `forward "bgp" {
  listen = "127.0.0.1:0"
}
forward "bgp-bulk" {
  listen  = "127.0.0.1:0"
  service = "bgp"
  class   = "bulk"
}
`)
	// At once, before any session is up.
	if err := roundTrip(cli.Addr("bgp").String(), []byte("keepalive")); err != nil {
		t.Fatal(err)
	}
	opened := func(class string) uint64 { // over the class's lanes
		var n uint64
		for _, sess := range cli.Lanes(class) {
			if sess != nil {
				n += sess.Opened()
			}
		}
		return n
	}
	if c, b := opened(classControl), opened(classBulk); c != 1 || b != 0 {
		t.Fatalf("streams opened: control %d, bulk %d; want 1, 0", c, b)
	}
	if err := roundTrip(cli.Addr("bgp-bulk").String(), []byte("update")); err != nil {
		t.Fatal(err)
	}
	if c, b := opened(classControl), opened(classBulk); c != 1 || b != 1 {
		t.Fatalf("streams opened: control %d, bulk %d; want 1, 1", c, b)
	}
	says := cli.serverSaid()
	if says["bgp"] != classControl || says["echo"] != classBulk {
		t.Errorf("server's hello said %v", says)
	}
	if _, ok := says["secret"]; ok {
		t.Errorf("the server named a service this client may not open: %v", says)
	}
	want := map[string]string{"bgp": "control service", "bgp-bulk": "bulk explicit"}
	for _, fs := range cli.status().Forwards {
		if got := fs.Class + " " + fs.ClassFrom; got != want[fs.Name] {
			t.Errorf("status of %s: %q, want %q", fs.Name, got, want[fs.Name])
		}
	}
}

// The other way round: the server's forward (on an ephemeral port) to a
// service the client gives the control class rides the client's control
// session.
func TestServerForwardFollowsClientServiceClass(t *testing.T) {
	echo := echoServer(t)
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: `forward "to-edge" {
  listen  = "127.0.0.1:0"
  client  = "edge"
  service = "rtr"
}
`})
	f.startClient(t, pki.Options{CommonName: "edge"}, fmt.Sprintf(`forward "echo" {
  listen = "127.0.0.1:0"
}
service "rtr" {
  target = %q
  class  = "control"
}
`, echo))
	waitFor(t, "both classes' sessions", func() bool {
		held := f.srv.sessions.snapshot()
		var control, bulk bool
		for k := range held {
			control = control || k.class == classControl
			bulk = bulk || k.class == classBulk
		}
		return control && bulk
	})
	if err := roundTrip(f.srv.Addr("to-edge").String(), []byte("open")); err != nil {
		t.Fatal(err)
	}
	for k, sess := range f.srv.sessions.snapshot() {
		want := uint64(0)
		if k.class == classControl {
			want = 1
		}
		if got := sess.Opened(); got != want {
			t.Errorf("server opened %d streams on the %s session, want %d", got, k.class, want)
		}
	}
	if fs := f.srv.status().Forwards; len(fs) != 1 || fs[0].Class != classControl || fs[0].ClassFrom != classFromService {
		t.Errorf("status: %+v", fs)
	}
}

// A client over the server's session limit is told so; the refusal is not
// definite (a session may end any moment), so its local connections still
// wait for a session.
func TestSessionLimitToldNotDefinite(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge", "edge-2"`, extra: "max_sessions = 1\n"})
	first, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "forward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "the first session", func() bool { return first.Session() != nil })
	second, log, _ := f.startClient(t, pki.Options{CommonName: "edge-2"}, "forward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "the second client to say why", func() bool {
		return strings.Contains(log.String(), "the server refused us; retrying") && strings.Contains(log.String(), "its limit (max_sessions)")
	})
	if refused := bulkRefusal(second); refused != nil {
		t.Fatalf("a session limit was taken as definite: %v", refused)
	}
}
