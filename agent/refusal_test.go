package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
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
	// The server logs the refusal once it has sent it, which may be after
	// the client has read it and logged: wait for the server's line too.
	waitFor(t, "the server's refusal line naming its CRL", func() bool {
		l := f.srvLog.String()
		return strings.Contains(l, "client refused") && strings.Contains(l, "(CRL "+crlPath)
	})
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

// A peer with one valid certificate that holds a resumable stream open
// and opens more under its token is refused before the target is dialled:
// each open answered with a refusal, counted (token_held), and logged
// once, however many. The held stream carries on.
func TestReplayedTokenRefusedBeforeDial(t *testing.T) {
	var dialled atomic.Int64
	target := testServer(t, func(c net.Conn) { dialled.Add(1); io.Copy(c, c) })
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: fmt.Sprintf("service \"counted\" {\n  target = %q\n  allow  = [\"hostile\"]\n}\n", target)})
	answered := replayHeldToken(t, hostileClient(t, f, "hostile"), "counted", replayedOpens)
	checkReplayRefused(t, f.srv.metrics, f.srvLog, &dialled, answered)
}

// The same from a hostile server to a client's service: the client
// refuses, counts and logs as a server does.
func TestReplayedTokenRefusedBeforeDialByClient(t *testing.T) {
	var dialled atomic.Int64
	target := testServer(t, func(c net.Conn) { dialled.Add(1); io.Copy(c, c) })
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	addr, sessions := hostileServer(t, f)
	cli, log, _ := f.startClientOf(t, addr, pki.Options{CommonName: "edge"}, fmt.Sprintf("service \"counted\" {\n  target = %q\n}\n", target))
	var sess *mux.Session
	select {
	case sess = <-sessions:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not connect to the hostile server")
	}
	answered := replayHeldToken(t, sess, "counted", replayedOpens)
	checkReplayRefused(t, cli.metrics, log, &dialled, answered)
}

// replayedOpens is how many opens the hostile peers make under a held
// token.
const replayedOpens = 50

// replayHeldToken opens a resumable stream to service on sess, holds it,
// and opens n more under its token; it returns how many of those were
// answered with a refusal (CodeBadHeader), and checks that the held
// stream still carries data after them.
func replayHeldToken(t *testing.T, sess *mux.Session, service string, n int) int {
	t.Helper()
	ctx := context.Background()
	token := mux.Token{0x70, 0x6b}
	held, err := sess.OpenResumable(ctx, service, "", token)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	echoOn(t, held, "held")
	var answered int
	for i := range n {
		st, err := sess.OpenResumable(ctx, service, "", token)
		if err != nil {
			t.Fatal(err)
		}
		_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = st.Read(make([]byte, 1))
		var refusal *mux.OpenError
		if errors.As(err, &refusal) && refusal.Code == mux.CodeBadHeader {
			answered++
		} else if i == 0 {
			t.Errorf("an open under a held token: %v, want a refusal", err)
		}
		st.Close()
	}
	echoOn(t, held, "still held")
	return answered
}

// checkReplayRefused checks the side that was sent replayedOpens opens
// under a held token: each answered with a refusal and counted, its
// target dialled only for the held stream, one line in its log.
func checkReplayRefused(t *testing.T, m *admin.Metrics, log *syncBuffer, dialled *atomic.Int64, answered int) {
	t.Helper()
	if answered != replayedOpens {
		t.Errorf("%d of %d opens under a held token answered with a refusal", answered, replayedOpens)
	}
	if got := dialled.Load(); got != 1 {
		t.Errorf("the target was dialled %d times, want once (the held stream)", got)
	}
	if got := metricValue(t, m.StreamsRefused.WithLabelValues(mux.RefusedTokenHeld)); got != replayedOpens {
		t.Errorf("tunnel_streams_refused_total{kind=token_held} = %v, want %d", got, replayedOpens)
	}
	if c := warnLines(log.String(), "stream refused"); c != 1 {
		t.Errorf("%d refusal lines logged for %d refusals, want 1", c, replayedOpens)
	}
}

// hostileClient is a peer that speaks the protocol itself with a client
// certificate of f's CA named cn: TLS, a hello announcing resume, then
// whatever streams the test opens. It serves nothing.
func hostileClient(t *testing.T, f *fleet, cn string) *mux.Session {
	t.Helper()
	cert, err := f.ca.IssueClient(pki.Options{CommonName: cn})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(f.dir, cn+".crt"), filepath.Join(f.dir, cn+".key")
	if err := cert.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	m, err := ssl.LoadMaterial(certFile, keyFile, filepath.Join(f.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.DialTimeout("tcp", f.srv.Addr("tunnel").String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn := ssl.Client(raw, ssl.ClientConfig(m, "localhost"))
	if err := ssl.Handshake(context.Background(), conn.Conn, 5*time.Second); err != nil {
		raw.Close()
		t.Fatal(err)
	}
	peer, _ := ssl.PeerIdentity(conn.ConnectionState())
	sess, err := mux.Establish(context.Background(), conn, mux.RoleClient, peer, mux.Config{Class: classBulk, Classes: classes, Resumable: true, Instance: "4057113e"})
	if err != nil {
		raw.Close()
		t.Fatal(err)
	}
	var served sync.WaitGroup
	served.Go(func() {
		_ = sess.Serve(context.Background(), func(string) (mux.Service, bool) { return mux.Service{}, false }, nil)
	})
	t.Cleanup(func() { sess.Close(); served.Wait() })
	return sess
}

// hostileServer is a server that speaks the protocol itself with a
// certificate of f's CA: it answers each client's TLS and hello, announcing
// resume, and hands the sessions to the test. It serves nothing.
func hostileServer(t *testing.T, f *fleet) (string, <-chan *mux.Session) {
	t.Helper()
	cert, err := f.ca.IssueServer(pki.Options{CommonName: "hostile-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(f.dir, "hostile-server.crt"), filepath.Join(f.dir, "hostile-server.key")
	if err := cert.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	m, err := ssl.LoadMaterial(certFile, keyFile, filepath.Join(f.dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sessions := make(chan *mux.Session, 16)
	var (
		served sync.WaitGroup
		mu     sync.Mutex
		all    []*mux.Session
		closed bool
	)
	served.Go(func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			served.Go(func() {
				sess := hostileServe(raw, m)
				if sess == nil {
					return
				}
				mu.Lock()
				all = append(all, sess)
				if closed { // up as the test ended
					sess.Close()
				}
				mu.Unlock()
				select {
				case sessions <- sess:
				default:
				}
				_ = sess.Serve(context.Background(), func(string) (mux.Service, bool) { return mux.Service{}, false }, nil)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, sess := range all {
			sess.Close()
		}
		mu.Unlock()
		served.Wait()
	})
	return ln.Addr().String(), sessions
}

// hostileServe runs TLS and the hello as a server on raw, announcing
// resume; nil if either fails.
func hostileServe(raw net.Conn, m *ssl.Material) *mux.Session {
	conn := ssl.Server(raw, ssl.ServerConfig(m))
	if err := ssl.Handshake(context.Background(), conn.Conn, 5*time.Second); err != nil {
		raw.Close()
		return nil
	}
	peer, _ := ssl.PeerIdentity(conn.ConnectionState())
	sess, err := mux.Establish(context.Background(), conn, mux.RoleServer, peer, mux.Config{Classes: classes, Resumable: true, Instance: "5e77e7"})
	if err != nil {
		raw.Close()
		return nil
	}
	return sess
}

// echoOn writes msg on a stream to an echo target and reads it back.
func echoOn(t *testing.T, st *mux.Stream, msg string) {
	t.Helper()
	_ = st.SetDeadline(time.Now().Add(10 * time.Second))
	defer st.SetDeadline(time.Time{})
	if _, err := io.WriteString(st, msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	n, err := st.Read(got) // reads the open's answer first, which clears the deadline
	if err == nil {
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(st, got[n:])
	}
	if err != nil || string(got) != msg {
		t.Fatalf("echo of %q: %q, %v", msg, got, err)
	}
}

// warnLines counts the warning lines of log that contain s.
func warnLines(log, s string) int {
	var n int
	for line := range strings.Lines(log) {
		if strings.Contains(line, "[WARN]") && strings.Contains(line, s) {
			n++
		}
	}
	return n
}
