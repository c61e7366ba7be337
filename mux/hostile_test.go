package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/yamux"
)

// rawClient plays a hostile client: it completes TLS and the hello, then
// speaks raw yamux to a real server session, which serves svcs.
func rawClient(t *testing.T, cfg Config, svcs map[string]Service) (*Session, *yamux.Session) {
	t.Helper()
	s, cliConn := rawPeer(t, cfg)
	ycfg := yamuxConfig(hclog.NewNullLogger(), nil, 256<<10, 0, 0)
	raw, err := yamux.Client(cliConn, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	if svcs != nil {
		serve(t, s, svcs)
	}
	t.Cleanup(func() { raw.Close() })
	return s, raw
}

// rawPeer completes TLS and the hello as a client with a real server
// session, and leaves the connection to the caller's bytes.
func rawPeer(t *testing.T, cfg Config) (*Session, net.Conn) {
	t.Helper()
	srvConn, cliConn, srvPeer, _ := tlsPair(t, "client-a")
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, cfg)
		ch <- res{s, err}
	}()
	if _, err := exchangeHello(context.Background(), cliConn, RoleClient, Hello{Role: RoleClient, Class: cfg.Class}, Config{HelloTimeout: 5 * time.Second, Classes: cfg.Classes}); err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.s.Close(); cliConn.Close() })
	return r.s, cliConn
}

// rawOpen opens a raw stream and writes b on it.
func rawOpen(t *testing.T, raw *yamux.Session, b []byte) *yamux.Stream {
	t.Helper()
	y, err := raw.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 0 {
		if _, err := y.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	return y
}

// waitReset reads y until it fails and wants a reset, not EOF.
func waitReset(t *testing.T, y *yamux.Stream, what string) {
	t.Helper()
	_ = y.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, y)
	if !errors.Is(err, yamux.ErrConnectionReset) {
		t.Fatalf("%s: read ended with %v, want a reset", what, err)
	}
}

// counter counts OnRefuse reports by kind.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) onRefuse(kind, _ string, _ error, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[kind] += n
}

func (c *counter) get(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[kind]
}

// goroutinesIn counts goroutines whose stack has fn in it.
func goroutinesIn(fn string) int {
	buf := make([]byte, 8<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}

func echoSvc(t *testing.T) map[string]Service {
	return map[string]Service{"echo": {Allowed: allowOnly("client-a"), Dial: dialTo(echoTarget(t))}}
}

// checkEcho opens a real stream over raw and checks it works.
func checkEcho(t *testing.T, raw *yamux.Session) {
	t.Helper()
	hdr, _ := encodeHeader("echo", "", nil)
	y := rawOpen(t, raw, append(hdr, "still here"...))
	defer y.Close()
	_ = y.SetReadDeadline(time.Now().Add(10 * time.Second))
	code, msg, err := readReply(y)
	if err != nil || code != CodeOK {
		t.Fatalf("session broken: reply %v %q %v", code, msg, err)
	}
	buf := make([]byte, len("still here"))
	if _, err := io.ReadFull(y, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("session broken: echo %q %v", buf, err)
	}
}

func TestControlStreamFlood(t *testing.T) {
	var refusals counter
	server, raw := rawClient(t, Config{OnRefuse: refusals.onRefuse}, echoSvc(t))
	first := rawOpen(t, raw, []byte{headerControl, 0})
	defer first.Close()
	waitUntil(t, "the first control stream to be taken", server.peerCtl.Load)
	const n = 50
	for i := range n {
		y := rawOpen(t, raw, []byte{headerControl, 0})
		waitReset(t, y, "control stream "+strconv.Itoa(i))
	}
	if got := refusals.get(RefusedControl); got != n {
		t.Errorf("%d second control streams reported, want %d", got, n)
	}
	if g := goroutinesIn("mux.(*Session).readControl"); g != 1 {
		t.Errorf("%d goroutines read control streams, want 1", g)
	}
	// The session still works, and so does the first control stream: a
	// drain notice on it is heard.
	checkEcho(t, raw)
	if _, err := first.Write([]byte{0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-server.PeerDraining():
	case <-time.After(10 * time.Second):
		t.Fatal("a drain notice on the first control stream was not heard")
	}
	// Every reset stream is freed: our control stream, theirs, nothing else.
	waitUntil(t, "the reset streams to be freed", func() bool { return server.y.NumStreams() == controlStreams })
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// gateConn stops reading from the network while closed, as a congested
// link does: whatever the peer sends waits in the kernel and in flight.
type gateConn struct {
	net.Conn
	mu   sync.Mutex
	open chan struct{}
}

func newGateConn(c net.Conn) *gateConn {
	g := &gateConn{Conn: c, open: make(chan struct{})}
	close(g.open)
	return g
}

func (g *gateConn) Read(p []byte) (int, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	<-open
	return g.Conn.Read(p)
}

func (g *gateConn) pause() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
}

func (g *gateConn) resume() {
	g.mu.Lock()
	close(g.open)
	g.mu.Unlock()
}

// A stream that did not end with both FINs must reach the far application
// as a reset, never as a clean EOF: not when the far side's window is full
// and its link congested, and not on the wire (a raw yamux peer sees RST).
func TestResetNotEOFOnCongestedStream(t *testing.T) {
	t.Run("mux peer behind a congested link", func(t *testing.T) {
		srvConn, cliConn, srvPeer, cliPeer := tlsPair(t, "client-a")
		gate := newGateConn(srvConn)
		ch := make(chan *Session, 1)
		go func() {
			s, err := Establish(context.Background(), gate, RoleServer, srvPeer, Config{})
			if err != nil {
				t.Error(err)
			}
			ch <- s
		}()
		client, err := Establish(context.Background(), cliConn, RoleClient, cliPeer, Config{})
		if err != nil {
			t.Fatal(err)
		}
		server := <-ch
		if server == nil {
			t.FailNow()
		}
		t.Cleanup(func() { client.Close(); server.Close() })
		accepted := acceptedStreams(t, server, pipeTarget)

		st, err := client.Open(context.Background(), "sink", "")
		if err != nil {
			t.Fatal(err)
		}
		// The far side does not read: our writes fill its window and block.
		var wrote atomic.Int64
		writeErr := make(chan error, 1)
		go func() {
			chunk := make([]byte, 32<<10)
			for {
				n, err := st.Write(chunk)
				wrote.Add(int64(n))
				if err != nil {
					writeErr <- err
					return
				}
			}
		}()
		far := <-accepted
		waitUntil(t, "the window to fill", func() bool { return wrote.Load() >= 192<<10 })
		// Congest the link too, then reset: the reset and anything after
		// it wait together behind the data, as on a slow link.
		gate.pause()
		time.Sleep(100 * time.Millisecond)
		st.Abort()
		if err := <-writeErr; err == nil {
			t.Fatal("a write on a reset stream succeeded")
		}
		time.Sleep(1500 * time.Millisecond) // past any delayed FIN
		gate.resume()
		_ = far.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, far)
		if !errors.Is(err, ErrAborted) {
			t.Fatalf("far side read %d bytes then %v; want ErrAborted, never a clean EOF", n, err)
		}
		far.Close()
	})

	t.Run("raw peer sees RST", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		server, raw := rawClient(t, Config{}, nil)
		accepted := acceptedStreams(t, server, func(context.Context, Request) (net.Conn, error) {
			a, b := net.Pipe()
			go func() { <-release; b.Close() }()
			return a, nil
		})
		hdr, _ := encodeHeader("sink", "", nil)
		y := rawOpen(t, raw, hdr)
		st := <-accepted
		// The raw peer writes until its window is full, and blocks.
		writeErr := make(chan error, 1)
		go func() {
			_ = y.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, err := y.Write(make([]byte, 4<<20))
			writeErr <- err
		}()
		time.Sleep(200 * time.Millisecond)
		st.Abort()
		if err := <-writeErr; !errors.Is(err, yamux.ErrConnectionReset) {
			t.Fatalf("raw peer's blocked write ended with %v, want a reset", err)
		}
		waitReset(t, y, "raw peer")
	})
}

// Frames for streams the session does not hold are dropped and counted,
// and the count reaches OnStrayFrames, without a log line each.
func TestStrayFramesCounted(t *testing.T) {
	var stray atomic.Int64
	cfg := Config{PingAfter: 200 * time.Millisecond, DeadAfter: time.Minute, OnStrayFrames: func(n int) { stray.Add(int64(n)) }}
	s, cliConn := rawPeer(t, cfg)
	// Drain what the server writes (its control stream, pings): a raw
	// peer that never reads would stall it.
	go func() { _, _ = io.Copy(io.Discard, cliConn) }()
	// 100 window updates for streams never opened (odd IDs: ours), no SYN.
	var frames []byte
	for i := range 100 {
		var hdr [12]byte
		hdr[1] = 1 // window update
		binary.BigEndian.PutUint32(hdr[4:], uint32(1001+2*i))
		binary.BigEndian.PutUint32(hdr[8:], 4096)
		frames = append(frames, hdr[:]...)
	}
	if _, err := cliConn.Write(frames); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "100 stray frames counted", func() bool { return stray.Load() >= 100 })
	if n := stray.Load(); n != 100 {
		t.Fatalf("stray frames %d, want 100", n)
	}
	if s.Closed() {
		t.Fatal("the session ended over frames for missing streams")
	}
}
