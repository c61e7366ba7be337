package e2e

import (
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// The server dies (SIGKILL) and comes back on the same port: the client is
// back within 2 s of the new server listening, and new streams work.
func TestServerKilledAndRestarted(t *testing.T) {
	t.Parallel()
	echoAddr := startEcho(t)
	p := newPKI(t)
	services := []svc{{name: "echo", target: echoAddr, allow: []string{"client-a"}}}
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, "", services, nil))
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	cli := startClient(t, clientHCL(srv.addr, cert, key, p.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli.waitLine(t, "session up:")
	if err := oneStream(cli.forwards["echo"], 1); err != nil {
		t.Fatal(err)
	}
	_ = srv.cmd.Process.Signal(syscall.SIGKILL)
	srv.wait(t)
	time.Sleep(3 * time.Second) // the client's backoff has grown meanwhile

	text := strings.Replace(serverHCL(p.serverCert, p.serverKey, p.caFile, "", services, nil), `listen = "127.0.0.1:0"`, `listen = "`+srv.addr+`"`, 1)
	srv2 := startServer(t, text)
	back := time.Now()
	deadline := back.Add(waitLimit)
	for cli.sessionsUp() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(back)
	t.Logf("client back %s after the server returned", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("client took %s to come back, want within 2 s", took)
	}
	if err := oneStream(cli.forwards["echo"], 2); err != nil {
		t.Fatal(err)
	}
	cli.stop(t)
	srv2.stop(t)
}

// With the server gone and something on its port that accepts and drops
// every connection, the client retries with growing delays capped near 2 s:
// no tight loop.
func TestReconnectBackoffIsBoundedAndCapped(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, "", []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}}, nil))
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	cli := startClient(t, clientHCL(srv.addr, cert, key, p.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli.waitLine(t, "session up:")
	_ = srv.cmd.Process.Signal(syscall.SIGKILL)
	srv.wait(t)

	ln, err := net.Listen("tcp", srv.addr)
	if err != nil {
		t.Fatalf("take over the server's port: %v", err)
	}
	var (
		mu      sync.Mutex
		accepts []time.Time
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepts = append(accepts, time.Now())
			mu.Unlock()
			c.Close()
		}
	}()
	time.Sleep(8 * time.Second)
	ln.Close()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(accepts) < 4 || len(accepts) > 40 {
		t.Fatalf("%d connection attempts in 8 s: want a handful, not none and not a tight loop", len(accepts))
	}
	var gaps []time.Duration
	for i := 1; i < len(accepts); i++ {
		gaps = append(gaps, accepts[i].Sub(accepts[i-1]))
	}
	t.Logf("%d attempts, gaps %v", len(accepts), gaps)
	for _, g := range gaps {
		if g > 2300*time.Millisecond {
			t.Errorf("gap of %s between attempts: the cap is 2 s", g)
		}
	}
	if last := gaps[len(gaps)-1]; last < 500*time.Millisecond {
		t.Errorf("last gap %s: the delay did not grow", last)
	}
	cli.stop(t)
}

// relay forwards TCP between a listener and a target and can be told to
// blackhole: stop forwarding in both directions without closing.
type relay struct {
	ln        net.Listener
	target    string
	blackhole atomic.Bool
	mu        sync.Mutex
	conns     []net.Conn
	wg        sync.WaitGroup
}

func startRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, c, up)
			r.mu.Unlock()
			r.wg.Go(func() { r.pump(up, c) })
			r.wg.Go(func() { r.pump(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		r.closeAll()
		r.wg.Wait()
	})
	return r
}

// pump copies src to dst; while blackholed it neither reads nor writes.
func (r *relay) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		for r.blackhole.Load() {
			time.Sleep(10 * time.Millisecond)
			if isClosed(src) {
				return
			}
		}
		_ = src.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		n, err := src.Read(buf)
		if n > 0 && !r.blackhole.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
	}
}

func isClosed(c net.Conn) bool {
	_ = c.SetReadDeadline(time.Now())
	_, err := c.Read(make([]byte, 0))
	return err != nil && !strings.Contains(err.Error(), "timeout")
}

func (r *relay) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func (r *relay) addr() string { return r.ln.Addr().String() }

// A blackholed link (bytes stop, nothing closes): both sides declare the
// peer dead within dead_after and the client reconnects once it heals.
func TestBlackholedTunnelDetectedAndHealed(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	liveness := "ping_after = \"1s\"\ndead_after = \"3s\"\n"
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, liveness, []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}}, nil))
	rl := startRelay(t, srv.addr)
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	cli := startClient(t, clientHCL(rl.addr(), cert, key, p.caFile, liveness, []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli.waitLine(t, "session up:")
	if err := oneStream(cli.forwards["echo"], 1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rl.blackhole.Store(true)
	cl := cli.waitLine(t, "session ended", "peer silent")
	sl := srv.waitLine(t, "session ended", "peer silent")
	took := time.Since(start)
	t.Logf("declared dead after %s:\n%s\n%s", took.Round(time.Millisecond), cl, sl)
	if took > 8*time.Second {
		t.Errorf("dead peer noticed after %s; dead_after is 3 s", took)
	}
	rl.closeAll()
	rl.blackhole.Store(false)
	deadline := time.Now().Add(waitLimit)
	for cli.sessionsUp() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := oneStream(cli.forwards["echo"], 2); err != nil {
		t.Fatalf("after healing: %v", err)
	}
	cli.stop(t)
	srv.stop(t)
}

// Hundreds of connections that send garbage or stall in the handshake do
// not disturb a real session moving data, are dropped within the handshake
// timeout, do not flood the log, and leave room for new clients.
func TestHandshakeFlood(t *testing.T) {
	t.Parallel()
	extra := "handshake_timeout = \"8s\"\nmax_handshakes = 16\n"
	tn := startTunnel(t, tunnelSpec{
		serverExtra: extra,
		services:    []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a", "client-b"}}},
		forwards:    []fwd{{name: "echo", service: "echo"}},
	})
	c := dial(t, tn.client.forwards["echo"], time.Minute)
	var (
		stop    atomic.Bool
		rounds  atomic.Int64
		maxGap  atomic.Int64
		pingErr error
		pings   sync.WaitGroup
	)
	pings.Go(func() {
		buf := make([]byte, 64)
		last := time.Now()
		for !stop.Load() {
			if _, err := c.Write(buf); err != nil {
				pingErr = err
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				pingErr = err
				return
			}
			now := time.Now()
			if g := now.Sub(last); g > time.Duration(maxGap.Load()) {
				maxGap.Store(int64(g))
			}
			last = now
			rounds.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	})
	linesBefore := len(tn.server.log.lines())
	// The flood comes from another loopback address than the clients, as
	// from another host: the server gives one address at most a quarter of
	// its handshake slots.
	flooder := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	var bad []net.Conn
	for i := 0; i < 300; i++ {
		b, err := flooder.Dial("tcp", tn.server.addr)
		if err != nil {
			continue // the backlog may refuse some: that is fine
		}
		if i%2 == 0 {
			_, _ = b.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		}
		bad = append(bad, b)
	}
	// A new client connects while the flood's handshakes are still stalled.
	cert, key := tn.pki.clientCert(t, "client-b", pki.Options{})
	joined := time.Now()
	cli2 := startClient(t, clientHCL(tn.server.addr, cert, key, tn.pki.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli2.waitLine(t, "session up:")
	took := time.Since(joined)
	t.Logf("a new client's session came up %s after it started, during the flood", took.Round(time.Millisecond))
	// Without the per-source limit the flood holds every slot until the
	// 8 s handshake timeout; with it the client gets a free slot at once.
	if took > 4*time.Second {
		t.Errorf("a new client waited %s for a handshake slot: the flood from one address took them all", took.Round(time.Millisecond))
	}
	// Every bad connection is closed by the server within a few seconds.
	closed := 0
	deadline := time.Now().Add(30 * time.Second)
	for _, b := range bad {
		_ = b.SetReadDeadline(deadline)
		if _, err := io.Copy(io.Discard, b); err == nil || !isTimeout(err) {
			closed++
		}
		b.Close()
	}
	stop.Store(true)
	pings.Wait()
	if pingErr != nil {
		t.Fatalf("real stream broke during the flood: %v", pingErr)
	}
	if closed != len(bad) {
		t.Errorf("%d of %d bad connections left open", len(bad)-closed, len(bad))
	}
	gap := time.Duration(maxGap.Load())
	t.Logf("%d bad connections, %d round trips meanwhile, longest gap %s, %d new log lines", len(bad), rounds.Load(), gap.Round(time.Millisecond), len(tn.server.log.lines())-linesBefore)
	if gap > 2*time.Second {
		t.Errorf("real stream stalled for %s during the flood", gap)
	}
	if n := len(tn.server.log.lines()) - linesBefore; n > 40 {
		t.Errorf("flood wrote %d log lines; refusals are rate-limited per source and kind", n)
	}
	if err := oneStream(cli2.forwards["echo"], 3); err != nil {
		t.Fatal(err)
	}
	cli2.stop(t)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// A graceful server restart: the old server drains (a long stream keeps it
// draining) while a new one already listens on the port. New local
// connections in that window reach the new server instead of being refused,
// and the long stream finishes on the old one.
func TestGracefulServerRestartKeepsAcceptingStreams(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	services := []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}}
	text := serverHCL(p.serverCert, p.serverKey, p.caFile, "drain_timeout = \"20s\"\n", services, nil)
	srv := startServer(t, text)
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	cli := startClient(t, clientHCL(srv.addr, cert, key, p.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli.waitLine(t, "session up:")
	long := dial(t, cli.forwards["echo"], time.Minute)
	if _, err := long.Write([]byte("hold")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	srv.waitLine(t, "stopping: draining streams")
	cli.waitLine(t, "server is draining; connecting a new session")
	srv2 := startServer(t, strings.Replace(text, `listen = "127.0.0.1:0"`, `listen = "`+srv.addr+`"`, 1))
	// New connections from the moment the old server drains: each waits
	// for the new session (session_wait) rather than being reset.
	for i := range 5 {
		if err := oneStream(cli.forwards["echo"], i); err != nil {
			t.Errorf("new connection %d while the old server drains: %v", i, err)
		}
	}
	if n := cli.sessionsUp(); n != 2 {
		t.Errorf("client logged %d sessions up, want 2 (old and new)", n)
	}
	// The long stream is still on the draining server, and still works.
	if _, err := long.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 4)); err != nil {
		t.Fatalf("stream on the draining server: %v", err)
	}
	long.Close()
	srv.wait(t)
	if l, ok := srv.findLine("drain cut short"); ok {
		t.Errorf("old server cut its drain short: %s", l)
	}
	cli.stop(t)
	srv2.stop(t)
}
