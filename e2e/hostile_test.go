package e2e

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/bench/linkemu"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// Hostile-peer tests (issue 14): an attacker holding ONE valid client
// certificate must not hurt anyone else. Each attack runs against a fresh
// tunnel-server that also serves a well-behaved tunnel-client doing a
// continuous 64-byte ping-pong through it, while /healthz is polled. The
// server's goroutines, open descriptors and RSS are read before, during
// and after, and must come back near the baseline once the attacker is
// gone.
//
// HOSTILE_REPORT_ONLY=1 turns every expectation into a log line ("would
// fail: ...") and prints one summary line per attack: that is how the
// figures of a build without the fixes are taken:
//
//	HOSTILE_REPORT_ONLY=1 go test -race -count=1 -v -run 'TestHostile|FuzzHostile' ./e2e/ | grep -E 'SUMMARY|would fail'
//
// The raw protocol speaker is in hostile_peer_test.go, the frame fuzzer in
// framefuzz_test.go.

var reportOnly = os.Getenv("HOSTILE_REPORT_ONLY") != ""

// Every bound of these tests, generous so that a loaded 2-core machine
// running the race-built agents does not flake; each still fails on the
// behaviour it is there for (a wedge, a leak, a log flood, a replace loop).
const (
	// /healthz is asked every healthzEvery and must answer within
	// healthzLimit every time, during the attack and the recovery: a
	// wedged server fails; a loaded machine's second-long stall (seen in
	// CI-like runs under -race: 1.17 s once) does not. The summary line
	// gives the worst answer time.
	healthzEvery = 200 * time.Millisecond
	healthzLimit = 5 * time.Second
	// Goroutines, descriptors and RSS are sampled this often for peaks.
	sampleEvery = 250 * time.Millisecond
	// After the attacker has gone, the server's goroutines must be within
	// goroutineSlack of the baseline and its descriptors within fdSlack,
	// within recoverLimit. The slack covers the admin requests in flight
	// and the session's outstanding pings (at most 4).
	recoverLimit   = 20 * time.Second
	goroutineSlack = 15
	fdSlack        = 8
	// RSS after the recovery. The agents are race-built: most of what an
	// attack adds to RSS is the race detector's shadow memory and
	// metadata (golang/go#26813, #37233), which is never given back and
	// keeps growing while traffic flows; Go's own heap stays at a few MiB.
	// Measured (30 reconnects x 40 streams): RSS +40 MiB at once, +53 MiB
	// after 3 minutes (+12 of them without any attack), go_memstats_sys
	// +5 MiB; a build without -race: +6 MiB, +3 after FreeOSMemory. So
	// only a gross retention (a leak of the attack's buffers) fails.
	rssSlack = 100 << 20
	// The well-behaved client's ping-pong: no error at all (its session
	// stays up), no gap between two answered round trips over
	// pingGapLimit, p99 under pingP99Limit (loopback p50 is about 1 ms).
	pingGapLimit = 5 * time.Second
	pingP99Limit = 2 * time.Second
	// Lines the server may log because of one attack: once per interval
	// per kind of refusal, plus a session's own up/ended lines.
	attackLogLimit = 20
	// The server logs each kind of a certificate's session lines (up,
	// replaced, ended) this many times a minute at most (agent's
	// sessionLineBurst).
	sessionLineBurst = 16
	// The fixed design's default max_streams_per_session, and the slack
	// above it for the streams in flight while the cap acts. An upper
	// bound: a bulk session's cap is lower by default (max_session_buffer
	// 256 MiB over its 1 MiB window: 256 streams).
	streamCap      = 1024
	streamCapSlack = 100
)

// verdict collects expectations: failures, or in report-only mode lines
// saying what would have failed.
type verdict struct {
	t     *testing.T
	fails []string
}

func (v *verdict) expect(ok bool, format string, args ...any) {
	v.t.Helper()
	if ok {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if reportOnly {
		v.fails = append(v.fails, msg)
		v.t.Logf("would fail: %s", msg)
		return
	}
	v.t.Error(msg)
}

// hostileEnv is a server with one well-behaved client and an attacker's
// certificate.
type hostileEnv struct {
	t        *testing.T
	pki      *testPKI
	srv      *server
	clients  []*client
	admin    string
	http     *http.Client
	attacker *tls.Config
	link     *linkemu.Link
	pingP99  time.Duration // the ping-pong's p99 bound: pingP99Limit unless the link is slow on purpose
	// peakAbove, if > 0, bounds the server's goroutines during the attack
	// to this many above the baseline.
	peakAbove int
}

type envSpec struct {
	serverExtra string
	services    []svc // besides echo and secret
	forwards    []fwd // besides echo, on the well-behaved client
	// clientCerts, if set, replaces the one well-behaved client: one
	// client per certificate (files) it issues, each with the forwards.
	clientCerts func(*testPKI) [][2]string
	link        *linkemu.Link // if set, clients reach the server across it
	// allow is added to echo's allow list (the attacker is always on it).
	allow []string
}

// startHostileEnv starts the server and its well-behaved client(s) and waits
// until each session is up on both sides.
func startHostileEnv(t *testing.T, spec envSpec) *hostileEnv {
	t.Helper()
	echoAddr := startEcho(t)
	p := newPKI(t)
	services := append([]svc{
		{name: "echo", target: echoAddr, allow: append([]string{"good-client", "attacker"}, spec.allow...)},
		// Exists, and the attacker may not open it.
		{name: "secret", target: echoAddr, allow: []string{"good-client"}},
	}, spec.services...)
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, "admin {\n  listen = \"127.0.0.1:0\"\n}\n"+spec.serverExtra, services, nil))
	srv.addr = srv.waitMatch(t, reListening)[1]
	e := &hostileEnv{
		t: t, pki: p, srv: srv, link: spec.link, pingP99: pingP99Limit,
		admin: srv.waitMatch(t, reAdmin)[1],
		// No keep-alive: an idle admin connection would count as server
		// goroutines and leave goroutines in this process.
		http: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	}
	e.attacker = clientTLS(p, tlsCert(t, p.issueClient(t, "attacker", pki.Options{})))
	addr := srv.addr
	if spec.link != nil {
		relay, err := spec.link.Relay(srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		addr = relay
	}
	var certs [][2]string
	if spec.clientCerts != nil {
		certs = spec.clientCerts(p)
	} else {
		cert, key := p.clientCert(t, "good-client", pki.Options{})
		certs = [][2]string{{cert, key}}
	}
	forwards := append([]fwd{{name: "echo", service: "echo"}}, spec.forwards...)
	for _, ck := range certs {
		cli := startClient(t, clientHCL(addr, ck[0], ck[1], p.caFile, "", forwards, nil), len(forwards))
		cli.waitLine(t, "session up:")
		e.clients = append(e.clients, cli)
	}
	if spec.clientCerts == nil {
		srv.waitLine(t, "session up:", "peer=good-client")
	}
	t.Cleanup(e.stop)
	return e
}

// stop stops the clients then the server with SIGTERM. A graceful exit is
// expected; in report-only mode a server the attack wedged is only
// reported (startProc's cleanup kills it).
func (e *hostileEnv) stop() {
	for _, p := range append(slices.Clone(e.clients), &client{proc: e.srv.proc}) {
		if !p.running() {
			if !reportOnly {
				e.t.Errorf("%s exited before the end of the test (%v)", p.name, p.err)
			}
			continue
		}
		if !reportOnly {
			p.stop(e.t)
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		start := time.Now()
		select {
		case <-p.done:
			e.t.Logf("%s stopped %s after SIGTERM, exit code %d", p.name, time.Since(start).Round(time.Millisecond), p.cmd.ProcessState.ExitCode())
		case <-time.After(waitLimit):
			e.t.Logf("would fail: %s did not stop within %s of SIGTERM (killed)", p.name, waitLimit)
		}
	}
	e.http.CloseIdleConnections()
}

// usage is a reading of the server process.
type usage struct {
	goroutines int // from /metrics; -1 if it did not answer
	fds        int
	rss        int64
}

func (u usage) String() string {
	return fmt.Sprintf("goroutines=%d fds=%d rss=%.1fMiB", u.goroutines, u.fds, float64(u.rss)/(1<<20))
}

// get fetches an admin path with a bound.
func (e *hostileEnv) get(path string, limit time.Duration) ([]byte, error) {
	c := &http.Client{Transport: e.http.Transport, Timeout: limit}
	resp, err := c.Get("http://" + e.admin + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// metricNumber is the value of an unlabelled metric in a /metrics text.
func metricNumber(text, name string) (float64, bool) {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// usage reads the server's goroutines from /metrics and its descriptors
// and RSS from /proc (which answers even when the server does not).
func (e *hostileEnv) usage() usage {
	u := usage{goroutines: -1}
	if b, err := e.get("/metrics", 5*time.Second); err == nil {
		if v, ok := metricNumber(string(b), "go_goroutines"); ok {
			u.goroutines = int(v)
		}
	}
	pid := e.srv.cmd.Process.Pid
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		u.fds = len(ents)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				u.rss = kb << 10
			}
		}
	}
	return u
}

// baseline is the usage once the well-behaved traffic has settled: the
// highest of three readings, so a momentary dip is not taken as normal.
func (e *hostileEnv) baseline() usage {
	var b usage
	for i := range 3 {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		u := e.usage()
		b.goroutines, b.fds, b.rss = max(b.goroutines, u.goroutines), max(b.fds, u.fds), max(b.rss, u.rss)
	}
	return b
}

// monitor polls /healthz and samples the server's usage until stopped.
type monitor struct {
	stopc chan struct{}
	wg    sync.WaitGroup

	mu          sync.Mutex
	healthN     int
	healthFails int
	healthWorst time.Duration
	firstFail   string
	peak        usage
}

func (e *hostileEnv) startMonitor() *monitor {
	m := &monitor{stopc: make(chan struct{})}
	m.wg.Go(func() {
		tick := time.NewTicker(healthzEvery)
		defer tick.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-tick.C:
			}
			start := time.Now()
			b, err := e.get("/healthz", healthzLimit)
			el := time.Since(start)
			m.mu.Lock()
			m.healthN++
			m.healthWorst = max(m.healthWorst, el)
			if err != nil || string(b) != "ok\n" {
				m.healthFails++
				if m.firstFail == "" {
					m.firstFail = fmt.Sprintf("at %s: %q %v", start.Format("15:04:05.000"), b, err)
				}
			}
			m.mu.Unlock()
		}
	})
	m.wg.Go(func() {
		tick := time.NewTicker(sampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-m.stopc:
				return
			case <-tick.C:
			}
			u := e.usage()
			m.mu.Lock()
			m.peak.goroutines, m.peak.fds, m.peak.rss = max(m.peak.goroutines, u.goroutines), max(m.peak.fds, u.fds), max(m.peak.rss, u.rss)
			m.mu.Unlock()
		}
	})
	e.t.Cleanup(m.stop)
	return m
}

func (m *monitor) stop() {
	select {
	case <-m.stopc:
	default:
		close(m.stopc)
	}
	m.wg.Wait()
}

// pingPong is a well-behaved application: one connection through a
// forward, 64 bytes out and back, continuously, redialling on error.
type pingPong struct {
	name  string
	stopc chan struct{}
	wg    sync.WaitGroup

	mu       sync.Mutex
	rtts     []time.Duration
	errs     int
	firstErr string
	lastOK   time.Time
	maxGap   time.Duration
}

func startPingPong(t *testing.T, name, addr string) *pingPong {
	pp := &pingPong{name: name, stopc: make(chan struct{}), lastOK: time.Now()}
	pp.wg.Go(func() {
		msg, got := make([]byte, 64), make([]byte, 64)
		for round := 0; ; {
			select {
			case <-pp.stopc:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				pp.fail(fmt.Errorf("dial: %w", err))
				pp.pause(200 * time.Millisecond)
				continue
			}
			for {
				select {
				case <-pp.stopc:
					c.Close()
					return
				default:
				}
				round++
				for i := range msg {
					msg[i] = byte(round + i)
				}
				start := time.Now()
				_ = c.SetDeadline(start.Add(10 * time.Second))
				if _, err = c.Write(msg); err == nil {
					_, err = io.ReadFull(c, got)
				}
				if err == nil && string(got) != string(msg) {
					err = errors.New("the echo came back changed")
				}
				if err != nil {
					pp.fail(err)
					break
				}
				pp.ok(time.Since(start))
				pp.pause(10 * time.Millisecond)
			}
			c.Close()
			pp.pause(100 * time.Millisecond)
		}
	})
	t.Cleanup(pp.stop)
	return pp
}

func (pp *pingPong) pause(d time.Duration) {
	select {
	case <-pp.stopc:
	case <-time.After(d):
	}
}

func (pp *pingPong) ok(rtt time.Duration) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	now := time.Now()
	pp.maxGap = max(pp.maxGap, now.Sub(pp.lastOK))
	pp.lastOK = now
	pp.rtts = append(pp.rtts, rtt)
}

func (pp *pingPong) fail(err error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	pp.errs++
	if pp.firstErr == "" {
		pp.firstErr = fmt.Sprintf("%s: %v", time.Now().Format("15:04:05.000"), err)
	}
}

func (pp *pingPong) stop() {
	select {
	case <-pp.stopc:
	default:
		close(pp.stopc)
	}
	pp.wg.Wait()
}

func (pp *pingPong) rounds() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return len(pp.rtts)
}

// waitRounds waits until n more round trips have been answered, within limit.
func (pp *pingPong) waitRounds(n int, limit time.Duration) bool {
	want := pp.rounds() + n
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if pp.rounds() >= want {
			return true
		}
	}
	return false
}

// pingStats are the figures of a stopped ping-pong.
type pingStats struct {
	n, errs     int
	p50, p99    time.Duration
	maxGap      time.Duration
	firstErr    string
	sinceLastOK time.Duration
}

func (pp *pingPong) stats() pingStats {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	s := pingStats{n: len(pp.rtts), errs: pp.errs, maxGap: max(pp.maxGap, time.Since(pp.lastOK)), firstErr: pp.firstErr}
	if len(pp.rtts) > 0 {
		r := slices.Clone(pp.rtts)
		slices.Sort(r)
		s.p50, s.p99 = r[len(r)/2], r[len(r)*99/100]
	}
	return s
}

func (s pingStats) String() string {
	return fmt.Sprintf("rounds=%d p50=%s p99=%s max_gap=%s errors=%d", s.n, s.p50.Round(10*time.Microsecond), s.p99.Round(10*time.Microsecond), s.maxGap.Round(time.Millisecond), s.errs)
}

// attack is one hostile action: it returns when the attacker is gone (its
// connections closed) with a short text of its own figures for the
// summary; it records its own expectations on v.
type attack func(e *hostileEnv, v *verdict) string

// runAttack measures the baseline, runs the attack, waits for the server to
// come back to the baseline and checks the common invariants.
func runAttack(t *testing.T, e *hostileEnv, logLimit int, a attack) {
	v := &verdict{t: t}
	var pps []*pingPong
	for i, cli := range e.clients {
		pps = append(pps, startPingPong(t, fmt.Sprintf("client %d", i), cli.forwards["echo"]))
	}
	for _, pp := range pps {
		if !pp.waitRounds(50, waitLimit) {
			t.Fatalf("%s: the well-behaved ping-pong did not start: %+v", pp.name, pp.stats())
		}
	}
	before := e.baseline()
	logBefore := len(e.srv.log.lines())
	mon := e.startMonitor()

	start := time.Now()
	extra := a(e, v)
	attackTime := time.Since(start)

	// Recovery: back near the baseline within recoverLimit.
	var after usage
	recovered := false
	recStart := time.Now()
	for deadline := recStart.Add(recoverLimit); ; time.Sleep(sampleEvery) {
		after = e.usage()
		if after.goroutines >= 0 && after.goroutines <= before.goroutines+goroutineSlack && after.fds <= before.fds+fdSlack {
			recovered = true
			break
		}
		if time.Now().After(deadline) {
			break
		}
	}
	recTime := time.Since(recStart)
	// The well-behaved client still moves data after the attack.
	flowing := true
	for _, pp := range pps {
		flowing = flowing && pp.waitRounds(20, 10*time.Second)
	}
	mon.stop()
	for _, pp := range pps {
		pp.stop()
	}
	logAfter := len(e.srv.log.lines())

	mon.mu.Lock()
	peak := mon.peak
	health := fmt.Sprintf("healthz n=%d fails=%d worst=%s", mon.healthN, mon.healthFails, mon.healthWorst.Round(time.Millisecond))
	healthFails, firstFail := mon.healthFails, mon.firstFail
	mon.mu.Unlock()
	var sessionsUp, sessionsEnded int
	for _, cli := range e.clients {
		sessionsUp += cli.sessionsUp()
		sessionsEnded += cli.countLines("session ended")
	}
	var pings []string
	for _, pp := range pps {
		pings = append(pings, pp.stats().String())
	}
	t.Logf("SUMMARY %s: attack=%s | goroutines %d/%d/%d | fds %d/%d/%d | rss MiB %.0f/%.0f/%.0f (before/peak/after) | recovered=%v in %s | server log lines +%d | well-behaved %s | client sessions up=%d ended=%d | %s | server running=%v | %s",
		t.Name(), attackTime.Round(time.Millisecond),
		before.goroutines, peak.goroutines, after.goroutines, before.fds, peak.fds, after.fds,
		float64(before.rss)/(1<<20), float64(peak.rss)/(1<<20), float64(after.rss)/(1<<20),
		recovered, recTime.Round(time.Millisecond), logAfter-logBefore, strings.Join(pings, "; "),
		sessionsUp, sessionsEnded, health, e.srv.running(), extra)

	v.expect(e.srv.running(), "the server exited during the attack (%v)", e.srv.err)
	v.expect(healthFails == 0, "/healthz failed to answer within %s %d times (first %s)", healthzLimit, healthFails, firstFail)
	if e.peakAbove > 0 {
		v.expect(peak.goroutines <= before.goroutines+e.peakAbove, "server goroutines peaked at %d during the attack, baseline %d; want at most %d above", peak.goroutines, before.goroutines, e.peakAbove)
	}
	v.expect(recovered, "server usage not back near the baseline %s within %s of the attack's end: %s (slack: %d goroutines, %d fds)", before, recoverLimit, after, goroutineSlack, fdSlack)
	v.expect(after.rss <= before.rss+rssSlack, "server RSS %.0f MiB after the attack, %.0f MiB before (slack %d MiB)", float64(after.rss)/(1<<20), float64(before.rss)/(1<<20), rssSlack>>20)
	v.expect(logAfter-logBefore <= logLimit, "server logged %d lines during the attack, want at most %d", logAfter-logBefore, logLimit)
	v.expect(flowing, "the well-behaved ping-pong stopped moving after the attack")
	v.expect(sessionsUp == len(e.clients) && sessionsEnded == 0, "well-behaved client sessions: %d up, %d ended; want each up once and never ended", sessionsUp, sessionsEnded)
	for _, pp := range pps {
		s := pp.stats()
		v.expect(s.errs == 0, "%s: ping-pong failed %d times (first %s)", pp.name, s.errs, s.firstErr)
		v.expect(s.maxGap <= pingGapLimit, "%s: ping-pong stalled for %s (limit %s)", pp.name, s.maxGap, pingGapLimit)
		v.expect(s.p99 <= e.pingP99, "%s: ping-pong p99 %s (limit %s)", pp.name, s.p99, e.pingP99)
	}
	if len(v.fails) > 0 {
		t.Logf("REPORT %s: %d expectations of the fixed design not met", t.Name(), len(v.fails))
	}
}

// holdAndClose keeps the attacker connected for hold, then drops the TCP
// connection without a goodbye.
func holdAndClose(p *rawPeer, hold time.Duration) {
	select {
	case <-p.done:
	case <-time.After(hold):
	}
	p.close()
}

func TestHostile(t *testing.T) {
	t.Run("control stream flood then close", func(t *testing.T) {
		// 3,000 streams that each claim to be the control stream, held
		// 3 s, then the TCP connection vanishes. Fixed: one control stream
		// per session, the others reset; no goroutine spins after close.
		e := startHostileEnv(t, envSpec{})
		// Every stream the session holds may have a goroutine; no more.
		e.peakAbove = streamCap + streamCapSlack
		runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
			p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
			if err != nil {
				t.Fatalf("attacker refused: %v", err)
			}
			if err := p.openMany(3000, controlHeader, false, 500); err != nil {
				v.expect(false, "the flood could not be sent: %v", err)
			}
			holdAndClose(p, 3*time.Second)
			_, rsts, _, _ := p.counts()
			v.expect(rsts >= 3000-1-streamCapSlack, "%d of 3000 control streams were reset, want all but one", rsts)
			return fmt.Sprintf("control streams reset=%d", rsts)
		})
	})

	t.Run("headerless flood", func(t *testing.T) {
		// 20,000 opens that never send a header, held 3 s, then gone.
		// Fixed: at most the session's stream cap (max_streams_per_session,
		// or less by max_session_buffer) exist at once, the rest are reset
		// by yamux without a goroutine each.
		e := startHostileEnv(t, envSpec{})
		// Every stream the session holds may have a goroutine; no more.
		e.peakAbove = streamCap + streamCapSlack
		runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
			p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
			if err != nil {
				t.Fatalf("attacker refused: %v", err)
			}
			if err := p.openMany(20000, nil, false, 1000); err != nil {
				v.expect(false, "the flood could not be sent: %v", err)
			}
			holdAndClose(p, 3*time.Second)
			_, rsts, _, _ := p.counts()
			v.expect(rsts >= 20000-streamCap-streamCapSlack, "%d of 20000 headerless streams were reset during the hold, want all beyond the cap of %d", rsts, streamCap)
			return fmt.Sprintf("headerless streams reset=%d", rsts)
		})
	})

	t.Run("lane flood", func(t *testing.T) {
		// One certificate asks for every lane of the bulk class at once
		// (bulk_connections), and 50 times for lanes that do not exist
		// (8, far beyond, negative, a lane of the control class). Fixed:
		// at most max_sessions_per_identity (4) of its sessions served at
		// once, the rest refused; every bad lane refused at the hello;
		// the well-behaved client's session untouched.
		e := startHostileEnv(t, envSpec{})
		runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
			lane := func(class string, n int) map[string]any {
				return map[string]any{"role": "client", "agent": "hostile", "class": class, "lane": n, "caps": []string{"lanes/1", "resume/1"}}
			}
			// served: a stream open on the session is answered OK.
			served := func(p *rawPeer, err error) bool {
				if err != nil {
					return false
				}
				code, err := p.probe("echo", 5*time.Second)
				return err == nil && code == 0
			}
			var held []*rawPeer
			lanesServed := 0
			for n := range 8 {
				p, err := hostileDialHello(t, e.srv.addr, e.attacker, lane("bulk", n))
				if served(p, err) {
					lanesServed++
				}
				if err == nil {
					held = append(held, p)
				}
			}
			badServed := 0
			bad := []map[string]any{lane("bulk", 8), lane("bulk", 1<<30), lane("bulk", -1), lane("control", 1)}
			for i := range 50 {
				p, err := hostileDialHello(t, e.srv.addr, e.attacker, bad[i%len(bad)])
				if served(p, err) {
					badServed++
				}
				if err == nil {
					p.close()
				}
			}
			// All its lanes still held: count the server's sessions of
			// the attacker's certificate now.
			attackerSessions := 0
			var st admin.Status
			b, err := e.get("/status", 5*time.Second)
			if err == nil {
				err = json.Unmarshal(b, &st)
			}
			v.expect(err == nil, "/status during the attack: %v", err)
			for _, s := range st.Sessions {
				if s.Peer == "attacker" {
					attackerSessions++
				}
			}
			for _, p := range held {
				p.close()
			}
			v.expect(lanesServed >= 1 && lanesServed <= 4, "%d of the attacker's 8 lanes served at once, want 1 to 4 (max_sessions_per_identity)", lanesServed)
			v.expect(attackerSessions <= 4, "server holds %d sessions of the attacker's certificate, want at most 4", attackerSessions)
			v.expect(badServed == 0, "%d of 50 sessions on lanes that do not exist were served, want none", badServed)
			return fmt.Sprintf("lanes served=%d of 8, attacker sessions held=%d, bad lanes served=%d of 50", lanesServed, attackerSessions, badServed)
		})
	})

	t.Run("hello class abuse", func(t *testing.T) {
		// 300 short sessions, each with a unique 3,500-byte class (unique
		// from its first byte, so no prefix can share a log key). Fixed:
		// each refused; /metrics stays small; the log says it a few times.
		e := startHostileEnv(t, envSpec{})
		runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
			m0, err := e.get("/metrics", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			served, refused, unclear := 0, 0, 0
			var firstUnclear string
			for i := range 300 {
				class := fmt.Sprintf("%04d", i) + strings.Repeat("x", 3500-4)
				p, err := hostileDial(t, e.srv.addr, e.attacker, class)
				if err != nil {
					refused++ // refused before or at the hello
					continue
				}
				// Served means a stream open is answered OK.
				code, err := p.probe("echo", 5*time.Second)
				switch {
				case err == nil && code == 0:
					served++
				case p.closed() || err == nil:
					refused++
				default:
					unclear++
					if firstUnclear == "" {
						firstUnclear = err.Error()
					}
				}
				p.close()
			}
			// The server notices each close and ends the session.
			time.Sleep(time.Second)
			m1, err := e.get("/metrics", 5*time.Second)
			if err != nil {
				v.expect(false, "/metrics after the attack: %v", err)
			}
			growth := len(m1) - len(m0)
			v.expect(served == 0 && unclear == 0, "sessions with a unique 3,500-byte class: %d served, %d refused, %d unclear (%s); want all refused", served, refused, unclear, firstUnclear)
			v.expect(growth < 10<<10, "/metrics grew by %d bytes (%d → %d), want under 10 KiB", growth, len(m0), len(m1))
			return fmt.Sprintf("class sessions served=%d refused=%d unclear=%d metrics_bytes %d→%d", served, refused, unclear, len(m0), len(m1))
		})
	})

	t.Run("CA certificate as client leaf", func(t *testing.T) {
		// A certificate with CA:TRUE issued by the trusted CA, whose name
		// is even on the allow list. Fixed: refused in the handshake.
		e := startHostileEnv(t, envSpec{allow: []string{"rogue-ca"}})
		runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
			inter, err := e.pki.ca.NewIntermediate(pki.Options{CommonName: "rogue-ca"})
			if err != nil {
				t.Fatal(err)
			}
			conf := clientTLS(e.pki, tlsCert(t, inter))
			outcome := "refused"
			if p, err := hostileDial(t, e.srv.addr, conf, "bulk"); err != nil {
				outcome = "refused: " + err.Error()
			} else {
				code, err := p.probe("echo", 5*time.Second)
				if err == nil && code == 0 {
					outcome = "served"
				} else if err != nil {
					outcome = "refused after the hello: " + err.Error()
				}
				p.close()
			}
			_, up := e.srv.findLine("session up:", "peer=rogue-ca")
			v.expect(!strings.HasPrefix(outcome, "served") && !up, "a CA certificate was accepted as a client leaf (outcome %s, session up logged: %v)", outcome, up)
			return "ca_leaf=" + outcome
		})
	})

	t.Run("refusal log volume", func(t *testing.T) {
		// 5,000 opens to an unknown service and 5,000 to one the attacker
		// may not use. Fixed: the same answer for both (no listing of
		// service names), and a bounded number of log lines.
		e := startHostileEnv(t, envSpec{})
		runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
			p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
			if err != nil {
				t.Fatalf("attacker refused: %v", err)
			}
			unknown := openPaced(t, v, p, "no-such-service", 5000)
			denied := openPaced(t, v, p, "secret", 5000)
			p.close()
			// A reset (-1) is the stream cap or backlog answering, the same
			// for any name: only the reply codes could tell names apart.
			codesU, codesD := maps.Clone(unknown), maps.Clone(denied)
			delete(codesU, -1)
			delete(codesD, -1)
			v.expect(len(codesU) == 1 && sameKeys(codesU, codesD), "answers: unknown service %v, denied %v; want one and the same reply code for both", unknown, denied)
			lines := e.srv.countLines("stream refused")
			v.expect(lines < attackLogLimit, "server logged %d \"stream refused\" lines for 10,000 refusals, want under %d", lines, attackLogLimit)
			return fmt.Sprintf("answers unknown=%v denied=%v refusal_lines=%d", unknown, denied, lines)
		})
	})
}

// TestHostileResumeFlood: an attacker that announces resumable streams
// asks 5,000 times to resume streams it guesses (random tokens, any count
// delivered): every one is refused with the same answer, none is logged
// on its own, and nothing is held.
func TestHostileResumeFlood(t *testing.T) {
	e := startHostileEnv(t, envSpec{})
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk", "resume/1")
		if err != nil {
			t.Fatalf("attacker refused: %v", err)
		}
		guess := func() []byte {
			var r [16 + 8]byte
			_, _ = rand.Read(r[:])
			return resumeHeader([16]byte(r[:16]), binary.BigEndian.Uint64(r[16:])) // any token, any count delivered
		}
		answers := openPacedHeader(t, v, p, "resume", guess, 5000)
		p.close()
		codes := maps.Clone(answers)
		delete(codes, -1) // the stream cap's resets, if any
		v.expect(len(codes) == 1 && codes[6] > 0, "answers to guessed resumes: %v, want all \"no such stream\" (6)", answers)
		lines := e.srv.countLines("resume")
		v.expect(lines < attackLogLimit, "server logged %d lines about resumes for 5,000 guesses, want under %d", lines, attackLogLimit)
		return fmt.Sprintf("answers=%v resume_lines=%d", answers, lines)
	})
}

// TestHostileYamuxLogFlood: yamux logs some protocol oddities once per
// frame without ending the session (an ACK on an established stream:
// "established stream without inflight SYN"). 10,000 such frames must not
// become 10,000 log lines. Not in the agreed design: found by the frame
// fuzzer.
func TestHostileYamuxLogFlood(t *testing.T) {
	e := startHostileEnv(t, envSpec{})
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
		if err != nil {
			t.Fatalf("attacker refused: %v", err)
		}
		if code, err := p.probe("echo", 10*time.Second); err != nil || code != 0 {
			t.Fatalf("the attacker's stream to echo: code %d, %v", code, err)
		}
		var buf []byte
		for range 10000 {
			buf = windowFrame(buf, flagACK, 1, 0) // stream 1: the probe's, established
		}
		if err := p.write(buf); err != nil {
			v.expect(false, "the frames could not be sent: %v", err)
		}
		// The session survives these frames; let the server read them all.
		code, err := p.probe("echo", 10*time.Second)
		alive := err == nil && code == 0
		p.close()
		return fmt.Sprintf("session alive after the flood=%v", alive)
	})
}

// TestHostileStrayFrames: 10,000 window updates for streams the server
// never held (no SYN) are dropped, counted in tunnel_stray_frames_total,
// not logged one by one, and the session serves on.
func TestHostileStrayFrames(t *testing.T) {
	e := startHostileEnv(t, envSpec{})
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
		if err != nil {
			t.Fatalf("attacker refused: %v", err)
		}
		var buf []byte
		for i := range 10000 {
			buf = windowFrame(buf, 0, uint32(1001+2*(i%500)), 4096) // odd IDs: the attacker's, never opened
		}
		if err := p.write(buf); err != nil {
			v.expect(false, "the frames could not be sent: %v", err)
		}
		code, err := p.probe("echo", 10*time.Second)
		alive := err == nil && code == 0
		v.expect(alive, "the session serves after the stray frames: code %d, %v", code, err)
		// Counted on the session's watcher, once per ping tick.
		var counted float64
		deadline := time.Now().Add(waitLimit)
		for counted < 10000 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			if b, err := e.get("/metrics", 5*time.Second); err == nil {
				counted = metricValue(t, string(b), "tunnel_stray_frames_total")
			}
		}
		v.expect(counted == 10000, "tunnel_stray_frames_total = %v, want 10000", counted)
		p.close()
		return fmt.Sprintf("session alive after the frames=%v, counted=%v", alive, counted)
	})
}

// TestHostileHeavyNoticeFlood: a heavy notice (heavy/1) tells a stream's
// opener that the stream is a transfer toward its peer. An attacker that
// announces heavy/1 sends 10,000 on its control stream naming streams the
// server did not open to it (its own stream, the server's control stream,
// IDs never used): every one is dropped, none is logged, nothing is
// held, and the session serves on.
func TestHostileHeavyNoticeFlood(t *testing.T) {
	e := startHostileEnv(t, envSpec{})
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk", "resume/1", "heavy/1")
		if err != nil {
			t.Fatalf("attacker refused: %v", err)
		}
		if code, err := p.probe("echo", 10*time.Second); err != nil || code != 0 {
			t.Fatalf("the attacker's stream to echo: code %d, %v", code, err)
		}
		body := append([]byte(nil), controlHeader...)
		for i := range uint32(10000) {
			body = binary.BigEndian.AppendUint32(body, 0xFFFFFFFC)
			body = binary.BigEndian.AppendUint32(body, i%5000) // 1 (its own), 2 (the server's control stream), the rest unused
		}
		// 80 KiB in 16 KiB frames: within the stream's first window.
		id := p.openIDs(1)[0]
		var frames []byte
		for off, flags := 0, uint16(flagSYN); off < len(body); off, flags = off+16<<10, 0 {
			frames = dataFrame(frames, flags, id, body[off:min(off+16<<10, len(body))])
		}
		if err := p.write(frames); err != nil {
			v.expect(false, "the notices could not be sent: %v", err)
		}
		// The session reads them all before this open, which comes after.
		code, err := p.probe("echo", 10*time.Second)
		alive := err == nil && code == 0
		v.expect(alive, "the session after 10,000 heavy notices: code %d, %v", code, err)
		lines := e.srv.countLines("heavy")
		v.expect(lines < attackLogLimit, "server logged %d lines about heavy notices, want under %d", lines, attackLogLimit)
		p.close()
		return fmt.Sprintf("session alive after the flood=%v heavy_lines=%d", alive, lines)
	})
}

func sameKeys(a, b map[int]int) bool {
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return len(a) == len(b)
}

// openPaced opens n streams to service, each a header with FIN (the
// attacker sends nothing more), keeping at most 128 unanswered at once so
// the stream cap (256 for a bulk session by default: max_session_buffer /
// its window) is not what answers; it returns how many got each code
// (-1: reset).
func openPaced(t *testing.T, v *verdict, p *rawPeer, service string, n int) map[int]int {
	return openPacedHeader(t, v, p, service, func() []byte { return openHeader(service) }, n)
}

// openPacedHeader is openPaced with each stream's header from header;
// what names the attack in failures.
func openPacedHeader(t *testing.T, v *verdict, p *rawPeer, what string, header func() []byte, n int) map[int]int {
	service := what
	const inFlight = 128
	sem := make(chan struct{}, inFlight)
	answers := make(chan int, n)
	var mu sync.Mutex
	mine := map[uint32]bool{}
	p.mu.Lock()
	p.onAnswer = func(id uint32) {
		mu.Lock()
		ok := mine[id]
		delete(mine, id)
		mu.Unlock()
		if ok {
			<-sem
			answers <- 0
		}
	}
	p.mu.Unlock()
	codes0, _, _, _ := p.counts()
	sent := 0
	for ; sent < n; sent++ {
		select {
		case sem <- struct{}{}:
		case <-time.After(10 * time.Second):
			v.expect(false, "%s: no answer for 10 s with %d opens outstanding (%d sent)", service, inFlight, sent)
			return nil
		}
		id := p.openIDs(1)[0]
		mu.Lock()
		mine[id] = true
		mu.Unlock()
		if err := p.write(dataFrame(nil, flagSYN|flagFIN, id, header())); err != nil {
			v.expect(false, "%s: open %d: %v", service, sent, err)
			return nil
		}
	}
	for got := 0; got < n; got++ {
		select {
		case <-answers:
		case <-time.After(10 * time.Second):
			v.expect(false, "%s: %d of %d opens answered", service, got, n)
			return nil
		}
	}
	codes1, _, _, _ := p.counts()
	out := map[int]int{}
	for k, c := range codes1 {
		if d := c - codes0[k]; d > 0 {
			out[int(k)] = d
		}
	}
	// Resets are answers too; count them as code -1.
	total := 0
	for _, c := range out {
		total += c
	}
	if total < n {
		out[-1] = n - total
	}
	return out
}

// uriOnlyCert issues a client certificate with no common name and no DNS
// SAN, only a URI SAN (SPIFFE-style), and writes it; returns the files.
func uriOnlyCert(t *testing.T, p *testPKI, uri string) (certFile, keyFile string) {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	// Borrow a key pair from an ordinary issue, then sign our own template.
	donor := p.issueClient(t, "donor", pki.Options{})
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		URIs:           []*url.URL{u},
		NotBefore:      time.Now().Add(-time.Minute),
		NotAfter:       time.Now().Add(24 * time.Hour),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		AuthorityKeyId: p.ca.Cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca.Cert, donor.Key.Public(), p.ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := donor.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(p.dir, fmt.Sprintf("uri-%d.crt", serial.Uint64()))
	keyFile = strings.TrimSuffix(certFile, ".crt") + ".key"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// Two clients with the same CN (different keys) and two with only a URI
// SAN (no CN, no DNS name: the same empty readable name) connected at once
// for 30 s. Fixed: sessions are keyed by the key's pin, so all four are
// served side by side and each logs "session up" about once (no replace
// loop). Runs in parallel with the other hostile tests.
func TestHostileSameName(t *testing.T) {
	t.Parallel()
	e := startHostileEnv(t, envSpec{
		allow: []string{"twin", "spiffe://corp/router/*"},
		clientCerts: func(p *testPKI) [][2]string {
			var certs [][2]string
			for range 2 {
				c, k := p.clientCert(t, "twin", pki.Options{})
				certs = append(certs, [2]string{c, k})
			}
			for _, u := range []string{"spiffe://corp/router/r1", "spiffe://corp/router/r2"} {
				c, k := uriOnlyCert(t, p, u)
				certs = append(certs, [2]string{c, k})
			}
			return certs
		},
	})
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		// Bound: 30 s with all four connected, as the issue describes.
		time.Sleep(30 * time.Second)
		up := e.srv.sessionsUp()
		v.expect(up <= 2*len(e.clients), "server logged %d \"session up\" lines for %d clients in 30 s, want at most %d (a replace loop?)", up, len(e.clients), 2*len(e.clients))
		return fmt.Sprintf("server session_up_lines=%d replaced_lines=%d", up, e.srv.countLines("reconnected"))
	})
}

// Reset ordering on a congested link: a stream whose far end resets while
// the link is slow and the receiving application reads slowly must reach
// that application as a reset, never as a clean EOF (which would make a
// truncated transfer look complete). Both directions, a few rounds each.
func TestHostileResetOrdering(t *testing.T) {
	link := linkemu.New(linkemu.Config{RateBitsPerSec: 8e6, OneWayDelay: 20 * time.Millisecond})
	t.Cleanup(func() { link.Close() })
	const sendBytes = 1 << 20
	// The target writes sendBytes of a pattern, then resets its connection.
	resetter := startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		_, _ = c.Write(pattern(sendBytes))
		_ = c.(*net.TCPConn).SetLinger(0)
	})
	// The target reads slowly until its connection ends, and reports how.
	slowEnds := make(chan string, 16)
	slowReader := startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		n, err := readSlowly(c)
		slowEnds <- fmt.Sprintf("%s after %d bytes", errAnswer(err), n)
	})
	e := startHostileEnv(t, envSpec{
		link:     link,
		services: []svc{{name: "resetter", target: resetter, allow: []string{"good-client"}}, {name: "slow", target: slowReader, allow: []string{"good-client"}}},
		forwards: []fwd{{name: "resetter", service: "resetter"}, {name: "slow", service: "slow"}},
	})
	// The ping-pong crosses the same 8 Mbit/s link as the 1 MiB bursts,
	// each about a second of queue: its p99 is that, not loopback's.
	e.pingP99 = 5 * time.Second
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		const rounds = 3
		var out []string
		for i := range rounds {
			// Server side resets; the client-side application reads slowly.
			c, err := net.DialTimeout("tcp", e.clients[0].forwards["resetter"], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			n, err := readSlowly(c)
			c.Close()
			v.expect(isReset(err), "round %d, target reset: the client-side application saw %s after %d of %d bytes, want a reset", i, errAnswer(err), n, sendBytes)
			out = append(out, "far-reset→"+errAnswer(err))

			// Client-side application resets; the target reads slowly.
			c, err = net.DialTimeout("tcp", e.clients[0].forwards["slow"], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			_, _ = c.Write(pattern(sendBytes))
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			select {
			case end := <-slowEnds:
				v.expect(strings.HasPrefix(end, "reset"), "round %d, client app reset: the target saw %s, want a reset", i, end)
				out = append(out, "near-reset→"+end)
			case <-time.After(40 * time.Second):
				v.expect(false, "round %d: the slow target never saw its connection end", i)
			}
		}
		// The application resets at once after a 1-byte write: the reset
		// follows the stream's header closely, while the server may still
		// be dialling the target. The target must see a reset or no
		// connection at all, never a clean end of data.
		instant := map[string]int{}
		for i := range 6 {
			c, err := net.DialTimeout("tcp", e.clients[0].forwards["slow"], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write(pattern(1))
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
			select {
			case end := <-slowEnds:
				v.expect(strings.HasPrefix(end, "reset"), "instant round %d: the target saw %s, want a reset or no connection", i, end)
				instant[strings.SplitN(end, " after", 2)[0]]++
			case <-time.After(2 * time.Second): // a dial would be at once
				instant["never dialled"]++
			}
		}
		out = append(out, fmt.Sprintf("instant-reset→%v", instant))
		return strings.Join(out, ", ")
	})
}

// pattern is n bytes a reader can check as a prefix.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// readSlowly reads 8 KiB every 20 ms (about 400 KB/s, below the link's
// rate) until an error, checking the bytes are the pattern's prefix.
func readSlowly(c net.Conn) (int, error) {
	buf := make([]byte, 8<<10)
	total := 0
	for range 100000 { // bounded; the deadline ends it first
		n, err := c.Read(buf)
		for i := range n {
			if buf[i] != byte((total+i)%251) {
				return total + i, fmt.Errorf("byte %d differs from what was sent", total+i)
			}
		}
		total += n
		if err != nil {
			return total, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return total, errors.New("read loop bound reached")
}

// TestHostileReconnectLoop: one certificate reconnects 30 times, one
// after another, with 40 streams open to the echo on each session and
// every connection kept open. A reconnect replaces the session of its
// class and lane, and the replaced one drains beside it. Fixed: one
// replaced session drains per class and lane (and max_sessions_per_identity
// per certificate); past that the oldest is ended at once, its streams
// reset, so the attacker never holds more than two bulk sessions.
func TestHostileReconnectLoop(t *testing.T) {
	e := startHostileEnv(t, envSpec{})
	bulkSessions := func() float64 {
		b, err := e.get("/metrics", 5*time.Second)
		if err != nil {
			return -1
		}
		n, ok := metricNumber(string(b), `tunnel_sessions{agent="server",class="bulk"}`)
		if !ok {
			return -1
		}
		return n
	}
	// Each reconnect is a session's life (up, the one it replaced, that
	// one's end: 3 lines), but one certificate's session lines are 16 of
	// each kind a minute at most (90 lines before they were), and its
	// streams' ends are not one line each (2,828 "stream cut" lines
	// before they were limited).
	// 40 streams a session keeps the race-built server within the RSS
	// slack (100 per session left it at +92–102 MiB: the race detector's
	// memory for the streams' goroutines and accesses, not Go's heap,
	// which stays under 25 MiB; see rssSlack).
	const reconnects, streamsEach = 30, 40
	runAttack(t, e, attackLogLimit+3*sessionLineBurst, func(e *hostileEnv, v *verdict) string {
		base := bulkSessions()
		v.expect(base >= 0, "no tunnel_sessions gauge for the bulk class in /metrics")
		var peers []*rawPeer
		defer func() {
			for _, p := range peers {
				p.close()
			}
		}()
		peak := base
		for range reconnects {
			p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
			if err != nil {
				t.Fatalf("attacker refused: %v", err)
			}
			peers = append(peers, p)
			if err := p.openMany(streamsEach, openHeader("echo"), false, streamsEach); err != nil {
				v.expect(false, "the streams could not be sent: %v", err)
			}
			if _, err := p.probe("echo", 5*time.Second); err != nil {
				v.expect(false, "a stream on the attacker's newest session: %v", err)
			}
			peak = max(peak, bulkSessions())
		}
		// Two of the attacker's, and a third one ending: the gauge falls
		// when a session's goroutines are done, a moment after its end.
		v.expect(peak <= base+3, "the server held %.0f bulk sessions during the loop, %.0f before it; want at most 2 of the attacker's (3 while one ends)", peak, base)
		return fmt.Sprintf("bulk sessions before=%.0f peak=%.0f", base, peak)
	})
}

// TestHostileTokenReplay: a peer holds one resumable stream and opens 200
// more under its token. Fixed: each is refused before its target is
// dialled ("bad header"), counted as token_held, and logged once per
// interval, not once per open (each was dialled, answered, then reset,
// with a warning line apiece).
func TestHostileTokenReplay(t *testing.T) {
	e := startHostileEnv(t, envSpec{})
	runAttack(t, e, attackLogLimit, func(e *hostileEnv, v *verdict) string {
		p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk", "resume/1")
		if err != nil {
			t.Fatalf("attacker refused: %v", err)
		}
		defer p.close()
		var token [16]byte
		_, _ = rand.Read(token[:])
		header := func() []byte { return resumableHeader("echo", token) }
		// Held open (no FIN), so the token stays held throughout.
		first, err := p.probeHeader(header(), 5*time.Second)
		v.expect(err == nil && first == 0, "the first resumable open under the token: code %d, %v; want ok (0)", first, err)
		const replays = 200
		answers := openPacedHeader(t, v, p, "opens under a held token", header, replays)
		// A few may meet the session's stream cap first (reset, -1: the
		// refused ones' slots free a moment after their answers); none
		// may be served.
		v.expect(answers[0] == 0 && answers[4]+answers[-1] == replays && answers[4] >= replays/2,
			"answers to %d opens under a held token: %v, want all \"bad header\" (4) but a few stream-cap resets (-1)", replays, answers)
		refused := -1.0
		if b, err := e.get("/metrics", 5*time.Second); err == nil {
			refused, _ = metricNumber(string(b), `tunnel_streams_refused_total{agent="server",kind="token_held"}`)
		}
		v.expect(refused == float64(answers[4]), "tunnel_streams_refused_total{kind=\"token_held\"} = %v, want %d (one per \"bad header\")", refused, answers[4])
		return fmt.Sprintf("answers=%v token_held=%v", answers, refused)
	})
}
