package main

import (
	"context"
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
	err            error
}

// wanRun pushes one bulk stream through bulkDial for d while a 64-byte
// ping-pong runs through pingDial (from warm after the start of the bulk
// transfer until its end).
func wanRun(bulkDial, pingDial dialer, d, warm time.Duration) wanResult {
	var r wanResult
	// One round trip first: opens the ping stream before the link is busy.
	if _, err := pingPong(pingDial, 1, 64, time.Now().Add(10*time.Second)); err != nil {
		r.err = fmt.Errorf("first ping: %w", err)
		return r
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan bulkResult, 1)
	go func() { done <- bulk(ctx, bulkDial, 2*time.Minute) }()
	time.Sleep(warm)
	rtts, perr := pingPong(pingDial, 1_000_000, 64, time.Now().Add(d-warm))
	b := <-done
	switch {
	case perr != nil:
		r.err = fmt.Errorf("ping-pong: %w", perr)
	case b.err != nil:
		r.err = fmt.Errorf("bulk: %w", b.err)
	}
	r.pings = len(rtts)
	if len(rtts) > 0 {
		r.p50, r.p99, r.pmax = percentile(rtts, 0.5), percentile(rtts, 0.99), percentile(rtts, 1)
	}
	if b.elapsed > 0 {
		r.bulkMbps = float64(b.bytes) * 8 / b.elapsed.Seconds() / 1e6
	}
	return r
}

// runWAN runs the tunnel through the link emulator at 10 and 2 Mbit/s,
// 40 ms round trip, beside two plain TCP connections through the same
// emulator (the floor).
func runWAN(ctx context.Context, w *workspace, o options, report *strings.Builder, logf func(string, ...any)) error {
	tg, err := startTargets()
	if err != nil {
		return err
	}
	defer tg.close()
	warm := min(2*time.Second, o.wanDur/4)
	const oneWay = 20 * time.Millisecond
	var results []wanResult
	var firstErr error
	for _, rate := range []float64{10e6, 2e6} {
		if ctx.Err() != nil {
			break
		}
		label := fmt.Sprintf("%g Mbit/s", rate/1e6)
		// The floor: two plain TCP connections across one fresh link.
		em := linkemu.New(linkemu.Config{RateBitsPerSec: rate, OneWayDelay: oneWay})
		logf("wan %s: direct TCP through the emulator", label)
		sinkR, err1 := em.Relay("127.0.0.1:0", tg.sink)
		echoR, err2 := em.Relay("127.0.0.1:0", tg.echo)
		if err1 != nil || err2 != nil {
			em.Close()
			return fmt.Errorf("relay: %v %v", err1, err2)
		}
		r := wanRun(tcpDialer(sinkR), tcpDialer(echoR), o.wanDur, warm)
		r.path = label + ", direct TCP (2 connections)"
		r.sessionUp = "—"
		results = append(results, r)
		em.Close()

		// The tunnel: its connections to the server cross a fresh link.
		em = linkemu.New(linkemu.Config{RateBitsPerSec: rate, OneWayDelay: oneWay})
		tun, err := w.startTunnel(fmt.Sprintf("wan-%g", rate/1e6), map[string]string{"sink": tg.sink, "echo": tg.echo},
			[]forwardSpec{
				{name: "bulk", service: "sink"},
				{name: "ping", service: "echo"},                       // same class: the bulk session
				{name: "ping-ctl", service: "echo", class: "control"}, // its own session
			}, 2, func(server string) (string, error) { return em.Relay("127.0.0.1:0", server) })
		if err != nil {
			em.Close()
			return err
		}
		for _, p := range []struct{ fwd, what string }{
			{"ping", "tunnel, ping on the bulk session"},
			{"ping-ctl", "tunnel, ping on a class=control forward"},
		} {
			if ctx.Err() != nil {
				break
			}
			logf("wan %s: %s", label, p.what)
			before := len(reReconnect.FindAllString(tun.client.log.String(), -1))
			r := wanRun(tcpDialer(tun.forwards["bulk"]), tcpDialer(tun.forwards[p.fwd]), o.wanDur, warm)
			r.path = label + ", " + p.what
			lost := reReconnect.FindAllString(tun.client.log.String(), -1)[before:]
			r.sessionUp = "yes"
			if len(lost) > 0 {
				r.sessionUp = fmt.Sprintf("NO: %d lines like %q", len(lost), strings.TrimSpace(lost[0]))
			}
			results = append(results, r)
		}
		tun.stop()
		em.Close()
	}

	fmt.Fprintf(report, "## WAN: through the link emulator (bench/linkemu)\n\n")
	fmt.Fprintf(report, "One shared link, %v round trip, FIFO bottleneck queue of one bandwidth-delay product per direction. "+
		"One bulk stream for %s; a 64-byte ping-pong on another connection from %s after its start until its end.\n\n", 2*oneWay, o.wanDur, warm)
	report.WriteString("| link, path | ping p50 | ping p99 | ping max | pings | bulk goodput Mbit/s | session stayed up | error |\n")
	report.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |\n")
	for _, r := range results {
		e := ""
		if r.err != nil {
			e = r.err.Error()
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", r.path, r.err)
			}
		}
		fmt.Fprintf(report, "| %s | %s | %s | %s | %d | %.2f | %s | %s |\n", r.path, ms(r.p50), ms(r.p99), ms(r.pmax), r.pings, r.bulkMbps, r.sessionUp, e)
	}
	report.WriteString("\n")
	return firstErr
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
