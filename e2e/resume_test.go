package e2e

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/internal/procwatch"
)

// Tests of resumable streams: local connections outlive the tunnel
// connection (a cut, a blackhole, a server crash) within resume_window.

const (
	// resumeBulk is what each side of a duplex transfer sends.
	resumeBulk = 16 << 20
	// resumePace caps each sender (bytes per second), so that a transfer
	// lasts long enough for three cuts and reconnections on any machine.
	resumePace = 4 << 20
	// transferLimit bounds a whole transfer, outages included.
	transferLimit = 2 * time.Minute
	// quickLiveness makes a blackhole of a few seconds end the session.
	quickLiveness = "ping_after = \"1s\"\ndead_after = \"3s\"\n"
)

// pacedWriter writes to w no faster than rate bytes per second, and never
// catches up after a stall: a transfer stays slow after an outage too.
type pacedWriter struct {
	w    io.Writer
	rate int
}

func (p pacedWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	time.Sleep(time.Duration(n) * time.Second / time.Duration(p.rate))
	return n, err
}

// duplexResult is one end's view of a duplex transfer.
type duplexResult struct {
	sent, got   [32]byte // SHA-256 of what it sent and what it received
	sentN, gotN int64
	err         error // any error on the socket; nil for a clean transfer
}

// duplex sends n paced pseudo-random bytes (by seed) on c and half-closes,
// while it reads c to EOF, adding what arrives to recv.
func duplex(c *net.TCPConn, seed uint64, n int64, recv *atomic.Int64) duplexResult {
	var (
		res     duplexResult
		sendErr error
		sender  sync.WaitGroup
	)
	sender.Go(func() {
		res.sent, sendErr = sendRandom(pacedWriter{c, resumePace}, seed, n)
		if sendErr == nil {
			res.sentN = n
			sendErr = c.CloseWrite()
		}
	})
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var recvErr error
	for {
		k, err := c.Read(buf)
		h.Write(buf[:k])
		res.gotN += int64(k)
		recv.Add(int64(k))
		if err == io.EOF {
			break
		}
		if err != nil {
			recvErr = fmt.Errorf("receive after %d bytes: %w", res.gotN, err)
			break
		}
	}
	sender.Wait()
	res.got = [32]byte(h.Sum(nil))
	if sendErr != nil {
		sendErr = fmt.Errorf("send: %w", sendErr)
	}
	res.err = errors.Join(sendErr, recvErr)
	return res
}

// duplexPair is a checksummed transfer in both directions at once between
// an application and a target, through the tunnel.
type duplexPair struct {
	name       string
	seed       uint64
	addr       string       // the target's
	appRecv    atomic.Int64 // bytes the application has received
	targetRecv atomic.Int64
	ends       atomic.Int32 // ends whose transfer is over, well or not
	app        chan duplexResult
	target     chan duplexResult
}

// newDuplexPair starts the pair's target; start connects the application.
func newDuplexPair(t *testing.T, name string, seed uint64) *duplexPair {
	p := &duplexPair{name: name, seed: seed, app: make(chan duplexResult, 1), target: make(chan duplexResult, 4)}
	p.addr = startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(transferLimit))
		res := duplex(c.(*net.TCPConn), seed+1, resumeBulk, &p.targetRecv)
		p.ends.Add(1)
		p.target <- res
	})
	return p
}

// start connects to addr (a forward) and runs the application's side.
func (p *duplexPair) start(t *testing.T, addr string) {
	c := dial(t, addr, transferLimit)
	var app sync.WaitGroup
	app.Go(func() {
		res := duplex(c, p.seed, resumeBulk, &p.appRecv)
		p.ends.Add(1)
		p.app <- res
	})
	t.Cleanup(func() {
		c.Close()
		app.Wait()
	})
}

// progress is the least either end has received.
func (p *duplexPair) progress() int64 { return min(p.appRecv.Load(), p.targetRecv.Load()) }

// check waits for both ends and asserts that each received exactly what
// the other sent, with no error on either socket.
func (p *duplexPair) check(t *testing.T) {
	t.Helper()
	var app, target duplexResult
	for _, r := range []struct {
		into *duplexResult
		from chan duplexResult
		who  string
	}{{&app, p.app, "application"}, {&target, p.target, "target"}} {
		select {
		case *r.into = <-r.from:
		case <-time.After(transferLimit):
			t.Fatalf("%s: the %s's side did not finish within %s (received %d and %d bytes)", p.name, r.who, transferLimit, p.appRecv.Load(), p.targetRecv.Load())
		}
	}
	if app.err != nil {
		t.Errorf("%s: application socket: %v", p.name, app.err)
	}
	if target.err != nil {
		t.Errorf("%s: target socket: %v", p.name, target.err)
	}
	if app.sentN != target.gotN || app.sent != target.got {
		t.Errorf("%s: the target received %d bytes (equal: %v), the application sent %d", p.name, target.gotN, app.sent == target.got, app.sentN)
	}
	if target.sentN != app.gotN || target.sent != app.got {
		t.Errorf("%s: the application received %d bytes (equal: %v), the target sent %d", p.name, app.gotN, target.sent == app.got, target.sentN)
	}
}

func minProgress(pairs []*duplexPair) int64 {
	m := int64(resumeBulk)
	for _, p := range pairs {
		m = min(m, p.progress())
	}
	return m
}

// onePing sends 64-byte messages to an echo on one connection (never
// redialling, unlike hostile_test.go's pingPong) and checks each reply,
// until finish; a pause is fine, an error or a wrong byte is not.
type onePing struct {
	c      *net.TCPConn
	stop   atomic.Bool
	rounds atomic.Int64
	maxGap atomic.Int64 // nanoseconds
	err    error        // read after wg.Wait
	wg     sync.WaitGroup
}

func startOnePing(t *testing.T, addr string) *onePing {
	p := &onePing{c: dial(t, addr, transferLimit)}
	p.wg.Go(p.run)
	t.Cleanup(func() {
		p.c.Close()
		p.wg.Wait()
	})
	return p
}

func (p *onePing) run() {
	rng := rand.New(rand.NewPCG(7, 7))
	msg, reply := make([]byte, 64), make([]byte, 64)
	last := time.Now()
	for i := 0; !p.stop.Load(); i++ {
		for j := range msg {
			msg[j] = byte(rng.Uint32())
		}
		if _, err := p.c.Write(msg); err != nil {
			p.err = fmt.Errorf("round %d: write: %w", i, err)
			return
		}
		if _, err := io.ReadFull(p.c, reply); err != nil {
			p.err = fmt.Errorf("round %d: read: %w", i, err)
			return
		}
		if !bytes.Equal(msg, reply) {
			p.err = fmt.Errorf("round %d: the echo differs from the message", i)
			return
		}
		now := time.Now()
		if g := now.Sub(last); g > time.Duration(p.maxGap.Load()) {
			p.maxGap.Store(int64(g))
		}
		last = now
		p.rounds.Add(1)
		time.Sleep(20 * time.Millisecond)
	}
	// A clean end: our half-close comes back as the echo's.
	if err := p.c.CloseWrite(); err != nil {
		p.err = fmt.Errorf("half-close: %w", err)
		return
	}
	if rest, err := io.ReadAll(p.c); err != nil || len(rest) > 0 {
		p.err = fmt.Errorf("after the half-close: %d bytes, %v; want a clean EOF", len(rest), err)
	}
}

// finish stops the ping-pong and asserts that it never failed.
func (p *onePing) finish(t *testing.T) {
	t.Helper()
	p.stop.Store(true)
	p.wg.Wait()
	t.Logf("ping-pong: %d rounds, longest pause %s", p.rounds.Load(), time.Duration(p.maxGap.Load()).Round(time.Millisecond))
	if p.err != nil {
		t.Errorf("ping-pong: %v", p.err)
	}
}

// resumeRig is a relayed tunnel carrying a duplex transfer each way (one
// on a client forward, one on a server forward) and a ping-pong.
type resumeRig struct {
	tn    *tunnel
	pairs []*duplexPair
	ping  *onePing
}

func startResumeRig(t *testing.T, serverExtra, clientExtra string) *resumeRig {
	t.Helper()
	out := newDuplexPair(t, "client forward", 1)
	back := newDuplexPair(t, "server forward", 3)
	allow := []string{"client-a"}
	tn := startTunnel(t, tunnelSpec{
		relayed:        true,
		serverExtra:    serverExtra,
		clientExtra:    clientExtra,
		services:       []svc{{name: "duplex", target: out.addr, allow: allow}, {name: "echo", target: startEcho(t), allow: allow}},
		forwards:       []fwd{{name: "duplex", service: "duplex"}, {name: "ping", service: "echo"}},
		serverForwards: []fwd{{name: "back", client: "client-a", service: "duplex-c"}},
		clientServices: []svc{{name: "duplex-c", target: back.addr}},
	})
	r := &resumeRig{tn: tn, pairs: []*duplexPair{out, back}}
	r.ping = startOnePing(t, tn.client.forwards["ping"])
	out.start(t, tn.client.forwards["duplex"])
	back.start(t, tn.server.forwards["back"])
	return r
}

// waitProgress waits until every transfer has received at least n bytes
// each way and cond holds. A transfer that ends on the way is checked at
// once: its error is the failure, not the wait.
func (r *resumeRig) waitProgress(t *testing.T, what string, n int64, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(waitLimit); ; time.Sleep(20 * time.Millisecond) {
		if minProgress(r.pairs) >= n && cond() {
			return
		}
		for _, p := range r.pairs {
			if p.ends.Load() > 0 && p.progress() < resumeBulk {
				r.check(t)
				t.Fatalf("%s: a transfer ended early", what)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// check asserts every byte of both transfers and the ping-pong.
func (r *resumeRig) check(t *testing.T) {
	t.Helper()
	for _, p := range r.pairs {
		p.check(t)
	}
	r.ping.finish(t)
}

// sessionsUp counts the client's sessions so far.
func (tn *tunnel) sessionsUp() int { return tn.client.sessionsUp() }

// The tunnel connection is reset three times during transfers both ways
// (resume is on by default): every byte arrives once, in order, and no
// application socket sees an error.
func TestResumeSurvivesCuts(t *testing.T) {
	t.Parallel()
	r := startResumeRig(t, "", "")
	for i := 1; i <= 3; i++ {
		// Each cut hits the connection that came back after the last one,
		// once it has carried data both ways.
		base := minProgress(r.pairs)
		r.waitProgress(t, fmt.Sprintf("session %d up and 1 MiB more each way", i), min(base+1<<20, resumeBulk), func() bool {
			return r.tn.sessionsUp() >= i
		})
		at := minProgress(r.pairs)
		if at >= resumeBulk {
			t.Fatalf("the transfers ended before cut %d: make resumeBulk larger or resumePace slower", i)
		}
		n := r.tn.relay.cut()
		t.Logf("cut %d: %d connections reset, %d bytes received each way so far", i, n, at)
		if n == 0 {
			t.Fatalf("cut %d found no connection to reset", i)
		}
	}
	r.check(t)
	if n := r.tn.sessionsUp(); n != 4 {
		t.Errorf("the client logged %d sessions up, want 4 (one, then one after each cut)", n)
	}
	// One line per resume per session, not per stream, and no failure
	// in it: every stream resumed.
	for _, p := range []*proc{r.tn.client.proc, r.tn.server.proc} {
		lines := 0
		for _, l := range p.log.lines() {
			if !strings.Contains(l, "streams resumed") {
				continue
			}
			lines++
			if !strings.Contains(l, " failed=0") {
				t.Errorf("%s: a resume failed after a cut, yet every byte arrived: %s", p.name, l)
			}
		}
		if lines > 3*bulkLanes {
			t.Errorf("%s logged %d resumes for 3 cuts over %d bulk sessions: want one line per resume per session", p.name, lines, bulkLanes)
		}
	}
}

// A blackhole of 5 s (nothing crosses, nothing closes) that liveness
// notices: the session ends, the client reconnects once the path is back,
// and the transfers and the ping-pong carry on from where they were.
func TestResumeSurvivesBlackhole(t *testing.T) {
	t.Parallel()
	r := startResumeRig(t, quickLiveness, quickLiveness)
	r.waitProgress(t, "2 MiB each way before the blackhole", 2<<20, func() bool { return true })
	r.tn.relay.blackhole(5 * time.Second)
	at := minProgress(r.pairs)
	if at >= resumeBulk {
		t.Fatalf("the transfers ended during the blackhole")
	}
	t.Logf("blackhole over, %d bytes received each way so far", at)
	if l, ok := r.tn.client.findLine("session ended"); ok {
		t.Log(l)
	} else {
		t.Errorf("the client did not notice the blackhole (dead_after 3s): no \"session ended\" line; the test did not test resuming")
	}
	waitFor(t, "the client's session after the blackhole", func() bool { return r.tn.sessionsUp() >= 2 })
	r.check(t)
}

// readExpectOpen reads c until the deadline and asserts that the
// connection was still open then (a timeout, not an end).
func readExpectOpen(t *testing.T, c net.Conn, until time.Time) {
	t.Helper()
	_ = c.SetReadDeadline(until)
	n, err := io.Copy(io.Discard, c)
	if !isTimeout(err) {
		if err == nil {
			err = io.EOF
		}
		t.Fatalf("the application connection ended (%v after %d more bytes) while its stream should be suspended within resume_window", err, n)
	}
}

// The server dies (SIGKILL) under a transfer. Its state is gone, so the
// client's application connection must end with a reset, never a clean
// EOF (which would pass truncated data off as complete): once the window
// passes with no server, or as soon as a restarted server says it has no
// state for the stream.
func TestResumeServerCrash(t *testing.T) {
	t.Parallel()
	crash := func(t *testing.T, window string) (*tunnel, *net.TCPConn, time.Time) {
		target, _ := firehose(t)
		extra := fmt.Sprintf("resume_window = %q\n", window)
		tn := startTunnel(t, tunnelSpec{
			serverExtra: extra,
			clientExtra: extra,
			services:    []svc{{name: "hose", target: target, allow: []string{"client-a"}}},
			forwards:    []fwd{{name: "hose", service: "hose"}},
		})
		c := dial(t, tn.client.forwards["hose"], transferLimit)
		if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
			t.Fatal(err)
		}
		_ = tn.server.cmd.Process.Kill()
		killed := time.Now()
		tn.server.wait(t)
		// Held: a crash looks like any loss of the tunnel at first.
		readExpectOpen(t, c, killed.Add(time.Second))
		return tn, c, killed
	}

	t.Run("no server within the window", func(t *testing.T) {
		t.Parallel()
		const window = 4 * time.Second
		_, c, killed := crash(t, window.String())
		_ = c.SetReadDeadline(killed.Add(window + 15*time.Second))
		n, err := readUntilEnd(c)
		expectAbort(t, n, err)
		t.Logf("reset %s after the kill (window %s)", time.Since(killed).Round(time.Millisecond), window)
	})

	t.Run("a fresh server says it has no state", func(t *testing.T) {
		t.Parallel()
		const window = 60 * time.Second
		tn, c, killed := crash(t, window.String())
		text := serverHCL(tn.pki.serverCert, tn.pki.serverKey, tn.pki.caFile, fmt.Sprintf("resume_window = %q\n", window.String()),
			[]svc{{name: "hose", target: startEcho(t), allow: []string{"client-a"}}}, nil)
		srv2 := startServer(t, strings.Replace(text, `listen = "127.0.0.1:0"`, `listen = "`+tn.server.addr+`"`, 1))
		waitFor(t, "the client's session with the fresh server", func() bool { return tn.sessionsUp() >= 2 })
		back := time.Now()
		// Well before the window's end: the fresh server's answer ends
		// the stream, not the window.
		_ = c.SetReadDeadline(back.Add(15 * time.Second))
		n, err := readUntilEnd(c)
		expectAbort(t, n, err)
		t.Logf("reset %s after the new session (%s after the kill; window %s)", time.Since(back).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond), window)
		tn.client.stop(t)
		srv2.stop(t)
	})
}

// resume_window = "0s" is today's behaviour: a cut ends the application's
// connection with a reset, never a clean EOF. Set on one forward (and its
// service) only, it leaves the other forwards resumable.
func TestResumeWindowZero(t *testing.T) {
	t.Parallel()
	const off = "  resume_window = \"0s\"\n"
	allow := []string{"client-a"}

	t.Run("top level", func(t *testing.T) {
		t.Parallel()
		target, _ := firehose(t)
		tn := startTunnel(t, tunnelSpec{
			relayed:     true,
			serverExtra: off,
			clientExtra: off,
			services:    []svc{{name: "hose", target: target, allow: allow}},
			forwards:    []fwd{{name: "hose", service: "hose"}},
		})
		c := dial(t, tn.client.forwards["hose"], waitLimit)
		if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
			t.Fatal(err)
		}
		if n := tn.relay.cut(); n == 0 {
			t.Fatal("the cut found no connection to reset")
		}
		n, err := readUntilEnd(c)
		expectAbort(t, n, err)
	})

	t.Run("one forward", func(t *testing.T) {
		t.Parallel()
		target, _ := firehose(t)
		tn := startTunnel(t, tunnelSpec{
			relayed:  true,
			services: []svc{{name: "hose", target: target, allow: allow, extra: off}, {name: "echo", target: startEcho(t), allow: allow}},
			forwards: []fwd{{name: "hose", service: "hose", extra: off}, {name: "echo", service: "echo"}},
		})
		plain := dial(t, tn.client.forwards["hose"], waitLimit)
		kept := dial(t, tn.client.forwards["echo"], transferLimit)
		if _, err := io.CopyN(io.Discard, plain, 1<<20); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, kept, "before the cut")
		if n := tn.relay.cut(); n == 0 {
			t.Fatal("the cut found no connection to reset")
		}
		n, err := readUntilEnd(plain)
		expectAbort(t, n, err)
		roundTrip(t, kept, "after the cut, on the forward that keeps the default window")
	})
}

// roundTrip sends a line on an echo connection and checks the reply.
func roundTrip(t *testing.T, c net.Conn, when string) {
	t.Helper()
	msg := []byte("resume " + when + "\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("%s: write: %v", when, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("%s: read: %v", when, err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("%s: echo %q, want %q", when, got, msg)
	}
}

// steadyWriter writes pseudo-random bytes to c as fast as c takes them,
// each write under a deadline, and keeps their SHA-256. A write that times
// out is not an error: it shows that nobody reads the other end.
type steadyWriter struct {
	c       *net.TCPConn
	outage  atomic.Bool   // set by the test once the tunnel is down
	blocked chan struct{} // closed once a write begun during the outage timed out
	stopAt  atomic.Int64  // stop (and half-close) once this much is written
	written atomic.Int64
	sum     [32]byte // after done
	err     error    // after done: an error other than a timeout
	done    chan struct{}
}

// writeDeadline is how long one write may wait before it counts as blocked.
const writeDeadline = 2 * time.Second

func startSteadyWriter(t *testing.T, c *net.TCPConn) *steadyWriter {
	w := &steadyWriter{c: c, blocked: make(chan struct{}), done: make(chan struct{})}
	w.stopAt.Store(1 << 62)
	go w.run()
	t.Cleanup(func() {
		c.Close()
		<-w.done
	})
	return w
}

func (w *steadyWriter) run() {
	defer close(w.done)
	rng := rand.NewChaCha8([32]byte{5})
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var once sync.Once
	for w.written.Load() < w.stopAt.Load() {
		_, _ = rng.Read(buf)
		for off := 0; off < len(buf); {
			during := w.outage.Load()
			_ = w.c.SetWriteDeadline(time.Now().Add(writeDeadline))
			n, err := w.c.Write(buf[off:])
			h.Write(buf[off : off+n])
			off += n
			w.written.Add(int64(n))
			if isTimeout(err) {
				if during {
					once.Do(func() { close(w.blocked) })
				}
				continue
			}
			if err != nil {
				w.err = fmt.Errorf("write after %d bytes: %w", w.written.Load(), err)
				return
			}
		}
	}
	w.sum = [32]byte(h.Sum(nil))
	if err := w.c.CloseWrite(); err != nil {
		w.err = fmt.Errorf("half-close: %w", err)
	}
}

// vmRSS is the resident memory of process pid in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("memory of pid %d: %v", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("VmRSS of pid %d: %v", pid, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// rssGrowthLimit is a generous bound on what the client agent may grow
// while an application writes into a suspended stream: the replay buffer
// (within max_session_buffer) and the race detector's shadow of it, far
// below what reading without a bound would take.
const rssGrowthLimit = 256 << 20

// An application keeps writing while the tunnel path is blackholed: once
// the stream's replay buffer is full the client agent stops reading the
// local socket (the application's writes block, TCP backpressure, no
// loss), its memory stays bounded, and when the path returns every byte
// arrives, once and in order.
func TestResumeReplayBufferFull(t *testing.T) {
	t.Parallel()
	type sunk struct {
		sum [32]byte
		n   int64
		err error
	}
	sink := make(chan sunk, 4)
	target := startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(transferLimit))
		sum, n, err := hashAll(c)
		sink <- sunk{sum, n, err}
	})
	tn := startTunnel(t, tunnelSpec{
		relayed:     true,
		serverExtra: quickLiveness,
		clientExtra: quickLiveness + "max_session_buffer = \"16MiB\"\n",
		services:    []svc{{name: "sink", target: target, allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "sink", service: "sink"}},
	})
	w := startSteadyWriter(t, dial(t, tn.client.forwards["sink"], transferLimit))
	waitFor(t, "4 MiB written through the tunnel", func() bool { return w.written.Load() >= 4<<20 })
	pid := tn.client.cmd.Process.Pid
	before := vmRSS(t, pid)

	tn.relay.hold()
	t.Log(tn.client.waitLine(t, "session ended"))
	atOutage := w.written.Load()
	w.outage.Store(true)
	select {
	case <-w.blocked:
	case <-w.done:
		t.Fatalf("the writer stopped during the outage: %v", w.err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the application's writes never blocked while the tunnel was down: %d bytes written since the session ended; the client agent reads without a bound", w.written.Load()-atOutage)
	}
	during := vmRSS(t, pid)
	t.Logf("while the tunnel was down the application wrote %d bytes before its writes blocked; client agent RSS %d MiB, %d MiB before", w.written.Load()-atOutage, during>>20, before>>20)
	if during-before > rssGrowthLimit {
		t.Errorf("the client agent grew by %d MiB while the stream was suspended, want at most %d MiB", (during-before)>>20, rssGrowthLimit>>20)
	}

	tn.relay.release()
	waitFor(t, "the client's session after the outage", func() bool { return tn.sessionsUp() >= 2 })
	w.stopAt.Store(w.written.Load() + 4<<20)
	select {
	case <-w.done:
	case <-time.After(transferLimit):
		t.Fatalf("the writer did not finish within %s of the path's return (%d bytes written)", transferLimit, w.written.Load())
	}
	if w.err != nil {
		t.Fatalf("application socket: %v", w.err)
	}
	var got sunk
	select {
	case got = <-sink:
	case <-time.After(transferLimit):
		t.Fatalf("the target did not get the end of the transfer within %s", transferLimit)
	}
	if got.err != nil {
		t.Errorf("target socket: %v", got.err)
	}
	if got.n != w.written.Load() || got.sum != w.sum {
		t.Errorf("the target received %d bytes (equal: %v), the application wrote %d", got.n, got.sum == w.sum, w.written.Load())
	}
}

// handover sends SIGUSR2 to p, which starts the binary on disk as a
// successor that takes over (same arguments, same output), and returns
// the successor's pid once the old process is gone.
func handover(t *testing.T, p *proc) int {
	t.Helper()
	old := p.cmd.Process.Pid
	if err := p.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatalf("SIGUSR2 %s: %v", p.name, err)
	}
	succ := 0
	for deadline := time.Now().Add(waitLimit); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.done: // nothing holds its output any more: no successor
			t.Fatalf("%s exited (%v) after SIGUSR2 and no successor holds its output", p.name, p.err)
		default:
		}
		if succ == 0 {
			succ = procwatch.Find(p.cmd.Args, old)
		}
		if succ != 0 && procwatch.Gone(old) {
			t.Logf("%s handed over from pid %d to pid %d", p.name, old, succ)
			return succ
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no handover within %s of SIGUSR2 (successor pid %d, old process gone: %v)", p.name, waitLimit, succ, procwatch.Gone(old))
		}
	}
}

// stopSuccessor stops a successor with SIGTERM and waits until nothing
// holds p's output any more (the successor has exited).
func stopSuccessor(t *testing.T, p *proc, pid int) {
	t.Helper()
	if procwatch.Gone(pid) {
		return
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM %s's successor (pid %d): %v", p.name, pid, err)
		return
	}
	select {
	case <-p.done:
	case <-time.After(waitLimit):
		t.Errorf("%s's successor (pid %d) did not stop within %s of SIGTERM", p.name, pid, waitLimit)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// SIGUSR2 hands an agent over to a new process, the server's then the
// client's, in the middle of transfers both ways: every byte arrives once,
// no application socket sees an error, the old processes exit.
func TestResumeHandover(t *testing.T) {
	t.Parallel()
	// A Go program ignores SIGUSR2 unless it asks for it: an agent without
	// a handover would just carry on.
	if !agentSourceMentions(t, "SIGUSR2") {
		t.Skip("the agents do not handle SIGUSR2 yet (no handover to test)")
	}
	r := startResumeRig(t, "", "")
	for i, p := range []*proc{r.tn.server.proc, r.tn.client.proc} {
		base := minProgress(r.pairs)
		r.waitProgress(t, fmt.Sprintf("session %d up and 1 MiB more each way", i+1), min(base+1<<20, resumeBulk), func() bool {
			return r.tn.sessionsUp() >= i+1
		})
		if minProgress(r.pairs) >= resumeBulk {
			t.Fatalf("the transfers ended before the handover of %s: make resumeBulk larger or resumePace slower", p.name)
		}
		succ := handover(t, p)
		t.Cleanup(func() { stopSuccessor(t, p, succ) })
	}
	r.check(t)
	if n := r.tn.sessionsUp(); n < 3 {
		t.Errorf("the client logged %d sessions up, want one more after each handover", n)
	}
}

// agentSourceMentions reports whether the agents' non-test sources (cmd/
// and agent/ of this module) contain s.
func agentSourceMentions(t *testing.T, s string) bool {
	t.Helper()
	gomod, err := goModFile(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, dir := range []string{"cmd", "agent"} {
		err := filepath.WalkDir(filepath.Join(filepath.Dir(gomod), dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || found || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			found = found || bytes.Contains(b, []byte(s))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return found
}
