package tunnelbench

import (
	"bytes"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/agent"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestMain(m *testing.M) {
	// startRelayChain and startRemoteTargets run their own executable
	// (this test binary) with -relay or -targets.
	if IsChild(os.Args[1:]) {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// One relay chain carries two targets, each to its own: the echo answers
// every ping byte for byte, the sink counts and verifies a bulk stream.
func TestRelayChainCarriesEachTarget(t *testing.T) {
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	rc, err := startRelayChain(tg.echo, tg.sink)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	if len(rc.allPids()) != 2 || len(rc.pids(0)) != 2 {
		t.Fatalf("%d relay processes, want 2", len(rc.allPids()))
	}
	rtts, err := pingPong(rc.dialer(0), 100, 64, time.Now().Add(10*time.Second))
	if err != nil || len(rtts) != 100 {
		t.Fatalf("ping through the relays: %d round trips, %v", len(rtts), err)
	}
	if _, moved, err := throughput(rc.dialer(1), 1, 200*time.Millisecond); err != nil || moved == 0 {
		t.Fatalf("bulk through the relays: %d bytes, %v", moved, err)
	}
}

// The targets in a process of their own answer as the in-process ones do,
// and go away with close.
func TestRemoteTargetsServeEchoAndSink(t *testing.T) {
	rt, err := startRemoteTargets()
	if err != nil {
		t.Fatal(err)
	}
	if rt.cmd.Process.Pid == os.Getpid() {
		t.Fatal("targets run in this process")
	}
	rtts, err := pingPong(tcpDialer(rt.echo), 100, 64, time.Now().Add(10*time.Second))
	if err != nil || len(rtts) != 100 {
		t.Fatalf("ping: %d round trips, %v", len(rtts), err)
	}
	if _, moved, err := throughput(tcpDialer(rt.sink), 1, 200*time.Millisecond); err != nil || moved == 0 {
		t.Fatalf("bulk: %d bytes, %v", moved, err)
	}
	rt.close()
	if rt.cmd.ProcessState == nil {
		t.Fatal("targets process not ended and waited for by close")
	}
	if _, err := pingPong(tcpDialer(rt.echo), 1, 64, time.Now().Add(2*time.Second)); err == nil {
		t.Fatal("echo still answers after close")
	}
}

func TestRelayBadSpec(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{relayFlag, "127.0.0.1:0=127.0.0.1:1,nonsense"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2 (stderr %q)", code, errb.String())
	}
	if !bytes.Contains(errb.Bytes(), []byte("want LISTEN=TARGET")) || out.Len() != 0 {
		t.Errorf("stdout %q, stderr %q: want only the usage on stderr", out.String(), errb.String())
	}
}

func TestBadCommandLine(t *testing.T) {
	for _, args := range [][]string{{"-scenario", "moon"}, {"extra"}, {"-idle", "0"}, {"-nope"}, {"-peers", "moon"}, {"-peers", "stunnel,stunnel"},
		{"-agents", "nolabel"}, {"-agents", "x=/nonexistent"}, {"-runs", "-1"}, {"-runs", "10"}} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.99, 10}, {1, 10}, {0.1, 1}} {
		if got := percentile(d, c.q); got != c.want {
			t.Errorf("p%v = %v, want %v", c.q*100, got, c.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

// A ping's mean counts its tail in proportion, where its p50 does not;
// the bulk beside it is all streams' bytes over the slowest one's time.
func TestLoadMeanAndBulkRate(t *testing.T) {
	d := []time.Duration{100 * time.Microsecond, 100 * time.Microsecond, 100 * time.Microsecond, 10 * time.Millisecond}
	if got := meanUs(d); got != 2575 {
		t.Errorf("mean %v µs, want 2575", got)
	}
	if pct(d, 0.5) != 100 {
		t.Errorf("p50 %v µs, want 100", pct(d, 0.5))
	}
	if meanUs(nil) != -1 {
		t.Error("the mean of no samples is not -1 (not measured)")
	}
	gbps, bytes := bulkRate([]bulkResult{{bytes: 1e9, elapsed: 2 * time.Second}, {bytes: 5e8, elapsed: 4 * time.Second}})
	if bytes != 15e8 || gbps != 3 {
		t.Errorf("bulk rate %v Gbit/s of %d bytes, want 3 of 1.5e9 (over the slower stream's 4 s)", gbps, bytes)
	}
	if gbps, _ := bulkRate([]bulkResult{{}}); gbps != 0 {
		t.Errorf("a rate of %v Gbit/s over no time", gbps)
	}
}

// Several runs give each scalar's median (runs that did not measure it
// left out), pool the round trips, and keep the idle figures measured once.
func TestMergeRuns(t *testing.T) {
	p := newPath("x", nil, nil, nil)
	p.fig.rssBefore, p.fig.rssAfter, p.fig.idle = []float64{100}, []float64{300}, 10
	for _, r := range []struct {
		t1, conns, rcvBuf float64
		rtt               time.Duration
		bulk              []float64
	}{{3, 10, 2, 1, []float64{4}}, {1, -1, -1, 2, []float64{9, 5}}, {2, 30, 6, 3, nil}} {
		p.fig.t1, p.fig.conns, p.fig.rcvBuf0, p.fig.rtt, p.fig.loadBulk = r.t1, r.conns, r.rcvBuf, []time.Duration{r.rtt}, r.bulk
		p.endRun()
		if p.fig.t1 != -1 || p.fig.rcvBuf0 != -1 || p.fig.rtt != nil || p.fig.loadBulk != nil {
			t.Fatal("endRun left the run's figures for the next")
		}
	}
	p.mergeRuns()
	if p.fig.t1 != 2 || p.fig.conns != 20 || p.fig.t8 != -1 {
		t.Errorf("t1 %v (want 2), conns %v (want 20, the mean of the middle two), t8 %v (want -1)", p.fig.t1, p.fig.conns, p.fig.t8)
	}
	if len(p.fig.rtt) != 3 || p.fig.idleKiB() != 20 {
		t.Errorf("round trips %v (want 3 pooled), idle %v KiB (want 20)", p.fig.rtt, p.fig.idleKiB())
	}
	if got, other := mRcvBf0.get(&p.fig), mRcvBfN.get(&p.fig); got != 4 || other != -1 {
		t.Errorf("kernel receive buffers %v and %v MiB, want 4 (the median of the runs that read it) and -1 (never read)", got, other)
	}
	if got := mLoadBk.get(&p.fig); got != 5 {
		t.Errorf("bulk beside the pings %v, want 5 (the median of the rounds of all runs)", got)
	}
	if got := spread(mT1, p); got != " (1.00–3.00)" {
		t.Errorf("spread of t1 = %q", got)
	}
	if spread(mIdle, p) != "" {
		t.Error("the idle figure, measured once, has a spread")
	}
}

func TestRowTargets(t *testing.T) {
	for _, c := range []struct {
		r    row
		want string
	}{
		{row{base: 10, tunnel: 3, higherBetter: true, ratio: 0.28}, "ok"},
		{row{base: 10, tunnel: 2, higherBetter: true, ratio: 0.28}, "FAIL"},
		{row{base: 10, tunnel: 40, ratio: 5}, "ok"},
		{row{base: 10, tunnel: 60, ratio: 5}, "FAIL"},
		{row{base: -1, tunnel: 39, abs: true, ratio: 40}, "ok"},
		{row{base: -1, tunnel: 41, abs: true, ratio: 40}, "FAIL"},
		{row{base: 1, tunnel: 1}, ""},
	} {
		if got := c.r.pass(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.r, got, c.want)
		}
	}
}

// testPKI is the agents' kind of PKI plus two client certificates the
// server side must refuse: another CN from the same CA, and the right CN
// from another CA.
func testPKI(t *testing.T) (good agent.DemoFiles, wrongCN, otherCA [2]string) {
	t.Helper()
	dir := t.TempDir()
	good = agent.DemoFiles{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"),
	}
	ca, err := pki.NewRootCA(pki.Options{CommonName: "bench test CA"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewRootCA(pki.Options{CommonName: "another CA"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good.CA, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.WriteFiles(good.ServerCert, good.ServerKey); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ca        *pki.Cert
		cn        string
		cert, key string
	}{
		{ca, clientName, good.ClientCert, good.ClientKey},
		{ca, "intruder", filepath.Join(dir, "intruder.crt"), filepath.Join(dir, "intruder.key")},
		{other, clientName, filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key")},
	} {
		cli, err := c.ca.IssueClient(pki.Options{CommonName: c.cn})
		if err != nil {
			t.Fatal(err)
		}
		if err := cli.WriteFiles(c.cert, c.key); err != nil {
			t.Fatal(err)
		}
	}
	return good, [2]string{filepath.Join(dir, "intruder.crt"), filepath.Join(dir, "intruder.key")},
		[2]string{filepath.Join(dir, "other.crt"), filepath.Join(dir, "other.key")}
}

// A peer chain carries both targets, each to its own, with every byte
// checked both ways (the echo byte for byte, the sink's count and CRC of
// what went the other way), and its server side refuses a client
// certificate with another CN or from another CA.
func testPeerChain(t *testing.T, pr *peer) {
	good, wrongCN, otherCA := testPKI(t)
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	dir := t.TempDir()
	c, err := pr.start(dir, good, tg.echo, tg.sink)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(c.allPids()); n < 2 {
		t.Errorf("%d processes, want at least 2", n)
	}
	for _, size := range []int{64, 16 << 10} {
		rtts, err := pingPong(c.dialer(0), 50, size, time.Now().Add(20*time.Second))
		if err != nil || len(rtts) != 50 {
			t.Errorf("echo of %d B through %s: %d round trips, %v", size, pr.name, len(rtts), err)
		}
	}
	if _, moved, err := throughput(c.dialer(1), 2, 200*time.Millisecond); err != nil || moved == 0 {
		t.Errorf("bulk through %s: %d bytes, %v", pr.name, moved, err)
	}
	c.close()
	if _, err := pingPong(c.dialer(0), 1, 64, time.Now().Add(2*time.Second)); err == nil {
		t.Error("the chain still answers after close")
	}

	for _, bad := range []struct {
		what      string
		cert, key string
	}{{"another CN", wrongCN[0], wrongCN[1]}, {"another CA", otherCA[0], otherCA[1]}} {
		files := good
		files.ClientCert, files.ClientKey = bad.cert, bad.key
		c, err := pr.start(dir, files, tg.echo, tg.sink)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pingPong(c.dialer(0), 1, 64, time.Now().Add(5*time.Second)); err == nil {
			t.Errorf("%s: a client certificate with %s got through", pr.name, bad.what)
		}
		c.close()
	}
}

func TestStunnelChain(t *testing.T) {
	bin, missing := lookPath("stunnel4", "stunnel")
	if bin == "" {
		t.Skipf("stunnel is not installed (%s; Debian: apt-get install stunnel4)", missing)
	}
	testPeerChain(t, &peer{name: "stunnel", bin: bin})
}

func TestGhostunnelChain(t *testing.T) {
	bin := os.Getenv("BENCH_GHOSTUNNEL")
	if bin == "" {
		var missing string
		if bin, missing = lookPath("ghostunnel"); bin == "" {
			t.Skipf("ghostunnel is not installed (%s, BENCH_GHOSTUNNEL unset)", missing)
		}
	}
	testPeerChain(t, &peer{name: "ghostunnel", bin: bin})
}

func TestFreePortsAndListeningPorts(t *testing.T) {
	ports, err := freePorts(3)
	if err != nil || len(ports) != 3 {
		t.Fatalf("%v, %v", ports, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	have, err := listeningPorts(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !have[ln.Addr().(*net.TCPAddr).Port] {
		t.Errorf("own listener on %s not found among %v", ln.Addr(), have)
	}
	// PID 1 does not hold this process's listener.
	if other, err := listeningPorts(1); err == nil && other[ln.Addr().(*net.TCPAddr).Port] {
		t.Error("another process's listening ports include ours")
	}
}

// The best peer is the highest figure where higher is better, the lowest
// otherwise, among the peers that measured it and did not fail.
func TestBestPeer(t *testing.T) {
	a, b, c := newPath("a", nil, nil, nil), newPath("b", nil, nil, nil), newPath("c", nil, nil, nil)
	a.fig.t1, b.fig.t1, c.fig.t1 = 2, 3, 9
	a.fig.rtt, b.fig.rtt = []time.Duration{300 * time.Microsecond}, []time.Duration{200 * time.Microsecond}
	c.failed = errors.New("died")
	for _, tc := range []struct {
		m        metric
		want     float64
		wantName string
	}{{mT1, 3, "b"}, {mRTT50, 200, "b"}, {mConns, -1, ""}} {
		if v, name := best(tc.m, []*path{a, b, c}); v != tc.want || name != tc.wantName {
			t.Errorf("%s: %v (%q), want %v (%q)", tc.m.name, v, name, tc.want, tc.wantName)
		}
	}
	a.fig.rtt = []time.Duration{100 * time.Microsecond}
	if v, name := best(mRTT50, []*path{a, b}); v != 100 || name != "a" {
		t.Errorf("lower is better: %v (%q), want 100 (a)", v, name)
	}
	var sb strings.Builder
	writeTable(&sb, []row{{metric: "m", unit: "u", base: 4, tunnel: 2, peer: 8, peerName: "b", higherBetter: true}})
	if !strings.Contains(sb.String(), "| b | 8.00 | 0.25× |") {
		t.Errorf("table row lacks the peer columns:\n%s", sb.String())
	}
}

func TestParseAgentBuilds(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"tunnel-server", "tunnel-client"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got, err := parseAgentBuilds("old=" + dir + ",older=" + dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].label != "old" || got[1].label != "older" || got[0].server != filepath.Join(dir, "tunnel-server") || got[1].client != filepath.Join(dir, "tunnel-client") {
		t.Fatalf("got %+v", got)
	}
	for _, bad := range []string{"old=" + dir + ",old=" + dir, "=" + dir, "old=", "old=" + t.TempDir()} {
		if _, err := parseAgentBuilds(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// A tunnel is up once each class's first session is: the client's
// further bulk sessions (lanes) do not count.
func TestSessionUpCountsFirstLanes(t *testing.T) {
	log := "2026-01-01T00:00:00.000Z [INFO]  session up: peer=tunnel-server server=127.0.0.1:1 class=bulk agent=0.1.0-dev\n" +
		"2026-01-01T00:00:00.001Z [INFO]  session up: peer=tunnel-server server=127.0.0.1:1 class=bulk agent=0.1.0-dev lane=1\n" +
		"2026-01-01T00:00:00.002Z [INFO]  session up: peer=tunnel-server server=127.0.0.1:1 class=control agent=0.1.0-dev\n"
	if n := len(reSessionUp.FindAllString(log, -1)); n != 2 {
		t.Errorf("%d first sessions, want 2 (bulk and control)", n)
	}
}

// perf stat -x, output as perf 6.x prints it: count, unit, event, run
// time, percentage, and empty metric fields.
const perfSample = `1523,,raw_syscalls:sys_enter,2004144935,100.00,,
611,,syscalls:sys_enter_write,2004144935,100.00,,
597,,syscalls:sys_enter_read,2004144935,100.00,,
45,,syscalls:sys_enter_epoll_pwait,2004144935,100.00,,
120,,syscalls:sys_enter_futex,2004144935,100.00,,
301,,context-switches,2004144935,100.00,,
`

func TestParsePerfCSV(t *testing.T) {
	got, err := parsePerfCSV("\n" + perfSample)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"raw_syscalls:sys_enter": 1523, "syscalls:sys_enter_write": 611, "syscalls:sys_enter_read": 597,
		"syscalls:sys_enter_epoll_pwait": 45, "syscalls:sys_enter_futex": 120, "context-switches": 301}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if pg := perGB(got, 500_000_000); pg["context-switches"] != 602 {
		t.Errorf("per GB over 0.5 GB: %v context switches, want 602", pg["context-switches"])
	}
	// An event perf could not count, or one missing, fails the count
	// rather than reading as zero.
	notCounted := strings.Replace(perfSample, "120,,syscalls:sys_enter_futex", "<not counted>,,syscalls:sys_enter_futex", 1)
	if _, err := parsePerfCSV(notCounted); err == nil || !strings.Contains(err.Error(), "futex") {
		t.Errorf("an uncounted event: %v", err)
	}
	missing := strings.Replace(perfSample, "301,,context-switches,2004144935,100.00,,\n", "", 1)
	if _, err := parsePerfCSV(missing); err == nil || !strings.Contains(err.Error(), "context-switches") {
		t.Errorf("a missing event: %v", err)
	}
}

func TestMedianByKey(t *testing.T) {
	run := func(v float64) map[string]float64 {
		m := map[string]float64{}
		for _, e := range perfEvents {
			m[e] = v
		}
		return m
	}
	got := medianByKey([]map[string]float64{run(3), nil, run(1), run(2)}, perfEvents)
	if got["context-switches"] != 2 || got["raw_syscalls:sys_enter"] != 2 {
		t.Errorf("median of 3, 1, 2 (and a run not counted): %v", got)
	}
	if medianByKey([]map[string]float64{nil, nil}, perfEvents) != nil {
		t.Error("no run counted, yet a median")
	}
}

// With perf usable here (it is not on CI machines), a count attached to
// this process sees the system calls of a loopback transfer.
func TestPerfCountsThisProcess(t *testing.T) {
	if err := checkPerf(); err != nil {
		t.Skip(err)
	}
	pc, err := startPerf([]int{os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	moved := loopbackTransfer(t, 300*time.Millisecond)
	counts, err := pc.stop()
	if err != nil {
		t.Fatal(err)
	}
	// Each chunk the bench sends is at least one write and one read.
	if min := float64(moved) / chunk; counts["syscalls:sys_enter_write"] < min || counts["syscalls:sys_enter_read"] < min {
		t.Errorf("moved %d bytes with %v writes and %v reads", moved, counts["syscalls:sys_enter_write"], counts["syscalls:sys_enter_read"])
	}
}

// loopbackTransfer sends one bulk stream for d to a sink target in this
// process and returns the bytes moved: work for perf to see here.
func loopbackTransfer(t *testing.T, d time.Duration) int64 {
	t.Helper()
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	_, moved, err := throughput(tcpDialer(tg.sink), 1, d)
	if err != nil {
		t.Fatal(err)
	}
	return moved
}
