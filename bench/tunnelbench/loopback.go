package tunnelbench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

func numCPU() int { return runtime.NumCPU() }

// row is one line of the table.
type row struct {
	metric, unit string
	base, tunnel float64 // base: direct TCP (or the named baseline); NaN-free: <0 means none
	baseName     string  // "" = direct TCP
	higherBetter bool
	// target: tunnel/base must be ≥ (higherBetter) or ≤ ratio; or an
	// absolute bound on the tunnel figure when abs is set.
	ratio float64
	abs   bool
	note  string
	// The best peer's figure (<0: no peer measured) and its name.
	peer     float64
	peerName string
}

func (r row) ratioValue() (float64, bool) {
	if r.base <= 0 {
		return 0, false
	}
	return r.tunnel / r.base, true
}

func (r row) target() string {
	switch {
	case r.ratio == 0:
		return "—"
	case r.abs && r.higherBetter:
		return fmt.Sprintf("≥ %g %s", r.ratio, r.unit)
	case r.abs:
		return fmt.Sprintf("≤ %g %s", r.ratio, r.unit)
	case r.higherBetter:
		return fmt.Sprintf("≥ %g×", r.ratio)
	}
	return fmt.Sprintf("≤ %g×", r.ratio)
}

// pass is "ok", "FAIL" or "" when there is no target.
func (r row) pass() string {
	if r.ratio == 0 {
		return ""
	}
	v := r.tunnel
	if !r.abs {
		var ok bool
		if v, ok = r.ratioValue(); !ok {
			return "?"
		}
	}
	if (r.higherBetter && v >= r.ratio) || (!r.higherBetter && v <= r.ratio) {
		return "ok"
	}
	return "FAIL"
}

func num(v float64) string {
	switch {
	case v < 0:
		return "—"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func writeTable(b *strings.Builder, rows []row) (met, total int) {
	b.WriteString("| metric | unit | baseline | baseline value | tunnel | tunnel / baseline | best peer | peer value | tunnel / best peer | target | result |\n")
	b.WriteString("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | --- |\n")
	for _, r := range rows {
		base := r.baseName
		if base == "" {
			base = "direct TCP"
		}
		ratio := "—"
		if v, ok := r.ratioValue(); ok {
			ratio = fmt.Sprintf("%.2f×", v)
		}
		if r.base < 0 {
			base = "—"
		}
		res := r.pass()
		if res != "" {
			total++
			if res == "ok" {
				met++
			}
		}
		metric := r.metric
		if r.note != "" {
			metric += " (" + r.note + ")"
		}
		peer, peerRatio := "—", "—"
		if r.peer > 0 {
			peer = r.peerName
			if r.tunnel >= 0 {
				peerRatio = fmt.Sprintf("%.2f×", r.tunnel/r.peer)
			}
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", metric, r.unit, base, num(r.base), num(r.tunnel), ratio, peer, num(r.peer), peerRatio, r.target(), res)
	}
	return met, total
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// path is one way from the bench to its targets; every path gets the same
// measurements in the same run.
type path struct {
	name                 string // as the tables show it
	sink, echo, echoBulk dialer
	// The processes between the bench and the targets (none for direct
	// TCP): those carrying the sink, whose CPU time is counted around the
	// 1-stream run, and those carrying the bulk echo, whose memory is
	// counted around the idle connections.
	sinkPids, echoPids []int
	// A peer's failure is reported and drops it from the comparison; the
	// run goes on. Any other path's failure fails the run.
	peer   bool
	failed error
	// session: the bulk echo shares a session with the sink (a tunnel),
	// so the round trips beside bulk streams are measured through it too.
	session bool
	// logs, if set, is the tail of the path's processes' logs: a failed
	// measurement shows it, so that a stream the agents ended says why.
	logs func() string
	// kernelRcv, if set, reads the largest kernel receive buffers of the
	// path's tunnel connections (tunnel.kernelReceiveBuffers).
	kernelRcv func() (lane0, others float64)
	fig       figures
	runs      []figures // the timed figures of each run so far (-runs)
}

// endRun keeps the timed figures of the run just done and clears them for
// the next; the idle-connection figures (measured once) stay.
func (p *path) endRun() {
	p.runs = append(p.runs, p.fig)
	p.fig.t1, p.fig.t8, p.fig.cpuPerGB, p.fig.conns, p.fig.rcvBuf0, p.fig.rcvBufN = -1, -1, -1, -1, -1, -1
	p.fig.rtt, p.fig.load, p.fig.loadSame, p.fig.loadBulk = nil, nil, nil, nil
	p.fig.perf1, p.fig.perf8 = nil, nil
	p.fig.kinds8 = nil
}

// mergeRuns sets the timed figures from the runs: each scalar the median
// of the runs that measured it, the round trips of every run pooled (their
// percentiles are then over all runs' samples).
func (p *path) mergeRuns() {
	med := func(get func(*figures) float64) float64 {
		var v []float64
		for i := range p.runs {
			if x := get(&p.runs[i]); x >= 0 {
				v = append(v, x)
			}
		}
		return median(v)
	}
	p.fig.t1 = med(func(f *figures) float64 { return f.t1 })
	p.fig.t8 = med(func(f *figures) float64 { return f.t8 })
	p.fig.cpuPerGB = med(func(f *figures) float64 { return f.cpuPerGB })
	p.fig.conns = med(func(f *figures) float64 { return f.conns })
	p.fig.rcvBuf0 = med(func(f *figures) float64 { return f.rcvBuf0 })
	p.fig.rcvBufN = med(func(f *figures) float64 { return f.rcvBufN })
	var perf1, perf8 []map[string]float64
	for _, r := range p.runs {
		perf1, perf8 = append(perf1, r.perf1), append(perf8, r.perf8)
	}
	p.fig.perf1, p.fig.perf8 = medianByKey(perf1, perfEvents), medianByKey(perf8, perfEvents)
	var kinds8 []map[string]float64
	for _, r := range p.runs {
		kinds8 = append(kinds8, r.kinds8)
	}
	p.fig.kinds8 = medianByKey(kinds8, cpuKinds)
	for _, r := range p.runs {
		p.fig.rtt = append(p.fig.rtt, r.rtt...)
		p.fig.load = append(p.fig.load, r.load...)
		p.fig.loadSame = append(p.fig.loadSame, r.loadSame...)
		p.fig.loadBulk = append(p.fig.loadBulk, r.loadBulk...)
	}
}

// median of v; -1 when v is empty. With an even count, the mean of the
// middle two.
func median(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// runsNote says how the figures of several runs were combined.
func runsNote(runs int) string {
	if runs == 1 {
		return "One run."
	}
	return fmt.Sprintf("Median of %d interleaved runs (each path once per run, the paths through processes taking turns to go first); round-trip percentiles over the samples of all runs.", runs)
}

// figures are one path's results; -1 or empty where not measured.
type figures struct {
	t1, t8    float64 // Gbit/s
	cpuPerGB  float64 // 1-stream run, all processes carrying the sink
	rtt, load []time.Duration
	// loadSame: beside bulk streams, the ping through the bulk echo (the
	// bulk streams' session); the same samples as load where there are
	// no sessions.
	loadSame []time.Duration
	// loadBulk: Gbit/s of the bulk streams beside each round of pings
	// (both rows where there are sessions): what the ping's share of the
	// CPU left them.
	loadBulk []float64
	// rcvBuf0, rcvBufN: the largest kernel receive buffers (MiB) of the
	// path's bulk lane 0 and other bulk lanes after the round trips beside
	// bulk (-1: not read).
	rcvBuf0, rcvBufN float64
	conns            float64 // per second
	// perf1, perf8: -perf's counts per GB moved (by event) on the
	// processes carrying the sink, in the 1- and 8-stream runs; nil when
	// not counted.
	perf1, perf8 map[string]float64
	// kinds8: -profile's CPU-s per GB by kind (cpuKinds) of the processes
	// carrying the sink in the 8-stream run; nil when not profiled.
	kinds8 map[string]float64
	// Memory (KiB) of the processes carrying the bulk echo, before and
	// with the idle connections open, per process in echoPids order.
	rssBefore, rssAfter []float64
	idle                int // idle connections held for rssAfter
}

func newPath(name string, sink, echo, echoBulk dialer) *path {
	return &path{name: name, sink: sink, echo: echo, echoBulk: echoBulk, fig: figures{t1: -1, t8: -1, cpuPerGB: -1, conns: -1, rcvBuf0: -1, rcvBufN: -1}}
}

// chainPath is the path through a chain carrying the echo (0) and the
// sink (1).
func chainPath(name string, c *chain) *path {
	p := newPath(name, c.dialer(1), c.dialer(0), c.dialer(0))
	p.sinkPids, p.echoPids = c.pids(1), c.pids(0)
	return p
}

// idleKiB is RSS per idle connection, all the path's processes together
// (-1 if not measured).
func (f *figures) idleKiB() float64 {
	if f.idle == 0 {
		return -1
	}
	var d float64
	for i := range f.rssAfter {
		d += f.rssAfter[i] - f.rssBefore[i]
	}
	return d / float64(f.idle)
}

// idleMiB is RSS with the idle connections open, all the path's processes.
func (f *figures) idleMiB() float64 {
	if f.idle == 0 {
		return -1
	}
	var s float64
	for _, v := range f.rssAfter {
		s += v
	}
	return s / 1024
}

// metric is one figure of a path, as a table row shows it.
type metric struct {
	name, unit   string
	higherBetter bool
	get          func(*figures) float64 // -1: not measured
}

// meanUs is the mean of d in µs, -1 if d is empty: of a closed-loop ping,
// one over the round trips it completed per second, where the tail counts
// in proportion (a p50 does not see it).
func meanUs(d []time.Duration) float64 {
	if len(d) == 0 {
		return -1
	}
	var s time.Duration
	for _, x := range d {
		s += x
	}
	return us(s / time.Duration(len(d)))
}

func pct(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return -1
	}
	return us(percentile(d, q))
}

var (
	mT1     = metric{"throughput, 1 stream", "Gbit/s", true, func(f *figures) float64 { return f.t1 }}
	mT8     = metric{"throughput, 8 streams", "Gbit/s", true, func(f *figures) float64 { return f.t8 }}
	mRTT50  = metric{"64 B round trip p50", "µs", false, func(f *figures) float64 { return pct(f.rtt, 0.5) }}
	mRTT99  = metric{"64 B round trip p99", "µs", false, func(f *figures) float64 { return pct(f.rtt, 0.99) }}
	mLoad50 = metric{"64 B round trip p50, 4 bulk streams alongside", "µs", false, func(f *figures) float64 { return pct(f.load, 0.5) }}
	mLoad99 = metric{"64 B round trip p99, 4 bulk streams alongside", "µs", false, func(f *figures) float64 { return pct(f.load, 0.99) }}
	mSame50 = metric{"64 B round trip p50, 4 bulk streams alongside, same session", "µs", false, func(f *figures) float64 { return pct(f.loadSame, 0.5) }}
	mSame99 = metric{"64 B round trip p99, 4 bulk streams alongside, same session", "µs", false, func(f *figures) float64 { return pct(f.loadSame, 0.99) }}
	mLoadMn = metric{"64 B round trip mean, 4 bulk streams alongside", "µs", false, func(f *figures) float64 { return meanUs(f.load) }}
	mSameMn = metric{"64 B round trip mean, 4 bulk streams alongside, same session", "µs", false, func(f *figures) float64 { return meanUs(f.loadSame) }}
	mLoadBk = metric{"4 bulk streams beside the round trips", "Gbit/s", true, func(f *figures) float64 { return median(slices.Clone(f.loadBulk)) }}
	mRcvBf0 = metric{"kernel receive buffer after the rows beside bulk, bulk lane 0 (largest)", "MiB", false, func(f *figures) float64 { return f.rcvBuf0 }}
	mRcvBfN = metric{"… other bulk lanes (largest)", "MiB", false, func(f *figures) float64 { return f.rcvBufN }}
	mConns  = metric{"connections/s (open, 1 B echo, close; 16 parallel)", "conn/s", true, func(f *figures) float64 { return f.conns }}
	mIdle   = metric{"RSS per idle connection, both sides", "KiB", false, (*figures).idleKiB}
	mIdleMB = metric{"RSS with the idle connections open, both sides", "MiB", false, (*figures).idleMiB}
	mCPU    = metric{"CPU per GB moved, both sides (1-stream run)", "CPU-s/GB", false, func(f *figures) float64 { return f.cpuPerGB }}
)

// best is the best figure of m among the peers that were measured, and
// which peer it is; -1 when none was.
func best(m metric, peers []*path) (float64, string) {
	v, name := -1.0, ""
	for _, p := range peers {
		x := m.get(&p.fig)
		if p.failed != nil || x < 0 {
			continue
		}
		if v < 0 || (m.higherBetter && x > v) || (!m.higherBetter && x < v) {
			v, name = x, p.name
		}
	}
	return v, name
}

// measureIdle holds n idle connections through p's bulk echo, each echoed
// once (so the stream exists end to end), and records the RSS of p's
// processes before and with them.
func measureIdle(p *path, n int) error {
	if _, err := pingPong(p.echoBulk, 100, 64, time.Now().Add(10*time.Second)); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(300 * time.Millisecond)
	rss := func() ([]float64, error) {
		var out []float64
		for _, pid := range p.echoPids {
			v, err := rssKiB(pid)
			if err != nil {
				return nil, err
			}
			out = append(out, float64(v))
		}
		return out, nil
	}
	before, err := rss()
	if err != nil {
		return err
	}
	conns, err := openIdle(p.echoBulk, n)
	if err == nil {
		time.Sleep(time.Second)
	}
	after, err2 := rss()
	for _, c := range conns {
		c.Close()
	}
	if err := errors.Join(err, err2); err != nil {
		return err
	}
	p.fig.rssBefore, p.fig.rssAfter, p.fig.idle = before, after, n
	return nil
}

// measureThroughput1 is the 1-stream run, with the CPU time of the
// processes carrying the sink.
func measureThroughput1(p *path, d time.Duration, perf bool) error {
	cpu0, err := sumOver(p.sinkPids, cpuSeconds)
	if err != nil {
		return err
	}
	gbps, moved, counts, err := countedThroughput(p, 1, d, perf)
	if err != nil {
		return err
	}
	p.fig.perf1 = counts
	cpu1, err := sumOver(p.sinkPids, cpuSeconds)
	if err != nil {
		return err
	}
	p.fig.t1 = gbps
	if len(p.sinkPids) > 0 {
		p.fig.cpuPerGB = (cpu1 - cpu0) / (float64(moved) / 1e9)
	}
	return nil
}

// loopbackForwards are the client's forwards in the loopback table: bulk
// data on a bulk-class forward; the round trips on a control-class forward
// (its own session), as a routing protocol beside bulk traffic would be
// configured. Connections, idle streams and the same-session round trips
// use a bulk-class echo forward (the sink's session).
var loopbackForwards = []forwardSpec{
	{name: "sink", service: "sink", class: "bulk"},
	{name: "echo", service: "echo", class: "control"},
	{name: "echo-bulk", service: "echo", class: "bulk"},
}

// runLoopback is the main table: both agents as processes on loopback,
// beside direct TCP, the relay floor and the peers.
func runLoopback(ctx context.Context, w *workspace, o options, report *strings.Builder, logf func(string, ...any)) (err error) {
	tputDur := pick(o.quick, 500*time.Millisecond, 2*time.Second)
	profDir := "" // -profile's perf record files, in the workspace
	if o.profile {
		profDir = w.dir
	}
	rateDur := pick(o.quick, 500*time.Millisecond, 2*time.Second)
	// Under load, every path pings for the same time (not the same count:
	// direct round trips are ten times faster and would see only a fraction
	// of the scheduling hiccups), in alternating rounds, samples pooled.
	loadDur := pick(o.quick, time.Second, 2*time.Second)
	// Three rounds in all, spread over the runs.
	loadRounds := max(1, 3/o.runs)

	tg, err := startTargets()
	if err != nil {
		return err
	}
	defer tg.close()
	tun, err := w.startTunnel("loopback", map[string]string{"sink": tg.sink, "echo": tg.echo}, loopbackForwards, 2, nil)
	if err != nil {
		return err
	}
	defer tun.stop()
	// One chain carries both targets, as the agents carry both forwards.
	relays, err := startRelayChain(tg.echo, tg.sink)
	if err != nil {
		return err
	}
	defer relays.close()
	remote, err := startRemoteTargets()
	if err != nil {
		return err
	}
	defer remote.close()

	direct := newPath("direct TCP", tcpDialer(tg.sink), tcpDialer(tg.echo), tcpDialer(tg.echo))
	tunnel := newPath("tunnel", tcpDialer(tun.forwards["sink"]), tcpDialer(tun.forwards["echo"]), tcpDialer(tun.forwards["echo-bulk"]))
	tunnel.sinkPids, tunnel.echoPids = tun.pids(), tun.pids()
	tunnel.session, tunnel.logs, tunnel.kernelRcv = true, tun.logTails, tun.kernelReceiveBuffers
	// Other agent builds (-agents), each a tunnel path of its own.
	var others []*path
	for _, b := range o.others {
		t, e := w.startTunnelBuild(b, "loopback-"+b.label, map[string]string{"sink": tg.sink, "echo": tg.echo}, loopbackForwards, 2, nil)
		if e != nil {
			return fmt.Errorf("agents %s: %w", b.label, e)
		}
		defer t.stop()
		p := newPath("tunnel ("+b.label+")", tcpDialer(t.forwards["sink"]), tcpDialer(t.forwards["echo"]), tcpDialer(t.forwards["echo-bulk"]))
		p.sinkPids, p.echoPids, p.session, p.logs, p.kernelRcv = t.pids(), t.pids(), true, t.logTails, t.kernelReceiveBuffers
		others = append(others, p)
	}
	relay := chainPath(relayName, relays)
	// Through processes: the tunnels, the relay floor, the peers.
	procs := append(append([]*path{tunnel}, others...), relay)
	var peers []*path
	var peerNotes []string
	for _, pr := range findPeers(ctx, o.peers, o.quick, w.dir, logf) {
		if pr.bin == "" {
			logf("%s: missing (%s)", pr.name, pr.missing)
			peerNotes = append(peerNotes, fmt.Sprintf("%s: missing (%s).", pr.name, pr.missing))
			continue
		}
		c, e := pr.start(w.dir, w.pki, tg.echo, tg.sink)
		if e != nil {
			logf("%s: could not start: %v", pr.name, e)
			peerNotes = append(peerNotes, fmt.Sprintf("%s (%s): FAILED to start: %s.", pr.name, pr.version, firstLine(e.Error())))
			continue
		}
		defer c.close()
		p := chainPath(pr.name, c)
		p.peer = true
		peers, procs = append(peers, p), append(procs, p)
		peerNotes = append(peerNotes, fmt.Sprintf("%s: %s, %d processes.", pr.name, pr.version, len(c.allPids())))
	}

	// step runs one measurement of p (skipped once p failed); false when
	// the run must stop.
	step := func(p *path, what string, f func() error) bool {
		if ctx.Err() != nil {
			return false
		}
		if p.failed != nil {
			return true
		}
		e := f()
		if e == nil {
			return ctx.Err() == nil
		}
		e = fmt.Errorf("%s: %s: %w", p.name, what, e)
		if p.logs != nil {
			e = fmt.Errorf("%w\n%s", e, p.logs())
		}
		if p.peer {
			p.failed = e
			logf("%v (dropped from the comparison)", e)
			return true
		}
		if err == nil {
			err = e
		}
		return false
	}

	// Idle connections first, on fresh processes: RSS grown by the bulk
	// runs would hide what idle connections cost.
	logf("idle connections: %d per path", o.idle)
	for _, p := range procs {
		if !step(p, "idle connections", func() error { return measureIdle(p, o.idle) }) {
			return err
		}
	}
	time.Sleep(time.Second) // let every path close those before timing anything

	tp, e := tlsCeiling(w)
	if e != nil {
		return fmt.Errorf("tls ceiling: %w", e)
	}
	defer tp.close()
	tlsOne := newPath("one TLS conn", tp.dial, nil, nil)
	other := newPath("direct TCP, echo in another process", nil, tcpDialer(remote.echo), nil)
	limit := pick(o.quick, 5*time.Second, 20*time.Second)
	warm := pick(o.quick, 200*time.Millisecond, 500*time.Millisecond)
	// Every timed row runs o.runs times, each path once per run; the paths
	// through processes take turns going first, so a drift in the
	// machine's load favours none of them.
	for run := range o.runs {
		if o.runs > 1 {
			logf("run %d of %d", run+1, o.runs)
		}
		order := append(slices.Clone(procs[run%len(procs):]), procs[:run%len(procs)]...)
		logf("throughput, 1 stream")
		if !step(direct, "throughput", func() (e error) { direct.fig.t1, _, e = throughput(direct.sink, 1, tputDur); return e }) {
			return err
		}
		if !step(tlsOne, "throughput", func() (e error) { tlsOne.fig.t1, _, e = throughput(tp.dial, 1, tputDur); return e }) {
			return err
		}
		for _, p := range order {
			if !step(p, "throughput", func() error { return measureThroughput1(p, tputDur, o.perf) }) {
				return err
			}
		}

		logf("throughput, 8 streams")
		for _, p := range append([]*path{direct}, order...) {
			if !step(p, "throughput, 8 streams", func() (e error) {
				p.fig.t8, p.fig.perf8, p.fig.kinds8, e = profiledThroughput8(p, tputDur, o.perf, profDir)
				return e
			}) {
				return err
			}
		}

		logf("round trips: %d", o.rtts)
		for _, p := range append([]*path{direct, other}, order...) {
			if !step(p, "round trips", func() (e error) {
				r, e := pingPong(p.echo, o.rtts, 64, time.Now().Add(limit))
				p.fig.rtt = append(p.fig.rtt, r...)
				return e
			}) {
				return err
			}
		}

		logf("round trips under load: %d rounds of %s per path", loadRounds, loadDur)
		for range loadRounds {
			for _, p := range append([]*path{direct}, order...) {
				if !step(p, "round trips under load", func() error {
					r, bg, e := underLoad(p.sink, p.echo, 4, loadDur, warm)
					p.fig.load = append(p.fig.load, r...)
					p.fig.loadBulk = append(p.fig.loadBulk, bg)
					if e != nil || !p.session {
						return e
					}
					r, bg, e = underLoad(p.sink, p.echoBulk, 4, loadDur, warm)
					p.fig.loadSame = append(p.fig.loadSame, r...)
					p.fig.loadBulk = append(p.fig.loadBulk, bg)
					if p.kernelRcv != nil {
						p.fig.rcvBuf0, p.fig.rcvBufN = p.kernelRcv()
					}
					return e
				}) {
					return err
				}
			}
		}

		logf("connection rate")
		for i, p := range append([]*path{direct}, order...) {
			if i > 0 {
				time.Sleep(200 * time.Millisecond)
			}
			if !step(p, "connection rate", func() (e error) { p.fig.conns, e = connRate(p.echoBulk, 16, rateDur); return e }) {
				return err
			}
		}
		for _, p := range append([]*path{direct, tlsOne, other}, procs...) {
			p.endRun()
		}
	}
	for _, p := range append([]*path{direct, tlsOne, other}, procs...) {
		p.mergeRuns()
		if !p.session {
			p.fig.loadSame = p.fig.load
		}
	}
	suite := tls.CipherSuiteName(uint16(tp.suite.Load()))

	lost := reReconnect.FindAllString(tun.client.log.String(), -1)

	mk := func(m metric, base *path) row {
		r := row{metric: m.name, unit: m.unit, higherBetter: m.higherBetter, base: -1, tunnel: m.get(&tunnel.fig)}
		if base != nil {
			r.base = m.get(&base.fig)
			if base != direct {
				r.baseName = base.name
			}
		}
		r.peer, r.peerName = best(m, peers)
		return r
	}
	target := func(r row, ratio float64, abs bool) row { r.ratio, r.abs = ratio, abs; return r }
	tlsRow := target(mk(mT1, tlsOne), 0.65, false)
	tlsRow.baseName = "one TLS conn (" + suite + ")"
	idleRow := target(mk(mIdle, nil), 40, true)
	idleRow.metric = fmt.Sprintf("RSS per idle stream, both agents (%d streams)", o.idle)
	cpuRow := target(mk(mCPU, nil), 2, true)
	cpuRow.metric = "CPU per GB moved, both agents (1-stream run)"
	cpuRelay := mk(mCPU, relay)
	cpuRelay.metric = cpuRow.metric
	rows := []row{
		target(mk(mT1, direct), 0.28, false),
		tlsRow,
		target(mk(mT8, direct), 0.27, false),
		target(mk(mRTT50, direct), 5, false),
		mk(mRTT99, direct),
		mk(mLoad50, direct),
		target(mk(mLoad99, direct), 1.3, false),
		mk(mSame50, direct),
		mk(mSame99, direct),
		mk(mLoadMn, direct),
		mk(mSameMn, direct),
		mk(mLoadBk, direct),
		target(mk(mConns, direct), 0.45, false),
		mk(mT1, relay),
		mk(mRTT50, other),
		mk(mRTT50, relay),
		mk(mLoad99, relay),
		mk(mConns, relay),
		idleRow,
		cpuRow,
		cpuRelay,
	}
	fmt.Fprintf(report, "## Loopback: tunnel vs direct TCP\n\n")
	fmt.Fprintf(report, "%s Throughput runs %s each; %d round trips; under load, %d alternating rounds of %s of round trips per path after %s of bulk warm-up (samples: %s); connection rate %s each.\n\n",
		runsNote(o.runs), tputDur, o.rtts, loadRounds, loadDur, warm, sampleCounts(append([]*path{direct}, procs...)), rateDur)
	met, total := writeTable(report, rows)
	tf := &tunnel.fig
	fmt.Fprintf(report, "\n%d of %d targets met. Agents' RSS before the idle streams: %.1f MiB (both), after: %.1f MiB (per idle stream: server %.1f KiB, client %.1f KiB).",
		met, total, sum(tf.rssBefore)/1024, sum(tf.rssAfter)/1024, (tf.rssAfter[0]-tf.rssBefore[0])/float64(o.idle), (tf.rssAfter[1]-tf.rssBefore[1])/float64(o.idle))
	if len(lost) == 0 {
		fmt.Fprintf(report, " Session stayed up throughout.\n\n")
	} else {
		fmt.Fprintf(report, " The client LOST its session %d time(s): %s\n\n", len(lost), strings.Join(lost, " / "))
	}
	writePaths(report, direct, relay, peers, append(others, tunnel), o.idle)
	fmt.Fprintf(report, "Peers: %s\n\n", strings.Join(peerNotes, " "))
	for _, p := range peers {
		if p.failed != nil {
			fmt.Fprintf(report, "%s FAILED during the run and is left out of the comparison: %s\n\n", p.name, firstLine(p.failed.Error()))
		}
	}
	writePerf(report, append(append([]*path{relay}, peers...), append(others, tunnel)...))
	writeProfile(report, append(append([]*path{relay}, peers...), append(others, tunnel)...))
	return err
}

// writePaths is the second table: every path's figures side by side, and
// the tunnel against the best peer.
// tunnels are the other agent builds (-agents), then this tree's; the
// last column is against this tree's.
func writePaths(b *strings.Builder, direct, relay *path, peers []*path, tunnels []*path, idle int) {
	cols := []*path{direct, relay}
	for _, p := range peers {
		if p.failed == nil {
			cols = append(cols, p)
		}
	}
	cols = append(cols, tunnels...)
	tunnel := tunnels[len(tunnels)-1]
	fmt.Fprintf(b, "## Loopback: every path\n\n| metric | unit |")
	for _, p := range cols {
		name := p.name
		if p == relay {
			name = "relay floor"
		}
		fmt.Fprintf(b, " %s |", name)
	}
	b.WriteString(" tunnel / best peer |\n| --- | --- |")
	b.WriteString(strings.Repeat(" ---: |", len(cols)+1) + "\n")
	idleName := fmt.Sprintf("%s (%d connections)", mIdle.name, idle)
	for _, m := range []metric{mT1, mT8, mRTT50, mRTT99, mLoad50, mLoad99, mSame50, mSame99, mLoadMn, mSameMn, mLoadBk, mRcvBf0, mRcvBfN, mConns, mIdle, mIdleMB, mCPU} {
		name := m.name
		if m.name == mIdle.name {
			name = idleName
		}
		fmt.Fprintf(b, "| %s | %s |", name, m.unit)
		for _, p := range cols {
			fmt.Fprintf(b, " %s%s |", num(m.get(&p.fig)), spread(m, p))
		}
		ratio := "—"
		if v, who := best(m, peers); v > 0 && m.get(&tunnel.fig) >= 0 {
			ratio = fmt.Sprintf("%.2f× (%s)", m.get(&tunnel.fig)/v, who)
		}
		fmt.Fprintf(b, " %s |\n", ratio)
	}
	b.WriteString("\n")
}

// spread is " (lowest–highest)" of m over p's runs, when there were
// several and m is timed (the idle connections are measured once).
func spread(m metric, p *path) string {
	if len(p.runs) < 2 || m.name == mIdle.name || m.name == mIdleMB.name {
		return ""
	}
	var v []float64
	for i := range p.runs {
		if x := m.get(&p.runs[i]); x >= 0 {
			v = append(v, x)
		}
	}
	if len(v) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%s–%s)", num(slices.Min(v)), num(slices.Max(v)))
}

func sampleCounts(paths []*path) string {
	var s []string
	for _, p := range paths {
		s = append(s, fmt.Sprintf("%s %d", p.name, len(p.fig.load)))
	}
	return strings.Join(s, ", ")
}

func sum(v []float64) float64 {
	var s float64
	for _, x := range v {
		s += x
	}
	return s
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// relayName names the relay floor in the table.
const relayName = "2 plain TCP relay processes (no TLS, no mux)"

// tlsCeiling starts one-TLS-connection path with the agents' certificates
// and TLS configuration (TLS 1.3; Go picks AES-128-GCM where AES is in
// hardware).
func tlsCeiling(w *workspace) (*tlsPath, error) {
	sm, err := ssl.LoadMaterial(w.pki.ServerCert, w.pki.ServerKey, w.pki.CA)
	if err != nil {
		return nil, err
	}
	cm, err := ssl.LoadMaterial(w.pki.ClientCert, w.pki.ClientKey, w.pki.CA)
	if err != nil {
		return nil, err
	}
	scfg := ssl.ServerConfig(sm)
	ccfg := ssl.ClientConfig(cm, "localhost")
	scfg.MinVersion, ccfg.MinVersion = tls.VersionTLS13, tls.VersionTLS13
	// ALPN as the agents configure it is kept; nothing else differs.
	return startTLSPath(scfg, ccfg)
}
