package mux

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tlsPair returns a handshaken server and client TLS connection over real
// loopback TCP, with the peers' identities.
func tlsPair(t *testing.T, clientName string) (srv, cli *tls.Conn, srvPeer, cliPeer ssl.Identity) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "mux test CA"})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	s, _ := ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	c, _ := ca.IssueClient(pki.Options{CommonName: clientName})
	load := func(name string, x *pki.Cert) *ssl.Material {
		if err := x.WriteFiles(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")); err != nil {
			t.Fatal(err)
		}
		if err := writeFile(caFile, ca.CertPEM()); err != nil {
			t.Fatal(err)
		}
		m, err := ssl.LoadMaterial(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), caFile)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	sm, cm := load("server", s), load("client", c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errs := make(chan error, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			errs <- err
			return
		}
		srv = tls.Server(raw, ssl.ServerConfig(sm))
		errs <- ssl.Handshake(context.Background(), srv, 5*time.Second)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cli = tls.Client(raw, ssl.ClientConfig(cm, "localhost"))
	if err := ssl.Handshake(context.Background(), cli, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	srvPeer, _ = ssl.PeerIdentity(srv.ConnectionState())
	cliPeer, _ = ssl.PeerIdentity(cli.ConnectionState())
	t.Cleanup(func() { srv.Close(); cli.Close() })
	return srv, cli, srvPeer, cliPeer
}

// sessions establishes both ends; the server side's peer is the client.
func sessions(t *testing.T, clientName string, cfg Config) (server, client *Session) {
	t.Helper()
	return sessionsWith(t, clientName, cfg, cfg)
}

// sessionsWith is sessions with a config for each side.
func sessionsWith(t *testing.T, clientName string, srvCfg, cliCfg Config) (server, client *Session) {
	t.Helper()
	srvConn, cliConn, srvPeer, cliPeer := tlsPair(t, clientName)
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, srvCfg)
		ch <- res{s, err}
	}()
	client, err := Establish(context.Background(), cliConn, RoleClient, cliPeer, cliCfg)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { client.Close(); r.s.Close() })
	return r.s, client
}

// echoTarget is a loopback TCP echo server.
func echoTarget(t *testing.T) string {
	t.Helper()
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
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

func dialTo(addr string) func(ctx context.Context, req Request) (net.Conn, error) {
	return func(ctx context.Context, req Request) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// serve runs the accept loop of s with the given services; accepted streams
// are piped to their target by a plain copy.
func serve(t *testing.T, s *Session, svcs map[string]Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ctx, func(name string) (Service, bool) { v, ok := svcs[name]; return v, ok },
			func(ctx context.Context, _ string, st *Stream, target net.Conn) {
				var wg sync.WaitGroup
				wg.Go(func() {
					io.Copy(target, st)
					if tc, ok := target.(*net.TCPConn); ok {
						tc.CloseWrite()
					}
				})
				io.Copy(st, target)
				st.CloseWrite()
				wg.Wait()
				target.Close()
				st.Close()
			})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func allowOnly(name string) func(ssl.Identity) bool {
	return func(id ssl.Identity) bool { return id.Is(name) }
}

func TestStreamsBothWays(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	echo := echoTarget(t)
	serve(t, server, map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echo)}})
	serve(t, client, map[string]Service{"back": {Allowed: allowOnly("tunnel-server"), Dial: dialTo(echo)}})
	for _, tc := range []struct {
		from    *Session
		service string
	}{{client, "echo"}, {server, "back"}} {
		st, err := tc.from.Open(context.Background(), tc.service, "")
		if err != nil {
			t.Fatal(err)
		}
		msg := bytes.Repeat([]byte(tc.service), 100_000)
		go func() { st.Write(msg); st.CloseWrite() }()
		got, err := io.ReadAll(st)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%s: got %d bytes, %v", tc.service, len(got), err)
		}
	}
	if client.PeerHello.Role != RoleServer || server.PeerHello.Role != RoleClient {
		t.Fatal("hello roles wrong")
	}
}

func TestRefusals(t *testing.T) {
	var mu sync.Mutex
	kinds := map[string]string{} // service -> kind reported
	server, client := sessions(t, "client-a", Config{OnRefuse: func(kind, service string, err error, n int) {
		mu.Lock()
		kinds[service] = kind
		mu.Unlock()
	}})
	echo := echoTarget(t)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := ln.Addr().String()
	ln.Close()
	serve(t, server, map[string]Service{
		"echo":   {Allowed: allowOnly("client-a"), Dial: dialTo(echo)},
		"secret": {Allowed: allowOnly("client-b"), Dial: dialTo(echo)},
		"nobody": {Dial: dialTo(echo)},
		"down":   {Allowed: allowOnly("client-a"), Dial: dialTo(refused)},
	})
	// Unknown and denied look the same to the peer: it cannot tell which
	// services exist. Only the report says which.
	for _, tc := range []struct {
		service string
		code    Code
		msg     string
		kind    string
	}{
		{"secret", CodeDenied, `service "secret" is not available to you`, RefusedDenied},
		{"nobody", CodeDenied, `service "nobody" is not available to you`, RefusedDenied},
		{"missing", CodeDenied, `service "missing" is not available to you`, RefusedUnknown},
		{"down", CodeDialFailed, "connection refused", RefusedDialFailed},
	} {
		st, err := client.Open(context.Background(), tc.service, "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = st.Read(make([]byte, 10))
		var oe *OpenError
		if !errors.As(err, &oe) || oe.Code != tc.code || !strings.Contains(oe.Msg, tc.msg) {
			t.Errorf("%s: err = %v, want %s containing %q", tc.service, err, tc.code, tc.msg)
		}
		st.Close()
		mu.Lock()
		if kinds[tc.service] != tc.kind {
			t.Errorf("%s: reported as %q, want %q", tc.service, kinds[tc.service], tc.kind)
		}
		mu.Unlock()
	}
	// The session survives every refusal.
	st, err := client.Open(context.Background(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("still here"))
	st.CloseWrite()
	if got, err := io.ReadAll(st); err != nil || string(got) != "still here" {
		t.Fatalf("after refusals: %q, %v", got, err)
	}
}

func TestMalformedHeaderRefusedSessionLives(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	echo := echoTarget(t)
	serve(t, server, map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echo)}})
	for _, bad := range [][]byte{{9, 1, 'x'}, {1, 0, 0}, {1, 3, 'a', '/', 'b', 0}, {1, 1, 'a', 200}} {
		y, err := client.y.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		y.Write(bad)
		code, _, err := readReply(y)
		if err != nil || code != CodeBadHeader {
			t.Errorf("header %q: code %v, err %v", bad, code, err)
		}
		y.Close()
	}
	st, _ := client.Open(context.Background(), "echo", "")
	st.Write([]byte("ok"))
	st.CloseWrite()
	if got, _ := io.ReadAll(st); string(got) != "ok" {
		t.Fatalf("session broken after bad headers: %q", got)
	}
}

// A stream whose FIN arrived before its session closed reads its data,
// then io.EOF, though the session is gone by the time it reads: as when a
// draining peer closes the session right after the last stream ends.
func TestFINBeforeSessionLossIsEOF(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	serve(t, server, map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echoTarget(t))}})
	st, err := client.Open(context.Background(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("last words"))
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "last words" {
		t.Fatalf("echo: %q, %v", got, err)
	}
	if server.NumStreams() != 1 {
		t.Fatalf("the server holds %d streams, want 1", server.NumStreams())
	}
	st.CloseWrite()
	// The server's side ends once it sent its FIN; the session goes next.
	deadline := time.Now().Add(20 * time.Second)
	for server.NumStreams() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the server's stream never ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := server.y.Ping(); err != nil { // behind the FIN: it has arrived
		t.Fatal(err)
	}
	server.CloseWithReason(errors.New("drained"))
	<-client.Done()
	rest, err := io.ReadAll(st)
	if err != nil || len(rest) != 0 {
		t.Fatalf("read after the FIN, then the session's end: %q, %v; want a clean EOF", rest, err)
	}
}

func TestSessionLostIsAnErrorNotEOF(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	block := make(chan struct{})
	defer close(block)
	serve(t, server, map[string]Service{"hang": {Allowed: allowOnly("client-a"), Dial: func(ctx context.Context, req Request) (net.Conn, error) {
		a, b := net.Pipe()
		go func() { <-block; b.Close() }()
		return a, nil
	}}})
	st, err := client.Open(context.Background(), "hang", "")
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("x"))
	go func() {
		time.Sleep(100 * time.Millisecond)
		server.CloseWithReason(errors.New("test kills the session"))
	}()
	_, err = io.ReadAll(st)
	if !errors.Is(err, ErrSessionLost) {
		t.Fatalf("read after session loss: %v, want ErrSessionLost", err)
	}
	<-client.Done()
}

func TestHelloMismatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write []byte
		want  string
	}{
		{"other version", append([]byte("TUNL\x02\x00\x02"), "{}"...), "version 2, we speak 1"},
		{"not a tunnel", []byte("GET / HTTP/1.1\r\n"), "does not speak the tunnel protocol"},
		{"bad json", append([]byte("TUNL\x01\x00\x03"), "{x}"...), "malformed hello"},
		{"huge body", []byte("TUNL\x01\xff\xff"), "over the 16384 byte limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvConn, cliConn, srvPeer, _ := tlsPair(t, "client-a")
			go func() {
				cliConn.Write(tc.write)
				io.Copy(io.Discard, cliConn)
			}()
			_, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, Config{HelloTimeout: 2 * time.Second})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			srvConn.Close()
		})
	}
}

func TestHelloTimeoutAndSameRole(t *testing.T) {
	srvConn, cliConn, srvPeer, cliPeer := tlsPair(t, "client-a")
	_, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, Config{HelloTimeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no hello within 200ms") {
		t.Fatalf("err = %v", err)
	}
	_ = cliPeer
	srvConn2, cliConn2, srvPeer2, cliPeer2 := tlsPair(t, "client-a")
	done := make(chan error, 1)
	// Two clients: both write first, so each reads the other's role (two
	// servers cannot meet: a server never dials).
	go func() {
		_, err := Establish(context.Background(), cliConn2, RoleClient, cliPeer2, Config{})
		done <- err
	}()
	_, err = Establish(context.Background(), srvConn2, RoleClient, srvPeer2, Config{})
	if err == nil || !strings.Contains(err.Error(), "also a client agent") {
		t.Fatalf("err = %v", err)
	}
	<-done
	cliConn.Close()
}

// silentConn stops delivering the peer's bytes, as a blackholed link does.
func TestDeadPeerDetected(t *testing.T) {
	srvConn, cliConn, srvPeer, cliPeer := tlsPair(t, "client-a")
	cfg := Config{PingAfter: 100 * time.Millisecond, DeadAfter: 400 * time.Millisecond}
	ch := make(chan *Session, 1)
	go func() {
		s, _ := Establish(context.Background(), srvConn, RoleServer, srvPeer, cfg)
		ch <- s
	}()
	// The client completes the hello, then never reads or answers again.
	if _, err := exchangeHello(context.Background(), cliConn, RoleClient, Hello{Role: RoleClient}, Config{HelloTimeout: time.Second}); err != nil {
		t.Fatal(err)
	}
	server := <-ch
	defer server.Close()
	select {
	case <-server.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("silent peer not declared dead")
	}
	if err := server.Err(); err == nil || !strings.Contains(err.Error(), "peer silent") {
		t.Fatalf("reason = %v", err)
	}
	_ = cliPeer
}

func TestBusyPeerIsAlive(t *testing.T) {
	// Bytes flowing count as liveness even when pings would be delayed.
	cfg := Config{PingAfter: 50 * time.Millisecond, DeadAfter: 300 * time.Millisecond}
	server, client := sessions(t, "client-a", cfg)
	echo := echoTarget(t)
	serve(t, server, map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echo)}})
	st, err := client.Open(context.Background(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	for i := 0; i < 20; i++ { // about 1 s, longer than DeadAfter
		st.Write([]byte("ping"))
		if _, err := io.ReadFull(st, buf); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if server.Err() != nil || client.Err() != nil {
		t.Fatal(server.Err(), client.Err())
	}
	st.Close()
}

// acceptedStreams serves s, allowing client-a every service name with
// targets from dial, and hands each accepted stream over; the target stays
// open until the test ends, when serving stops.
func acceptedStreams(t *testing.T, s *Session, dial func(context.Context, Request) (net.Conn, error)) <-chan *Stream {
	accepted := make(chan *Stream, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ctx, func(string) (Service, bool) {
			return Service{Allowed: allowOnly("client-a"), Dial: dial}, true
		}, func(ctx context.Context, _ string, st *Stream, target net.Conn) {
			accepted <- st
			<-ctx.Done()
			target.Close()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return accepted
}

// pipeTarget is a target nobody reads: one end of a net.Pipe.
func pipeTarget(context.Context, Request) (net.Conn, error) { a, _ := net.Pipe(); return a, nil }

func TestAbortReachesThePeer(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	targetSide := acceptedStreams(t, server, pipeTarget)
	st, err := client.Open(context.Background(), "any", "")
	if err != nil {
		t.Fatal(err)
	}
	peer := <-targetSide
	// The accepting side blocks writing (nobody reads: the window fills),
	// and must be released by our abort.
	writeErr := make(chan error, 1)
	go func() {
		big := make([]byte, 1<<20)
		for {
			if _, err := peer.Write(big); err != nil {
				writeErr <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	st.Abort()
	select {
	case err := <-writeErr:
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("peer write error = %v, want ErrAborted", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("abort did not reach the peer")
	}
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, ErrAborted) {
		t.Fatalf("peer read error = %v, want ErrAborted", err)
	}
	peer.Close()
}

func TestDrainWaitsForStreamsAndRefusesNewOnes(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	echo := echoTarget(t)
	serve(t, server, map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echo)}})
	serve(t, client, map[string]Service{})
	st, err := client.Open(context.Background(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("a"))
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	drained := make(chan error, 1)
	go func() { drained <- server.Drain(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-drained:
		t.Fatalf("drain returned with a stream open: %v", err)
	default:
	}
	// The peer is told at once, before it tries to open anything; then its
	// opens fail here, without a round trip, and the open stream still works.
	select {
	case <-client.PeerDraining():
	case <-time.After(5 * time.Second):
		t.Fatal("the client was not told the server is draining")
	}
	if _, err := client.Open(context.Background(), "echo", ""); !errors.Is(err, ErrDraining) {
		t.Fatalf("open after the drain notice: %v, want ErrDraining", err)
	}
	st.Write([]byte("b"))
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatalf("open stream broken by drain: %v", err)
	}
	st.CloseWrite()
	io.ReadAll(st)
	st.Close()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("drain did not finish; %d streams", server.NumStreams())
	}
}

func TestMaxStreamsRefusesBusy(t *testing.T) {
	server, client := sessions(t, "client-a", Config{MaxStreams: 2})
	echo := echoTarget(t)
	serve(t, server, map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echo)}})
	var open []*Stream
	for i := 0; i < 2; i++ {
		st, _ := client.Open(context.Background(), "echo", "")
		st.Write([]byte("x"))
		if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		open = append(open, st)
	}
	// The third is reset before a word of answer, by yamux (before it
	// allocates anything) or by us.
	st, _ := client.Open(context.Background(), "echo", "")
	if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrAborted) || !strings.Contains(err.Error(), "stream limit") {
		t.Fatalf("third stream: %v, want a reset that names the stream limit", err)
	}
	st.Close()
	for _, s := range open {
		s.Close()
	}
}

func TestUnknownAndDeniedIdenticalOnTheWire(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	echo := echoTarget(t)
	serve(t, server, map[string]Service{"secret": {Allowed: allowOnly("client-b"), Dial: dialTo(echo)}})
	reply := func(name string) []byte {
		t.Helper()
		y, err := client.y.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		defer y.Close()
		hdr, _ := encodeHeader(name, "", nil)
		if _, err := y.Write(hdr); err != nil {
			t.Fatal(err)
		}
		y.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(y)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.ReplaceAll(got, []byte(name), []byte("NAME"))
	}
	denied, unknown := reply("secret"), reply("absent") // names of one length
	if !bytes.Equal(denied, unknown) {
		t.Fatalf("denied answered %q, unknown %q: a peer can tell them apart", denied, unknown)
	}
	if Code(denied[0]) != CodeDenied {
		t.Fatalf("code %d, want denied", denied[0])
	}
}

func TestReplacedNotice(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	serve(t, server, map[string]Service{})
	serve(t, client, map[string]Service{})
	server.NotifyReplaced()
	select {
	case <-client.PeerReplaced():
	case <-time.After(10 * time.Second):
		t.Fatal("replaced notice not delivered")
	}
	select {
	case <-client.PeerDraining():
		t.Fatal("a replaced notice alone says draining")
	default:
	}
	// The drain that follows arrives after it, in order.
	go server.Drain(context.Background())
	select {
	case <-client.PeerDraining():
	case <-time.After(10 * time.Second):
		t.Fatal("drain notice not delivered")
	}
	select {
	case <-server.PeerReplaced():
		t.Fatal("the server was told it was replaced")
	default:
	}
}

// hostileHello completes TLS and sends hello h from the client side, and
// returns what the server's Establish said.
func hostileHello(t *testing.T, h Hello, cfg Config) error {
	t.Helper()
	srvConn, cliConn, srvPeer, _ := tlsPair(t, "client-a")
	msg, err := encodeHello(h)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		cliConn.Write(msg)
		io.Copy(io.Discard, cliConn)
	}()
	sess, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, cfg)
	if sess != nil {
		sess.Close()
	}
	srvConn.Close()
	return err
}

func TestHelloValidated(t *testing.T) {
	long := strings.Repeat("x", 5000)
	classes := Config{Classes: []string{"control", "bulk"}, HelloTimeout: 5 * time.Second}
	for _, tc := range []struct {
		name string
		h    Hello
		want string
	}{
		{"no role", Hello{Class: "bulk"}, `peer's hello names role "", not "client"`},
		{"odd role", Hello{Role: "admin", Class: "bulk"}, `peer's hello names role "admin", not "client"`},
		{"unknown class", Hello{Role: RoleClient, Class: "gold"}, `peer's hello names traffic class "gold", not one of ["control" "bulk"]`},
		{"no class", Hello{Role: RoleClient}, `traffic class "", not one of`},
		{"long class", Hello{Role: RoleClient, Class: long[:3000]}, `traffic class "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"... (3000 bytes)`},
		{"long role", Hello{Role: long[:3000]}, `role "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"... (3000 bytes)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := hostileHello(t, tc.h, classes)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error quotes too much of the peer's value: %d bytes", len(err.Error()))
			}
		})
	}
	// A known class passes, and an agent string is cut short.
	if err := hostileHello(t, Hello{Role: RoleClient, Class: "control", Agent: long[:1000]}, classes); err != nil {
		t.Fatal(err)
	}
	// Without Classes only "" passes.
	if err := hostileHello(t, Hello{Role: RoleClient, Class: "bulk"}, Config{}); err == nil {
		t.Fatal("a class passed a server that takes none")
	}
}

func TestServerHelloWithClassRefused(t *testing.T) {
	srvConn, cliConn, _, cliPeer := tlsPair(t, "client-a")
	msg, _ := encodeHello(Hello{Role: RoleServer, Class: "bulk"})
	go func() {
		srvConn.Write(msg)
		io.Copy(io.Discard, srvConn)
	}()
	_, err := Establish(context.Background(), cliConn, RoleClient, cliPeer, Config{Class: "bulk"})
	if err == nil || !strings.Contains(err.Error(), `server's hello names traffic class "bulk"`) {
		t.Fatalf("err = %v", err)
	}
	cliConn.Close()
}
