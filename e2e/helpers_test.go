package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/tunnelworks/tunnel/bench/linkemu"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// waitLimit bounds every wait on a process or a log line.
const waitLimit = 20 * time.Second

// logBuffer collects a process's output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// lines returns the complete lines written so far.
func (b *logBuffer) lines() []string {
	s := b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// proc is one running agent.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{} // closed when the process has exited
	err  error         // from Wait; read only after done
}

// startProc runs bin with args. The process is killed on cleanup if still
// running, and its output is logged if the test failed.
func startProc(t testing.TB, name, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, log: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(waitLimit):
				t.Errorf("%s: still running %s after SIGKILL", name, waitLimit)
			}
		}
		out := p.log.String()
		// A race-built agent prints the report and exits 66 at the end;
		// say so plainly whatever the exit code check made of it.
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("%s: the race detector found a data race (see its output)", name)
		}
		if strings.Contains(out, "panic:") {
			t.Errorf("%s panicked (see its output)", name)
		}
		if t.Failed() || os.Getenv("E2E_LOGS") != "" {
			t.Logf("--- %s output:\n%s", name, out)
		}
	})
	return p
}

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// findLine returns the first line containing every one of subs.
func (p *proc) findLine(subs ...string) (string, bool) {
	for _, l := range p.log.lines() {
		if containsAll(l, subs...) {
			return l, true
		}
	}
	return "", false
}

// countLines counts the lines containing every one of subs.
func (p *proc) countLines(subs ...string) int {
	n := 0
	for _, l := range p.log.lines() {
		if containsAll(l, subs...) {
			n++
		}
	}
	return n
}

// bulkLanes is the bulk sessions a client holds by default
// (bulk_connections).
const bulkLanes = config.DefaultBulkConnections

// sessionsUp counts the "session up" lines containing every one of subs
// of each class's first session: a client's further sessions of a class
// (bulk_connections) log lane=N, so this is one per (re)connect.
func (p *proc) sessionsUp(subs ...string) int {
	n := 0
	for _, l := range p.log.lines() {
		if strings.Contains(l, "session up:") && containsAll(l, subs...) && !strings.Contains(l, " lane=") {
			n++
		}
	}
	return n
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// waitLine waits for a line containing every one of subs and returns it.
func (p *proc) waitLine(t testing.TB, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		exited := !p.running() // checked before reading: the output is then complete
		if l, ok := p.findLine(subs...); ok {
			return l
		}
		if exited {
			t.Fatalf("%s exited (%v) without logging a line with %q", p.name, p.err, subs)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no line with %q within %s", p.name, subs, waitLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMatch waits for a line matching re and returns its submatches.
func (p *proc) waitMatch(t testing.TB, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		exited := !p.running() // checked before reading: the output is then complete
		for _, l := range p.log.lines() {
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		if exited {
			t.Fatalf("%s exited (%v) without logging a line matching %s", p.name, p.err, re)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no line matching %s within %s", p.name, re, waitLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// allMatches returns the submatches of every line matching re.
func (p *proc) allMatches(re *regexp.Regexp) [][]string {
	var out [][]string
	for _, l := range p.log.lines() {
		if m := re.FindStringSubmatch(l); m != nil {
			out = append(out, m)
		}
	}
	return out
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t testing.TB) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(waitLimit):
		t.Fatalf("%s did not exit within %s", p.name, waitLimit)
	}
	return p.cmd.ProcessState.ExitCode()
}

// stop sends SIGTERM and asserts a graceful exit (code 0) within the bound.
func (p *proc) stop(t testing.TB) {
	t.Helper()
	if !p.running() {
		t.Errorf("%s had already exited (%v) before it was told to stop", p.name, p.err)
		return
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(waitLimit):
		t.Errorf("%s did not stop within %s of SIGTERM", p.name, waitLimit)
		return
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("%s exited with code %d after SIGTERM (%v), want 0", p.name, code, p.err)
	}
}

// testPKI is a CA with a server certificate, written into a fresh directory.
type testPKI struct {
	dir        string
	ca         *pki.Cert
	caFile     string
	serverCert string
	serverKey  string
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "e2e CA " + filepath.Base(dir)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{dir: dir, ca: ca, caFile: filepath.Join(dir, "ca.crt"), serverCert: filepath.Join(dir, "server.crt"), serverKey: filepath.Join(dir, "server.key")}
	if err := os.WriteFile(p.caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srv.WriteFiles(p.serverCert, p.serverKey); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientCert issues a client certificate named name and returns its files.
func (p *testPKI) clientCert(t testing.TB, name string, opts pki.Options) (certFile, keyFile string) {
	t.Helper()
	c := p.issueClient(t, name, opts)
	certFile = filepath.Join(p.dir, fmt.Sprintf("%s-%d.crt", name, rand.Uint64()))
	keyFile = strings.TrimSuffix(certFile, ".crt") + ".key"
	if err := c.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func (p *testPKI) issueClient(t testing.TB, name string, opts pki.Options) *pki.Cert {
	t.Helper()
	opts.CommonName = name
	c, err := p.ca.IssueClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// svc is a service block; fwd a forward block (client only on the server).
type svc struct {
	name, target string
	allow        []string
	extra        string // more keys inside the block
}

type fwd struct {
	name, service, client string
	extra                 string // more keys inside the block
}

func hclList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func writeConfig(t testing.TB, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// serverHCL is a server config listening on an ephemeral loopback port.
func serverHCL(cert, key, ca, extra string, services []svc, forwards []fwd) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen = \"127.0.0.1:0\"\n%s\ntls {\n  cert = %q\n  key  = %q\n  ca   = %q\n}\n", extra, cert, key, ca)
	for _, s := range services {
		fmt.Fprintf(&b, "service %q {\n  target = %q\n  allow  = %s\n%s}\n", s.name, s.target, hclList(s.allow), s.extra)
	}
	for _, f := range forwards {
		fmt.Fprintf(&b, "forward %q {\n  listen  = \"127.0.0.1:0\"\n  client  = %q\n  service = %q\n%s}\n", f.name, f.client, f.service, f.extra)
	}
	return b.String()
}

// clientHCL is a client config with forwards on ephemeral loopback ports.
func clientHCL(server, cert, key, ca, extra string, forwards []fwd, services []svc) string {
	var b strings.Builder
	fmt.Fprintf(&b, "server = %q\n%s\ntls {\n  cert        = %q\n  key         = %q\n  ca          = %q\n  server_name = \"localhost\"\n}\n", server, extra, cert, key, ca)
	for _, f := range forwards {
		fmt.Fprintf(&b, "forward %q {\n  listen  = \"127.0.0.1:0\"\n  service = %q\n%s}\n", f.name, f.service, f.extra)
	}
	for _, s := range services {
		fmt.Fprintf(&b, "service %q {\n  target = %q\n", s.name, s.target)
		if len(s.allow) > 0 {
			fmt.Fprintf(&b, "  allow  = %s\n", hclList(s.allow))
		}
		b.WriteString(s.extra)
		b.WriteString("}\n")
	}
	return b.String()
}

var (
	// The tunnel listener's line only: "admin listening: addr=" may come
	// first.
	reListening  = regexp.MustCompile(`: listening: addr=(\S+)`)
	reForwardLst = regexp.MustCompile(`forward listening: forward=(\S+) listen=(\S+)`)
)

// server is a running tunnel-server with its bound addresses.
type server struct {
	*proc
	addr     string            // the tunnel listener
	forwards map[string]string // forward name → listen address
}

// startServer runs tunnel-server with the config text and waits until it listens.
func startServer(t testing.TB, text string) *server {
	t.Helper()
	return startServerBin(t, serverBin, text)
}

// startServerBin is startServer with another tunnel-server binary.
func startServerBin(t testing.TB, bin, text string) *server {
	t.Helper()
	cfg := writeConfig(t, "server.hcl", text)
	p := startProc(t, "tunnel-server", bin, "run", "-config", cfg)
	m := p.waitMatch(t, reListening)
	s := &server{proc: p, addr: m[1], forwards: map[string]string{}}
	for _, f := range p.allMatches(reForwardLst) {
		s.forwards[f[1]] = f[2]
	}
	return s
}

// client is a running tunnel-client with its forwards' addresses.
type client struct {
	*proc
	forwards map[string]string
}

// startClient runs tunnel-client with the config text and waits until all
// its forwards listen (not for the session).
func startClient(t testing.TB, text string, nForwards int) *client {
	t.Helper()
	return startClientBin(t, clientBin, text, nForwards)
}

// startClientBin is startClient with another tunnel-client binary.
func startClientBin(t testing.TB, bin, text string, nForwards int) *client {
	t.Helper()
	cfg := writeConfig(t, "client.hcl", text)
	p := startProc(t, "tunnel-client", bin, "run", "-config", cfg)
	c := &client{proc: p, forwards: map[string]string{}}
	deadline := time.Now().Add(waitLimit)
	for {
		for _, f := range p.allMatches(reForwardLst) {
			c.forwards[f[1]] = f[2]
		}
		if len(c.forwards) >= nForwards {
			return c
		}
		if !p.running() || time.Now().After(deadline) {
			t.Fatalf("tunnel-client: %d of %d forwards listening (exited: %v)", len(c.forwards), nForwards, !p.running())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tunnelSpec describes a server and one client.
type tunnelSpec struct {
	clientName     string // default client-a
	serverExtra    string // top-level server keys
	clientExtra    string // top-level client keys
	services       []svc  // on the server
	serverForwards []fwd
	forwards       []fwd // on the client
	clientServices []svc
	serverBin      string // default: the agents built for these tests
	clientBin      string
	relayed        bool          // the client reaches the server through a pathRelay
	link           *linkemu.Link // if set, the client reaches the server across it
}

type tunnel struct {
	pki    *testPKI
	server *server
	client *client
	relay  *pathRelay // when relayed
}

// startTunnel starts a server and a client and waits until the session is
// up on both sides. Both are stopped on cleanup, asserting a graceful exit.
func startTunnel(t testing.TB, spec tunnelSpec) *tunnel {
	t.Helper()
	if spec.clientName == "" {
		spec.clientName = "client-a"
	}
	if spec.serverBin == "" {
		spec.serverBin = serverBin
	}
	if spec.clientBin == "" {
		spec.clientBin = clientBin
	}
	p := newPKI(t)
	srv := startServerBin(t, spec.serverBin, serverHCL(p.serverCert, p.serverKey, p.caFile, spec.serverExtra, spec.services, spec.serverForwards))
	addr := srv.addr
	var rl *pathRelay
	if spec.relayed {
		rl = startPathRelay(t, srv.addr)
		addr = rl.addr()
	}
	if spec.link != nil {
		var err error
		if addr, err = spec.link.Relay(srv.addr); err != nil {
			t.Fatalf("link relay: %v", err)
		}
	}
	cert, key := p.clientCert(t, spec.clientName, pki.Options{})
	cli := startClientBin(t, spec.clientBin, clientHCL(addr, cert, key, p.caFile, spec.clientExtra, spec.forwards, spec.clientServices), len(spec.forwards))
	cli.waitLine(t, "session up:")
	srv.waitLine(t, "session up:", "peer="+spec.clientName)
	tn := &tunnel{pki: p, server: srv, client: cli, relay: rl}
	t.Cleanup(func() { tn.stop(t) })
	return tn
}

// stop stops the client then the server, each with SIGTERM, asserting exit code 0.
func (tn *tunnel) stop(t testing.TB) {
	t.Helper()
	if tn.client.running() {
		tn.client.stop(t)
	}
	if tn.server.running() {
		tn.server.stop(t)
	}
}

// startTarget runs an in-process TCP service on loopback; handle owns each
// connection. On cleanup the listener and every connection are closed and
// the handlers waited for.
func startTarget(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	addr, stop, err := serveTarget(handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return addr
}

// serveTarget is startTarget for owners other than a test (a testscript):
// stop closes the listener and every connection and waits for the
// handlers.
func serveTarget(handle func(net.Conn)) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			})
		}
	})
	stop = func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	return ln.Addr().String(), stop, nil
}

// echo copies everything back, then half-closes.
func echo(c net.Conn) {
	_, _ = io.Copy(c, c)
	_ = c.(*net.TCPConn).CloseWrite()
}

// startEcho is an echo target.
func startEcho(t testing.TB) string { return startTarget(t, echo) }

// refusedAddr is a loopback address where nothing listens, for the test's
// whole life: the port is bound by a socket that never listens, so a
// parallel test cannot take it over and connections to it are refused.
func refusedAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}

// dial connects to addr with a deadline on the whole connection; the
// connection is closed on cleanup.
func dial(t testing.TB, addr string, limit time.Duration) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(limit))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// sendRandom writes n bytes of deterministic pseudo-random data (by seed)
// and returns their SHA-256.
func sendRandom(w io.Writer, seed uint64, n int64) ([32]byte, error) {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rng := rand.NewChaCha8(s)
	h := sha256.New()
	buf := make([]byte, 64*1024)
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		_, _ = rng.Read(chunk)
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return [32]byte{}, err
		}
		n -= int64(len(chunk))
	}
	return [32]byte(h.Sum(nil)), nil
}

// hashAll reads r to EOF and returns the SHA-256 and length of what it read.
func hashAll(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 64*1024))
	return [32]byte(h.Sum(nil)), n, err
}

// expectClosedNoData asserts that c is closed by the far side without any
// data arriving first (EOF or reset), within the connection's deadline.
func expectClosedNoData(t testing.TB, c net.Conn) {
	t.Helper()
	buf := make([]byte, 1024)
	n, err := c.Read(buf)
	if n > 0 {
		t.Fatalf("got %d bytes (%q), want the connection closed with no data", n, buf[:n])
	}
	var ne net.Error
	switch {
	case err == nil:
		t.Fatal("read returned no data and no error")
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("connection still open: %v", err)
	case err == io.EOF, errors.Is(err, syscall.ECONNRESET):
	default:
		t.Fatalf("read: %v, want EOF or reset", err)
	}
}

// ctxT is a context cancelled when the test ends.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// expectRefused connects to a forward whose stream will be refused: the
// tunnel resets the local connection, which may land before the dial even
// returns, or after it as a read with no data.
func expectRefused(t testing.TB, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		if !isReset(err) {
			t.Fatalf("dial %s: %v, want success or a reset", addr, err)
		}
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	expectClosedNoData(t, c)
}

// upload is a lone upload into a sink target that counts what it read:
// startUpload writes 64 KiB chunks to the forward at addr until finish,
// which half-closes and checks that the target received every byte.
type upload struct {
	c        *net.TCPConn
	stop     chan struct{}
	sent     chan int64
	received chan int64
}

// startSink is a target that reads each connection to its end and
// reports the bytes, for startUpload.
func startSink(t *testing.T) (addr string, received chan int64) {
	received = make(chan int64, 1)
	return startTarget(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		received <- n
	}), received
}

func startUpload(t *testing.T, addr string, received chan int64) *upload {
	u := &upload{c: dial(t, addr, waitLimit), stop: make(chan struct{}), sent: make(chan int64, 1), received: received}
	t.Cleanup(func() { u.c.Close() })
	go func() {
		var n int64
		defer func() { u.sent <- n }()
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1<<16; i++ { // at most 4 GiB, until told to stop
			select {
			case <-u.stop:
				return
			default:
			}
			k, err := u.c.Write(chunk)
			n += int64(k)
			if err != nil {
				return
			}
		}
	}()
	return u
}

// finish stops the writes, half-closes and waits for the target to have
// read every byte.
func (u *upload) finish(t *testing.T) {
	t.Helper()
	close(u.stop)
	n := <-u.sent
	if err := u.c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-u.received:
		if got != n {
			t.Fatalf("the target received %d bytes of %d", got, n)
		}
	case <-time.After(waitLimit):
		t.Fatal("the target did not see the end of the upload")
	}
}
