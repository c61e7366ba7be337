package tunnelbench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
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
	b.WriteString("| metric | unit | baseline | baseline value | tunnel | tunnel / baseline | target | result |\n")
	b.WriteString("| --- | --- | --- | ---: | ---: | ---: | --- | --- |\n")
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
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", metric, r.unit, base, num(r.base), num(r.tunnel), ratio, r.target(), res)
	}
	return met, total
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// runLoopback is the main table: both agents as processes on loopback.
func runLoopback(ctx context.Context, w *workspace, o options, report *strings.Builder, logf func(string, ...any)) (err error) {
	tputDur := pick(o.quick, 500*time.Millisecond, 2*time.Second)
	rateDur := pick(o.quick, 500*time.Millisecond, 2*time.Second)
	// Under load, both paths ping for the same time (not the same count:
	// direct round trips are ten times faster and would see only a fraction
	// of the scheduling hiccups), in alternating rounds, samples pooled.
	loadDur := pick(o.quick, time.Second, 2*time.Second)
	const loadRounds = 3

	tg, err := startTargets()
	if err != nil {
		return err
	}
	defer tg.close()
	// Bulk data on bulk-class forwards; the round trips on a control-class
	// forward (its own session), as a routing protocol beside bulk traffic
	// would be configured. Connections and idle streams use a bulk-class
	// echo forward.
	tun, err := w.startTunnel("loopback", map[string]string{"sink": tg.sink, "echo": tg.echo},
		[]forwardSpec{
			{name: "sink", service: "sink", class: "bulk"},
			{name: "echo", service: "echo", class: "control"},
			{name: "echo-bulk", service: "echo", class: "bulk"},
		}, 2, nil)
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
	relayEcho, relaySink := relays.dialer(0), relays.dialer(1)
	remote, err := startRemoteTargets()
	if err != nil {
		return err
	}
	defer remote.close()
	direct := struct{ sink, echo, echoBulk dialer }{tcpDialer(tg.sink), tcpDialer(tg.echo), tcpDialer(tg.echo)}
	via := struct{ sink, echo, echoBulk dialer }{tcpDialer(tun.forwards["sink"]), tcpDialer(tun.forwards["echo"]), tcpDialer(tun.forwards["echo-bulk"])}
	var rows []row
	check := func(what string, e error) bool {
		if e != nil && err == nil {
			err = fmt.Errorf("%s: %w", what, e)
		}
		return e == nil && ctx.Err() == nil
	}

	// Idle streams first, on fresh agents: RSS grown by the bulk runs
	// would hide what idle streams cost.
	logf("idle streams: %d", o.idle)
	if _, e := pingPong(via.echoBulk, 100, 64, time.Now().Add(10*time.Second)); !check("warm-up", e) {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	srvBefore, _ := rssKiB(tun.server.pid())
	rssBefore, e := sumOver(tun.pids(), func(p int) (float64, error) { v, err := rssKiB(p); return float64(v), err })
	if !check("rss", e) {
		return err
	}
	conns, e := openIdle(via.echoBulk, o.idle)
	if e == nil {
		time.Sleep(time.Second)
	}
	srvAfter, _ := rssKiB(tun.server.pid())
	rssAfter, e2 := sumOver(tun.pids(), func(p int) (float64, error) { v, err := rssKiB(p); return float64(v), err })
	for _, c := range conns {
		c.Close()
	}
	if !check("idle streams", errors.Join(e, e2)) {
		return err
	}
	perIdle := (rssAfter - rssBefore) / float64(o.idle)
	perIdleServer := float64(srvAfter-srvBefore) / float64(o.idle)
	time.Sleep(time.Second) // let the agents close those streams before timing anything

	// Throughput, one stream: direct, TLS ceiling, tunnel (with CPU).
	logf("throughput, 1 stream")
	d1, _, e := throughput(direct.sink, 1, tputDur)
	if !check("direct throughput", e) {
		return err
	}
	tp, e := tlsCeiling(w)
	if !check("tls ceiling", e) {
		return err
	}
	defer tp.close()
	tls1, _, e := throughput(tp.dial, 1, tputDur)
	if !check("tls throughput", e) {
		return err
	}
	rcpu0, e := sumOver(relays.pids(), cpuSeconds)
	if !check("relay cpu", e) {
		return err
	}
	r1, rmoved, e := throughput(relaySink, 1, tputDur)
	if !check("relay throughput", e) {
		return err
	}
	rcpu1, e := sumOver(relays.pids(), cpuSeconds)
	if !check("relay cpu", e) {
		return err
	}
	relayCPUPerGB := (rcpu1 - rcpu0) / (float64(rmoved) / 1e9)
	cpu0, e := sumOver(tun.pids(), cpuSeconds)
	if !check("cpu", e) {
		return err
	}
	t1, moved, e := throughput(via.sink, 1, tputDur)
	if !check("tunnel throughput", e) {
		return err
	}
	cpu1, e := sumOver(tun.pids(), cpuSeconds)
	if !check("cpu", e) {
		return err
	}
	cpuPerGB := (cpu1 - cpu0) / (float64(moved) / 1e9)
	suite := tls.CipherSuiteName(uint16(tp.suite.Load()))

	logf("throughput, 8 streams")
	d8, _, e := throughput(direct.sink, 8, tputDur)
	if !check("direct throughput 8", e) {
		return err
	}
	t8, _, e := throughput(via.sink, 8, tputDur)
	if !check("tunnel throughput 8", e) {
		return err
	}

	logf("round trips: %d", o.rtts)
	limit := pick(o.quick, 5*time.Second, 20*time.Second)
	dr, e := pingPong(direct.echo, o.rtts, 64, time.Now().Add(limit))
	if !check("direct rtt", e) {
		return err
	}
	tr, e := pingPong(via.echo, o.rtts, 64, time.Now().Add(limit))
	if !check("tunnel rtt", e) {
		return err
	}
	xr, e := pingPong(tcpDialer(remote.echo), o.rtts, 64, time.Now().Add(limit))
	if !check("direct rtt, echo in another process", e) {
		return err
	}
	rr, e := pingPong(relayEcho, o.rtts, 64, time.Now().Add(limit))
	if !check("relay rtt", e) {
		return err
	}

	logf("round trips under load: %d rounds of %s per path", loadRounds, loadDur)
	warm := pick(o.quick, 200*time.Millisecond, 500*time.Millisecond)
	var dl, tl, rl []time.Duration
	for range loadRounds {
		d, _, e := underLoad(direct.sink, direct.echo, 4, loadDur, warm)
		if !check("direct rtt under load", e) {
			return err
		}
		t, _, e := underLoad(via.sink, via.echo, 4, loadDur, warm)
		if !check("tunnel rtt under load", e) {
			return err
		}
		r, _, e := underLoad(relaySink, relayEcho, 4, loadDur, warm)
		if !check("relay rtt under load", e) {
			return err
		}
		dl, tl, rl = append(dl, d...), append(tl, t...), append(rl, r...)
	}

	logf("connection rate")
	dc, e := connRate(direct.echoBulk, 16, rateDur)
	if !check("direct connection rate", e) {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	tc, e := connRate(via.echoBulk, 16, rateDur)
	if !check("tunnel connection rate", e) {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	rc, e := connRate(relayEcho, 16, rateDur)
	if !check("relay connection rate", e) {
		return err
	}

	lost := reReconnect.FindAllString(tun.client.log.String(), -1)

	rows = append(rows,
		row{metric: "throughput, 1 stream", unit: "Gbit/s", base: d1, tunnel: t1, higherBetter: true, ratio: 0.28},
		row{metric: "throughput, 1 stream", unit: "Gbit/s", base: tls1, tunnel: t1, baseName: "one TLS conn (" + suite + ")", higherBetter: true, ratio: 0.65},
		row{metric: "throughput, 8 streams", unit: "Gbit/s", base: d8, tunnel: t8, higherBetter: true, ratio: 0.27},
		row{metric: "64 B round trip p50", unit: "µs", base: us(percentile(dr, 0.5)), tunnel: us(percentile(tr, 0.5)), ratio: 5},
		row{metric: "64 B round trip p99", unit: "µs", base: us(percentile(dr, 0.99)), tunnel: us(percentile(tr, 0.99))},
		row{metric: "64 B round trip p50, 4 bulk streams alongside", unit: "µs", base: us(percentile(dl, 0.5)), tunnel: us(percentile(tl, 0.5))},
		row{metric: "64 B round trip p99, 4 bulk streams alongside", unit: "µs", base: us(percentile(dl, 0.99)), tunnel: us(percentile(tl, 0.99)), ratio: 1.3},
		row{metric: "connections/s (open, 1 B echo, close; 16 parallel)", unit: "conn/s", base: dc, tunnel: tc, higherBetter: true, ratio: 0.45},
		row{metric: "throughput, 1 stream", unit: "Gbit/s", base: r1, tunnel: t1, baseName: relayName, higherBetter: true},
		row{metric: "64 B round trip p50", unit: "µs", base: us(percentile(xr, 0.5)), tunnel: us(percentile(tr, 0.5)), baseName: "direct TCP, echo in another process"},
		row{metric: "64 B round trip p50", unit: "µs", base: us(percentile(rr, 0.5)), tunnel: us(percentile(tr, 0.5)), baseName: relayName},
		row{metric: "64 B round trip p99, 4 bulk streams alongside", unit: "µs", base: us(percentile(rl, 0.99)), tunnel: us(percentile(tl, 0.99)), baseName: relayName},
		row{metric: "connections/s (open, 1 B echo, close; 16 parallel)", unit: "conn/s", base: rc, tunnel: tc, baseName: relayName, higherBetter: true},
		row{metric: fmt.Sprintf("RSS per idle stream, both agents (%d streams)", o.idle), unit: "KiB", base: -1, tunnel: perIdle, abs: true, ratio: 40},
		row{metric: "CPU per GB moved, both agents (1-stream run)", unit: "CPU-s/GB", base: -1, tunnel: cpuPerGB, abs: true, ratio: 2},
		row{metric: "CPU per GB moved, both agents (1-stream run)", unit: "CPU-s/GB", base: relayCPUPerGB, tunnel: cpuPerGB, baseName: relayName},
	)
	fmt.Fprintf(report, "## Loopback: tunnel vs direct TCP\n\n")
	fmt.Fprintf(report, "Throughput runs %s each; %d round trips; under load, %d alternating rounds of %s of round trips per path after %s of bulk warm-up (%d direct, %d tunnel, %d relay samples); connection rate %s each.\n\n", tputDur, o.rtts, loadRounds, loadDur, warm, len(dl), len(tl), len(rl), rateDur)
	met, total := writeTable(report, rows)
	fmt.Fprintf(report, "\n%d of %d targets met. Agents' RSS before the idle streams: %.1f MiB (both), after: %.1f MiB (per idle stream: server %.1f KiB, client %.1f KiB).", met, total, rssBefore/1024, rssAfter/1024, perIdleServer, perIdle-perIdleServer)
	if len(lost) == 0 {
		fmt.Fprintf(report, " Session stayed up throughout.\n\n")
	} else {
		fmt.Fprintf(report, " The client LOST its session %d time(s): %s\n\n", len(lost), strings.Join(lost, " / "))
	}
	return err
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
