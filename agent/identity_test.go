package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// fleet is one server and several clients, each with its own certificate,
// on loopback with real TLS.
type fleet struct {
	dir     string
	ca      *pki.Cert
	srv     *Server
	srvLog  *syncBuffer
	clients []*Client
	cliLogs []*syncBuffer
	ctx     context.Context // the clients'
	done    *sync.WaitGroup
	// stopServer stops the server alone (a graceful stop); the clients
	// run on until the test ends.
	stopServer context.CancelFunc
}

// fleetOptions shape the server of a fleet.
type fleetOptions struct {
	allow    string        // the echo service's allow list (HCL list body)
	extra    string        // more server config: forwards, limits
	tlsExtra string        // more lines of the server's tls block
	cert     pki.Options   // the server's certificate (its names are set)
	ca       *pki.Cert     // the CA of both sides; default a new one
	noLanes  bool          // the server speaks no lanes, as one before them
	prepare  func(*Server) // run on the server before it starts
}

// startFleet starts a server with an echo service and opts.
func startFleet(t *testing.T, opts fleetOptions) *fleet {
	t.Helper()
	f := &fleet{dir: t.TempDir(), srvLog: &syncBuffer{}, done: &sync.WaitGroup{}}
	ca := opts.ca
	if ca == nil {
		var err error
		if ca, err = pki.NewRootCA(pki.Options{CommonName: "fleet test CA"}); err != nil {
			t.Fatal(err)
		}
	}
	f.ca = ca
	if err := os.WriteFile(filepath.Join(f.dir, "ca.crt"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	opts.cert.CommonName, opts.cert.DNSNames = "tunnel-server", []string{"localhost"}
	srvCert, err := ca.IssueServer(opts.cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := srvCert.WriteFiles(filepath.Join(f.dir, "server.crt"), filepath.Join(f.dir, "server.key")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.dir, "server.hcl")
	hcl := strings.Replace(serverHCL(echoServer(t), opts.allow, opts.extra), "  ca   = \"ca.crt\"\n", "  ca   = \"ca.crt\"\n"+opts.tlsExtra, 1)
	if err := os.WriteFile(path, []byte(hcl), 0o644); err != nil {
		t.Fatal(err)
	}
	f.srv, _, f.stopServer = runServerWith(t, path, f.srvLog, f.done, func(s *Server) {
		s.noLanes = opts.noLanes
		if opts.prepare != nil {
			opts.prepare(s)
		}
	})
	var stopClients context.CancelFunc
	f.ctx, stopClients = context.WithCancel(context.Background())
	t.Cleanup(func() {
		f.stopServer()
		stopClients()
		f.done.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", f.srvLog)
			for i, l := range f.cliLogs {
				t.Logf("client %d log:\n%s", i, l)
			}
		}
	})
	return f
}

// addClient issues a client certificate with opts and starts a client with
// it: a forward "echo" to the server's echo service and a service "id"
// that answers with reply.
func (f *fleet) addClient(t *testing.T, opts pki.Options, reply string) *Client {
	t.Helper()
	cli, _, _ := f.startClient(t, opts, fmt.Sprintf(`forward "echo" {
  listen = "127.0.0.1:0"
}
service "id" {
  target = %q
}
`, replyServer(t, reply)))
	return cli
}

// startClient starts a client of f with a certificate from f's CA and
// the given config body (forwards, services, settings).
func (f *fleet) startClient(t *testing.T, opts pki.Options, body string) (*Client, *syncBuffer, *pki.Cert) {
	t.Helper()
	return f.startClientOf(t, f.srv.Addr("tunnel").String(), opts, body)
}

// startClientOf is startClient with another server's address (one the
// test plays itself, with a certificate of f's CA).
func (f *fleet) startClientOf(t *testing.T, server string, opts pki.Options, body string) (*Client, *syncBuffer, *pki.Cert) {
	t.Helper()
	n := len(f.clients)
	c, err := f.ca.IssueClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(f.dir, fmt.Sprintf("client%d.crt", n)), filepath.Join(f.dir, fmt.Sprintf("client%d.key", n))
	if err := c.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(f.dir, fmt.Sprintf("client%d.hcl", n))
	if err := os.WriteFile(path, fmt.Appendf(nil, `server = %q
tls {
  cert = %q
  key  = %q
  ca   = "ca.crt"
  server_name = "localhost"
}
%s`, server, certFile, keyFile, body), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadClient(path)
	if err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	cli, err := NewClient(cfg, hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug}))
	if err != nil {
		t.Fatal(err)
	}
	f.clients, f.cliLogs = append(f.clients, cli), append(f.cliLogs, log)
	f.done.Go(func() { _ = cli.Run(f.ctx) })
	<-cli.Ready()
	return cli, log, c
}

// replyServer answers every connection with reply and closes it.
func replyServer(t *testing.T, reply string) string {
	return testServer(t, func(c net.Conn) { io.WriteString(c, reply) })
}

// Two clients with the same CN and two URI-only clients with the same URI
// (four certificates, two readable names) are all served at once, with
// max_sessions_per_identity = 1: none replaces another, streams flow
// through each for seconds, and each session comes up once. A forward
// naming the shared CN picks the most recent session and says once that
// the name is ambiguous.
func TestSameNameClientsAreServedSideBySide(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://corp/router/edge")
	// One session per certificate: the limit must count each certificate
	// on its own, not the shared names.
	f := startFleet(t, fleetOptions{allow: `"edge", "uri:spiffe://corp/router/*"`, extra: `max_sessions_per_identity = 1
forward "back" {
  listen  = "127.0.0.1:0"
  client  = "edge"
  service = "id"
}
`})
	for _, c := range []struct {
		opts  pki.Options
		reply string
	}{
		{pki.Options{CommonName: "edge"}, "edge-first"},
		{pki.Options{URIs: []*url.URL{spiffe}}, "uri-first"},
		{pki.Options{URIs: []*url.URL{spiffe}}, "uri-second"},
		{pki.Options{CommonName: "edge"}, "edge-second"},
	} {
		cli := f.addClient(t, c.opts, c.reply)
		waitFor(t, c.reply+"'s session", func() bool { return cli.Session() != nil })
	}
	first := make([]*mux.Session, len(f.clients))
	for i, c := range f.clients {
		first[i] = c.Session()
	}
	waitFor(t, "four sessions on the server", func() bool { return len(f.srv.sessions.snapshot()) == 4 })

	// Streams through every client for about 5 s.
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		errs   []error
		rounds = make([]int, len(f.clients))
	)
	until := time.Now().Add(5 * time.Second)
	for i, c := range f.clients {
		addr := c.Addr("echo").String()
		wg.Go(func() {
			for n := 0; n < 10000 && time.Now().Before(until); n++ {
				if err := roundTrip(addr, fmt.Appendf(nil, "client %d round %d", i, n)); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("client %d round %d: %w", i, n, err))
					mu.Unlock()
					return
				}
				rounds[i]++
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	for i, c := range f.clients {
		if rounds[i] < 10 {
			t.Errorf("client %d: only %d round trips in 5 s", i, rounds[i])
		}
		if c.Session() != first[i] {
			t.Errorf("client %d: its session was replaced", i)
		}
	}
	log := f.srvLog.String()
	if n := strings.Count(log, "session up"); n != 4 {
		t.Errorf("server logged %d \"session up\", want 4 (one per client)", n)
	}
	if strings.Contains(log, "reconnected") || strings.Contains(log, "replaced") {
		t.Error("server replaced a session of another certificate")
	}
	for i, l := range f.cliLogs {
		if n := strings.Count(l.String(), "session up"); n != 1 {
			t.Errorf("client %d logged %d \"session up\", want 1", i, n)
		}
	}
	// URI-only clients are logged by their URI, never by an empty name.
	if !strings.Contains(log, "peer=spiffe://corp/router/edge") {
		t.Error("server log does not name the URI-only clients by their URI")
	}

	// The forward for "edge" reaches the newest of the two "edge" clients.
	back := f.srv.Addr("back").String()
	for range 3 {
		if got := readAll(t, back); got != "edge-second" {
			t.Fatalf("forward to \"edge\" reached %q, want the most recent session (edge-second)", got)
		}
	}
	if n := strings.Count(f.srvLog.String(), "matches sessions of several certificates"); n != 1 {
		t.Errorf("ambiguity logged %d times, want once per interval", n)
	}

	// Status shows each session's key; names repeat, keys do not.
	keys := map[string]bool{}
	for _, s := range f.srv.status().Sessions {
		if !strings.HasPrefix(s.Key, "sha256:") {
			t.Errorf("status session %q without its key", s.Peer)
		}
		keys[s.Key] = true
	}
	if len(keys) != 4 {
		t.Errorf("status shows %d distinct keys, want 4", len(keys))
	}
}

func readAll(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return string(b)
}

// The per-identity limit counts the sessions of one certificate: another
// certificate with the same name has its own count, and a reconnect of the
// same certificate and class replaces instead of counting.
func TestSessionLimitPerKey(t *testing.T) {
	ca, err := pki.NewRootCA(pki.Options{CommonName: "limit test CA"})
	if err != nil {
		t.Fatal(err)
	}
	issue := func() ssl.Identity {
		c, err := ca.IssueClient(pki.Options{CommonName: "edge"})
		if err != nil {
			t.Fatal(err)
		}
		return ssl.Identity{Leaf: c.Cert}
	}
	a, b := issue(), issue()
	var ss sessionSet
	const max, perIdentity = 10, 1
	if err := ss.admit(a, classBulk, 0, max, perIdentity); err != nil {
		t.Fatal(err)
	}
	ss.put(a, classBulk, 0, &mux.Session{Peer: a}, nil, perIdentity)
	if err := ss.admit(a, classBulk, 0, max, perIdentity); err != nil {
		t.Fatalf("a reconnect of the same certificate and class was refused: %v", err)
	}
	err = ss.admit(a, classControl, 0, max, perIdentity)
	if err == nil || !strings.Contains(err.Error(), "max_sessions_per_identity") || !strings.Contains(err.Error(), a.Key()) {
		t.Fatalf("a second session of one certificate: %v", err)
	}
	// Another lane of the class is another session.
	if err := ss.admit(a, classBulk, 1, max, perIdentity); err == nil {
		t.Fatal("a second lane passed a limit of one session")
	}
	if err := ss.admit(b, classBulk, 0, max, perIdentity); err != nil {
		t.Fatalf("another certificate of the same name counted against the first: %v", err)
	}
	if old, _, _ := ss.put(b, classBulk, 0, &mux.Session{Peer: b}, nil, perIdentity); old != nil {
		t.Fatal("a certificate of the same name replaced another's session")
	}
	if got := len(ss.snapshot()); got != 2 {
		t.Fatalf("%d sessions held, want 2", got)
	}
	if s, certs := ss.find(clientMatcher("edge"), classBulk); s == nil || certs != 2 {
		t.Fatalf("find by shared name: session %v, %d certificates, want 2", s, certs)
	}
	if s, certs := ss.find(clientMatcher(b.Key()), classBulk); s == nil || s.Peer.Key() != b.Key() || certs != 1 {
		t.Fatal("find by sha256: pin did not pick that certificate alone")
	}
	// b's second lane replaces nothing, and a tie goes to lane 0.
	lane1 := &mux.Session{Peer: b}
	if err := ss.admit(b, classBulk, 1, max, 2); err != nil {
		t.Fatal(err)
	}
	if old, _, _ := ss.put(b, classBulk, 1, lane1, nil, 2); old != nil {
		t.Fatal("a second lane replaced the first")
	}
	if s, _ := ss.find(clientMatcher(b.Key()), classBulk); s == nil || s == lane1 {
		t.Fatal("find on a tie did not pick lane 0")
	}
	if old, _, _ := ss.put(b, classBulk, 1, &mux.Session{Peer: b}, nil, 2); old != lane1 {
		t.Fatal("a reconnect of lane 1 did not replace lane 1")
	}

	// A further lane before lane 0 of its class is refused, whatever the
	// limit: admitted, it could hold the certificate's last session and
	// keep lane 0 out (a race seen when lane 0's admission was slow).
	c := issue()
	err = ss.admit(c, classBulk, 1, max, 2)
	if err == nil || !strings.Contains(err.Error(), "no first session of class bulk") {
		t.Fatalf("lane 1 before lane 0: %v, want refused", err)
	}
	if err := ss.admit(c, classBulk, 0, max, 1); err != nil {
		t.Fatalf("lane 0 of a certificate with nothing up: %v", err)
	}
	ss.put(c, classBulk, 0, &mux.Session{Peer: c}, nil, 1)
	if err := ss.admit(c, classBulk, 1, max, 2); err != nil {
		t.Fatalf("lane 1 after lane 0, within the limit: %v", err)
	}
}

// A client whose certificate expires loses its session when it does, the
// server says why, and the client's reconnect is refused in the handshake.
func TestSessionEndsWhenClientCertificateExpires(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	end := time.Now().Add(4 * time.Second).Truncate(time.Second) // certificates count whole seconds
	cli := f.addClient(t, pki.Options{CommonName: "edge", NotAfter: end}, "edge")
	waitFor(t, "the session", func() bool { return cli.Session() != nil })
	waitUntil(t, end.Add(20*time.Second), "the server to close the expired client's session", func() bool {
		return strings.Contains(f.srvLog.String(), "closing session: its peer's certificate is no longer valid")
	})
	waitFor(t, "the session's end", func() bool { return strings.Contains(f.srvLog.String(), "session ended") })
	log := f.srvLog.String()
	ended := false
	for _, line := range strings.Split(log, "\n") {
		ended = ended || strings.Contains(line, "session ended") && strings.Contains(line, `reason="peer certificate \"edge\" expired`)
	}
	if !strings.Contains(log, `peer certificate \"edge\" expired`) || !ended {
		t.Errorf("server log does not say the session ended because the certificate expired:\n%s", log)
	}
	// The server told the client why before it closed.
	waitFor(t, "the client to say why its session ended", func() bool {
		return strings.Contains(f.cliLogs[0].String(), `session ended; reconnecting`) && strings.Contains(f.cliLogs[0].String(), `reason="the server refused us: your certificate \"edge\" expired`)
	})
	if time.Now().Before(end) {
		t.Error("session closed before the certificate's end")
	}
	waitFor(t, "the refused reconnect", func() bool {
		return strings.Contains(f.srvLog.String(), "client refused") && strings.Contains(f.cliLogs[0].String(), "cannot reach server; retrying")
	})
	if cli.Session() != nil {
		t.Error("client with an expired certificate has a session")
	}
}

// The client likewise cuts its session when the server's certificate
// expires, and refuses the server from then on.
func TestSessionEndsWhenServerCertificateExpires(t *testing.T) {
	end := time.Now().Add(4 * time.Second).Truncate(time.Second) // certificates count whole seconds
	f := startFleet(t, fleetOptions{allow: `"edge"`, cert: pki.Options{NotAfter: end}})
	cli := f.addClient(t, pki.Options{CommonName: "edge"}, "edge")
	waitFor(t, "the session", func() bool { return cli.Session() != nil })
	cliLog := f.cliLogs[0]
	waitUntil(t, end.Add(20*time.Second), "the client to close its session", func() bool {
		return strings.Contains(cliLog.String(), "closing session: its peer's certificate is no longer valid")
	})
	if !strings.Contains(cliLog.String(), `peer certificate \"tunnel-server\" expired`) {
		t.Errorf("client log does not say why:\n%s", cliLog)
	}
	waitFor(t, "the client to refuse the server", func() bool {
		return strings.Contains(cliLog.String(), "cannot reach server; retrying") && strings.Contains(cliLog.String(), "expired")
	})
}

// With crl_stale = "refuse", a session ends when the CRL covering its
// client passes its next update; with a fresh CRL reloaded in time, it
// does not.
func TestSessionEndsWhenCRLGoesStale(t *testing.T) {
	ca, err := pki.NewRootCA(pki.Options{CommonName: "fleet test CA"})
	if err != nil {
		t.Fatal(err)
	}
	crlPath := filepath.Join(t.TempDir(), "ca.crl")
	writeCRL := func(number int64, next time.Time) {
		t.Helper()
		pem, err := ca.NewCRL(nil, big.NewInt(number), time.Now().Add(-time.Hour), next)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crlPath, pem, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	next := time.Now().Add(4 * time.Second)
	writeCRL(1, next)
	f := startFleet(t, fleetOptions{ca: ca, allow: `"edge"`, tlsExtra: fmt.Sprintf("  crl = [%q]\n  crl_stale = \"refuse\"\n", crlPath)})
	cli := f.addClient(t, pki.Options{CommonName: "edge"}, "edge")
	waitFor(t, "the session", func() bool { return cli.Session() != nil })
	waitUntil(t, next.Add(20*time.Second), "the server to close the session", func() bool {
		return strings.Contains(f.srvLog.String(), "closing session: its peer's certificate is no longer valid")
	})
	if log := f.srvLog.String(); !strings.Contains(log, "covering the peer passed its next update") || !strings.Contains(log, `crl_stale = \"refuse\"`) {
		t.Errorf("server log does not say the CRL went stale:\n%s", log)
	}
	waitFor(t, "the refused reconnect", func() bool {
		return strings.Contains(f.srvLog.String(), "client refused") && strings.Contains(f.srvLog.String(), "is stale")
	})
	// A fresh CRL, reloaded, lets the client back in.
	writeCRL(2, time.Now().Add(time.Hour))
	if err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session back", func() bool { return cli.Session() != nil })
}

// waitUntil polls cond until deadline.
func waitUntil(t *testing.T, deadline time.Time, what string, cond func() bool) {
	t.Helper()
	for ; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// A new session with the same certificate and class replaces the old one
// at once (here the client rotates its session; a reconnect is the same).
func TestSameCertificateReplacesItsSession(t *testing.T) {
	r := startRig(t)
	old := r.cli.Session()
	// A stream in flight keeps the old session draining while the new one
	// comes up.
	c, err := net.Dial("tcp", r.cli.Addr("echo").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	r.cli.keeperFor(classBulk).rotate()
	waitFor(t, "the replacement", func() bool {
		return strings.Contains(r.srvLog.String(), "client reconnected; draining its previous session")
	})
	waitFor(t, "the client's new session", func() bool { s := r.cli.Session(); return s != nil && s != old })
	// One session per lane of the class (bulk_connections, 2 by default).
	snap := r.srv.sessions.snapshot()
	if len(snap) > r.cli.cfg().BulkConnections {
		t.Fatalf("server holds %d sessions for one certificate, want one per lane (%d)", len(snap), r.cli.cfg().BulkConnections)
	}
	for k, s := range snap {
		if k.key != s.Peer.Key() || s.Peer.Name() != "client-a" || k.class != classBulk || k.lane >= r.cli.cfg().BulkConnections {
			t.Fatalf("server holds a session of %q under %+v", s.Peer.Name(), k)
		}
	}
	if err := roundTrip(r.cli.Addr("echo").String(), []byte("after the replacement")); err != nil {
		t.Fatal(err)
	}
}

// Sessions a reconnect replaced count until they have drained: against
// max_sessions, and within a bound per certificate that put enforces by
// handing back the draining sessions to end at once.
func TestReplacedSessionsDrainingAreBounded(t *testing.T) {
	ca, err := pki.NewRootCA(pki.Options{CommonName: "drain test CA"})
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string) ssl.Identity {
		c, err := ca.IssueClient(pki.Options{CommonName: name})
		if err != nil {
			t.Fatal(err)
		}
		return ssl.Identity{Leaf: c.Cert}
	}
	a, b := issue("edge"), issue("edge-2")
	var ss sessionSet
	const perIdentity = 2
	put := func(id ssl.Identity, class string, lane int) (*mux.Session, *mux.Session, []heldSession) {
		t.Helper()
		s := &mux.Session{Peer: id}
		old, ended, _ := ss.put(id, class, lane, s, nil, perIdentity)
		return s, old, ended
	}
	// A client that reconnects once: its old session drains beside the
	// new one, and counts against max_sessions meanwhile.
	first, _, _ := put(a, classBulk, 0)
	second, old, ended := put(a, classBulk, 0)
	if old != first || len(ended) != 0 {
		t.Fatalf("a reconnect replaced %p (want %p) and ended %d draining sessions, want none", old, first, len(ended))
	}
	if got := len(ss.held()); got != 2 {
		t.Fatalf("%d sessions held, want the new one and the one draining", got)
	}
	err = ss.admit(b, classBulk, 0, 2, perIdentity)
	if err == nil || !strings.Contains(err.Error(), "1 of them replaced and draining") {
		t.Fatalf("another client past max_sessions counting a draining session: %v", err)
	}
	// Again in the same place: the first replaced one ends at once.
	if _, old, ended := put(a, classBulk, 0); old != second || len(ended) != 1 || ended[0].s != first {
		t.Fatalf("a second reconnect ended %+v, want the first session", ended)
	}
	// Draining in other places: at most perIdentity of one certificate,
	// its oldest ended first; another certificate's are not touched.
	bs, _, _ := put(b, classBulk, 0)
	put(b, classBulk, 0)
	put(a, classControl, 0)
	if _, _, ended := put(a, classControl, 0); len(ended) != 0 {
		t.Fatalf("two draining sessions in two places ended %d, want none (the limit is %d)", len(ended), perIdentity)
	}
	ss.remove(a, classControl, 0, ss.m[sessionKey{a.Key(), classControl, 0}])
	put(a, classBulk, 1)
	_, _, ended = put(a, classBulk, 1)
	if len(ended) != 1 || ended[0].s != second {
		t.Fatalf("a third place draining ended %+v, want the oldest (%p)", ended, second)
	}
	n := 0
	for _, d := range ss.draining {
		if d.key == a.Key() {
			n++
		}
		if d.s == bs {
			bs = nil
		}
	}
	if n != perIdentity || bs != nil {
		t.Fatalf("%d draining sessions of one certificate, want %d, and the other's kept (%v)", n, perIdentity, bs == nil)
	}
	// A draining session that ends leaves the count.
	for _, d := range slices.Clone(ss.draining) {
		ss.remove(d.s.Peer, d.class, d.lane, d.s)
	}
	if len(ss.draining) != 0 {
		t.Fatalf("%d draining sessions left after they all ended", len(ss.draining))
	}
}

// A client that reconnects in a loop, each session holding open streams,
// cannot pile up sessions on the server: a session it replaced drains
// beside its successor (a single reconnect loses nothing), but one
// replaced again while draining ends at once, its streams cut rather
// than ended cleanly, and counted. The drain would otherwise keep each
// for a minute here.
func TestReconnectLoopCannotPileUpSessions(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: "drain_timeout = \"60s\"\n"})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "")
	// Sessions of a keeper that is not run: nothing reconnects them but
	// this test, in the control class, where the client has none.
	hostile := newKeeper(cli, classControl, 0, nil)
	addr := f.srv.Addr("tunnel").String()
	var sessions []*mux.Session
	t.Cleanup(func() {
		for _, s := range sessions {
			s.Close()
		}
	})
	const perSession, reconnects = 4, 8
	streams := make([][]*mux.Stream, 0, reconnects)
	held := func() float64 { return metricValue(t, f.srv.metrics.Sessions.WithLabelValues(classControl)) }
	for i := range reconnects {
		sess, err := hostile.connect(f.ctx, addr)
		if err != nil {
			t.Fatalf("reconnect %d: %v", i, err)
		}
		sessions = append(sessions, sess)
		var open []*mux.Stream
		for range perSession {
			st := openEcho(t, sess)
			open = append(open, st)
		}
		streams = append(streams, open)
		// The one it replaced drains: its streams still carry data.
		if i > 0 {
			echoOn(t, streams[i-1][0], "still draining")
		}
		waitFor(t, "the server to hold at most 2 sessions of the client", func() bool { return held() <= 2 })
	}
	// Those replaced twice were ended, their streams cut, not at their end.
	for i, open := range streams[:reconnects-2] {
		open[0].SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(open[0]); !errors.Is(err, mux.ErrSessionLost) {
			t.Fatalf("a stream of session %d, replaced twice: read %v, want it cut with its session", i, err)
		}
	}
	ended := f.srv.metrics.SessionsEnded.WithLabelValues(classControl, "drain_limit")
	waitFor(t, "the ended sessions counted", func() bool { return metricValue(t, ended) == reconnects-2 })
	if n := strings.Count(f.srvLog.String(), "faster than they drain; ending a replaced one at once"); n != 1 {
		t.Errorf("%d lines about ending replaced sessions, want 1 per interval", n)
	}
	if got := held(); got != 2 {
		t.Errorf("server holds %v control sessions of the client, want the last one and the one it replaced", got)
	}
	if st := f.srv.status(); len(st.Draining) != 1 || st.Draining[0].Class != classControl {
		t.Errorf("/status lists %d draining sessions (%+v), want the one replaced last", len(st.Draining), st.Draining)
	}
}

// openEcho opens a stream to the echo service on sess and sees it answer.
func openEcho(t *testing.T, sess *mux.Session) *mux.Stream {
	t.Helper()
	st, err := sess.Open(context.Background(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	echoOn(t, st, "ping")
	return st
}
