package tunnelbench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/tunnelworks/tunnel/bench/linkemu"
)

// wanResult is one run of a bulk transfer and a ping-pong across the link.
type wanResult struct {
	path           string
	p50, p99, pmax time.Duration
	pings          int
	bulkMbps       float64
	sessionUp      string
	target, pass   string // only where a target applies
	err            error
}

// errCell is r's error for its table cell ("" for none); *first keeps
// the first error of a table, with its path.
func (r wanResult) errCell(first *error) string {
	if r.err == nil {
		return ""
	}
	if *first == nil {
		*first = fmt.Errorf("%s: %w", r.path, r.err)
	}
	return r.err.Error()
}

// wanRun pushes nBulk bulk streams through bulkDial for d (downloads
// from the source if down, else uploads to the sink) while a 64-byte
// ping-pong runs through pingDial (from warm after the start of the bulk
// transfer until its end); the goodput is theirs in all.
func wanRun(bulkDial, pingDial dialer, nBulk int, down bool, d, warm time.Duration) wanResult {
	var r wanResult
	// One round trip first: opens the ping stream before the link is busy.
	if _, err := pingPong(pingDial, 1, 64, time.Now().Add(10*time.Second)); err != nil {
		r.err = fmt.Errorf("first ping: %w", err)
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan bulkResult, nBulk)
	for i := 0; i < nBulk; i++ {
		go func() {
			if down {
				done <- download(ctx, bulkDial)
				return
			}
			done <- bulk(ctx, bulkDial, 2*time.Minute)
		}()
	}
	time.Sleep(warm)
	rtts, perr := pingPong(pingDial, 1_000_000, 64, time.Now().Add(d-warm))
	var berr error
	for i := 0; i < nBulk; i++ {
		b := <-done
		if b.err != nil && berr == nil {
			berr = b.err
		}
		if b.elapsed > 0 {
			r.bulkMbps += float64(b.bytes) * 8 / b.elapsed.Seconds() / 1e6
		}
	}
	switch {
	case perr != nil:
		r.err = fmt.Errorf("ping-pong: %w", perr)
	case berr != nil:
		r.err = fmt.Errorf("bulk: %w", berr)
	}
	r.pings = len(rtts)
	if len(rtts) > 0 {
		r.p50, r.p99, r.pmax = percentile(rtts, 0.5), percentile(rtts, 0.99), percentile(rtts, 1)
	}
	return r
}

// wanPath is one way of carrying the bulk transfer and the ping-pong
// across the link.
type wanPath struct {
	name      string
	pingClass string // "" = plain TCP, no tunnel
	sessions  int    // classes whose first session the client must have up
	bulk      int    // bulk streams (0: 1)
	down      bool   // the bulk streams download (from the source), not upload
	build     agentBuild
}

func (p wanPath) bulkStreams() int { return max(p.bulk, 1) }

var wanPaths = []wanPath{
	{name: "tunnel, ping forward class = control (a session of its own)", pingClass: "control", sessions: 2},
	{name: "tunnel, both forwards class = bulk (its lanes: the transfer moves off the ping's)", pingClass: "bulk", sessions: 1},
	{name: "tunnel, both forwards class = bulk, the transfer a download", pingClass: "bulk", sessions: 1, down: true},
	{name: "direct TCP, 2 connections (the floor)"},
}

// runWAN runs a bulk transfer and a ping-pong together across a linkemu
// link (40 ms round trip) at 10 and then 2 Mbit/s, three ways: the tunnel
// with the ping on a control-class forward (its own session), the tunnel
// with both forwards in the bulk class (its lanes: the transfer starts
// on the ping's and moves off it once heavy), and two plain TCP connections through the same link
// (the floor). Each run gets a fresh link and fresh agents.
func runWAN(ctx context.Context, w *workspace, o options, report *strings.Builder, logf func(string, ...any)) error {
	tg, err := startTargets()
	if err != nil {
		return err
	}
	defer tg.close()
	warm := min(2*time.Second, o.wanDur/4)
	const oneWay = 20 * time.Millisecond
	target := 2*(2*oneWay) + 20*time.Millisecond
	var results []wanResult
	for _, rate := range []float64{10e6, 2e6} {
		label := fmt.Sprintf("%g Mbit/s", rate/1e6)
		paths := wanPaths
		for _, b := range o.others {
			// The download row again with each other build, for the same
			// run's before and after.
			paths = append(paths, wanPath{name: "tunnel (" + b.label + "), both forwards class = bulk, the transfer a download", pingClass: "bulk", sessions: 1, down: true, build: b})
		}
		for _, p := range paths {
			if ctx.Err() != nil {
				break
			}
			logf("wan %s: %s", label, p.name)
			r := wanPathRun(w, tg, rate, oneWay, p, o.wanDur, warm)
			r.path = label + ", " + p.name
			if rate == 10e6 && p.pingClass == "control" {
				r.target = fmt.Sprintf("p99 ≤ %v", target)
				r.pass = "FAIL"
				if r.err == nil && r.p99 <= target {
					r.pass = "ok"
				}
			}
			results = append(results, r)
		}
	}

	fmt.Fprintf(report, "## WAN: through the link emulator (bench/linkemu)\n\n")
	fmt.Fprintf(report, "One shared link per run, %v round trip, FIFO bottleneck queue of one bandwidth-delay product per direction, fresh agents each run. "+
		"One bulk stream to the sink (or, in the download rows, from a source) for %s; a 64-byte ping-pong to the echo target on another connection from %s after its start until its end. "+
		"Bulk goodput counts every verified byte over the time to the sink's answer (including the drain after the %s).\n\n", 2*oneWay, o.wanDur, warm, o.wanDur)
	report.WriteString("| link, path | ping p50 | ping p99 | ping max | pings | bulk goodput Mbit/s | session stayed up | target | result | error |\n")
	report.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |\n")
	var firstErr error
	for _, r := range results {
		e := r.errCell(&firstErr)
		fmt.Fprintf(report, "| %s | %s | %s | %s | %d | %.2f | %s | %s | %s | %s |\n", r.path, ms(r.p50), ms(r.p99), ms(r.pmax), r.pings, r.bulkMbps, r.sessionUp, r.target, r.pass, e)
	}
	report.WriteString("\n")
	if err := runWANShared(ctx, w, tg, o, report, logf); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}

// runWANShared runs 4 bulk streams and a ping-pong in one bulk-class
// session across a fat long link (400 Mbit/s, 40 ms: 2 MB in flight),
// where the window the bulk streams share beside the ping (yamux patches
// 12 and 13) must not cost throughput; then the same with this tree's
// agents replaced by each -agents build, and over 5 plain TCP
// connections (the floor).
func runWANShared(ctx context.Context, w *workspace, tg *targets, o options, report *strings.Builder, logf func(string, ...any)) error {
	const (
		rate   = 400e6
		oneWay = 20 * time.Millisecond
		nBulk  = 4
	)
	warm := min(3*time.Second, o.wanDur/4) // the agents' first ping (the path's RTT) comes 2.5 s in
	paths := []wanPath{{name: "tunnel", pingClass: "bulk", sessions: 1, bulk: nBulk}}
	for _, b := range o.others {
		paths = append(paths, wanPath{name: "tunnel (" + b.label + ")", pingClass: "bulk", sessions: 1, bulk: nBulk, build: b})
	}
	paths = append(paths, wanPath{name: "direct TCP, 5 connections (the floor)", bulk: nBulk})
	var results []wanResult
	for _, p := range paths {
		if ctx.Err() != nil {
			break
		}
		logf("wan %g Mbit/s, %d bulk streams and a ping in one session: %s", rate/1e6, nBulk, p.name)
		r := wanPathRun(w, tg, rate, oneWay, p, o.wanDur, warm)
		r.path = p.name
		results = append(results, r)
	}
	fmt.Fprintf(report, "## WAN, fat link: %d bulk streams beside a ping in one session\n\n", nBulk)
	fmt.Fprintf(report, "One link at %g Mbit/s, %v round trip (%.1f MB in flight), FIFO bottleneck queue of one bandwidth-delay product per direction, fresh agents each run. "+
		"%d bulk streams to the sink and a 64-byte ping-pong to the echo target, all through bulk-class forwards (one session), for %s, the pings from %s in. "+
		"The bulk streams share their window while the ping runs; the link should stay full.\n\n", rate/1e6, 2*oneWay, rate/8*(2*oneWay).Seconds()/1e6, nBulk, o.wanDur, warm)
	report.WriteString("| path | ping p50 | ping p99 | ping max | pings | bulk goodput in all, Mbit/s | session stayed up | error |\n")
	report.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
	var firstErr error
	for _, r := range results {
		e := r.errCell(&firstErr)
		fmt.Fprintf(report, "| %s | %s | %s | %s | %d | %.1f | %s | %s |\n", r.path, ms(r.p50), ms(r.p99), ms(r.pmax), r.pings, r.bulkMbps, r.sessionUp, e)
	}
	report.WriteString("\n")
	return firstErr
}

// wanPathRun is one run on a fresh link: the floor (plain TCP
// connections through the link) or the tunnel (this tree's agents or
// p.build's), whose client dials the server through the link.
func wanPathRun(w *workspace, tg *targets, rate float64, oneWay time.Duration, p wanPath, d, warm time.Duration) wanResult {
	l := linkemu.New(linkemu.Config{RateBitsPerSec: rate, OneWayDelay: oneWay})
	defer l.Close()
	if p.pingClass == "" {
		sinkR, err1 := l.Relay(tg.sink)
		echoR, err2 := l.Relay(tg.echo)
		if err := errors.Join(err1, err2); err != nil {
			return wanResult{err: fmt.Errorf("relay: %w", err)}
		}
		r := wanRun(tcpDialer(sinkR), tcpDialer(echoR), p.bulkStreams(), false, d, warm)
		r.sessionUp = "—"
		return r
	}
	b := p.build
	if b.server == "" {
		b = agentBuild{server: w.server, client: w.client}
	}
	transfer, target, tag := "sink", tg.sink, ""
	if p.down {
		transfer, target, tag = "source", tg.source, "-down"
	}
	tun, err := w.startTunnelBuild(b, fmt.Sprintf("wan-%g-%s%s", rate/1e6, p.pingClass, tag), map[string]string{transfer: target, "echo": tg.echo},
		[]forwardSpec{
			{name: "bulk", service: transfer, class: "bulk"},
			{name: "ping", service: "echo", class: p.pingClass},
		}, p.sessions, l.Relay)
	if err != nil {
		return wanResult{err: err}
	}
	defer tun.stop()
	r := wanRun(tcpDialer(tun.forwards["bulk"]), tcpDialer(tun.forwards["ping"]), p.bulkStreams(), p.down, d, warm)
	lost := reReconnect.FindAllString(tun.client.log.String(), -1)
	r.sessionUp = "yes"
	if len(lost) > 0 {
		r.sessionUp = fmt.Sprintf("NO: %d lines like %q", len(lost), strings.TrimSpace(lost[0]))
	}
	return r
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
