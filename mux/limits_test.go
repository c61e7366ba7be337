package mux

import (
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// A peer that opens streams and never sends their header holds at most
// the session's cap of them, each for at most HeaderTimeout: yamux resets
// the opens beyond the cap before allocating anything, and the timeout
// resets the rest. The session lives on, and its goroutines end with it.
func TestHeaderlessFlood(t *testing.T) {
	base := runtime.NumGoroutine()
	var (
		refusals counter
		waiting  atomic.Int64
		peakWait atomic.Int64
	)
	cfg := Config{
		MaxStreams: 20, HeaderTimeout: time.Second, PingAfter: 400 * time.Millisecond,
		OnRefuse: refusals.onRefuse,
		OnHeaderWait: func(d int) {
			if n := waiting.Add(int64(d)); n > peakWait.Load() {
				peakWait.Store(n)
			}
		},
	}
	server, raw := rawClient(t, cfg, echoSvc(t))
	limit := server.MaxStreams()
	if limit != 20+controlStreams {
		t.Fatalf("cap %d, want %d", limit, 20+controlStreams)
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			if n := int64(server.y.NumStreams()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	const n = 200
	var flood []*yamux.Stream
	for range n {
		flood = append(flood, rawOpen(t, raw, nil))
	}
	for i, y := range flood {
		waitReset(t, y, "headerless stream "+strconv.Itoa(i))
	}
	// Every open is answered: beyond the cap at once, the rest after the
	// header timeout. The overflow is counted by yamux and polled.
	waitUntil(t, "every refusal reported", func() bool {
		return refusals.get(RefusedStreamLimit)+refusals.get(RefusedHeaderTimeout) == n
	})
	close(stop)
	sampler.Wait()
	if p := peak.Load(); p > int64(limit) {
		t.Errorf("the session held %d streams at its peak, cap %d", p, limit)
	}
	// Our control stream holds one place; the peer sent none.
	if got := refusals.get(RefusedHeaderTimeout); got < 1 || got > limit-1 {
		t.Errorf("%d header timeouts, want 1 to %d", got, limit-1)
	}
	if p := peakWait.Load(); p > int64(limit-1) {
		t.Errorf("%d streams awaited their header at once, cap %d", p, limit)
	}
	if w := waiting.Load(); w != 0 {
		t.Errorf("%d streams still counted as awaiting their header", w)
	}
	waitUntil(t, "the flood's streams freed", func() bool { return server.y.NumStreams() == 1 })
	checkEcho(t, raw)
	t.Logf("peak %d streams held (cap %d), %d reset at the cap, %d at the header timeout",
		peak.Load(), limit, refusals.get(RefusedStreamLimit), refusals.get(RefusedHeaderTimeout))
	raw.Close()
	server.Close()
	waitUntil(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= base+8 })
}

// The lone window's extra (Config.LoneWindowFor) is held beside the
// streams' windows: the buffer budget counts it before the stream cap.
// The server takes the class from the client's hello.
func TestStreamCapCountsLoneWindow(t *testing.T) {
	const mib = 1 << 20
	cfg := Config{
		Class: "bulk", Classes: []string{"control", "bulk"}, MaxStreams: 100, MaxBuffer: 8 * mib,
		WindowFor: func(string) uint32 { return mib },
		LoneWindowFor: func(class string) uint32 {
			if class == "bulk" {
				return 4 * mib
			}
			return 0
		},
	}
	srvCfg := cfg
	srvCfg.Class = ""
	server, client := sessionsWith(t, "client-a", srvCfg, cfg)
	// (8 MiB - 3 MiB of extra) / 1 MiB windows.
	for name, s := range map[string]*Session{"server": server, "client": client} {
		if got := s.MaxStreams(); got != 5 {
			t.Errorf("%s: stream cap %d, want 5", name, got)
		}
	}
	cfg.Class = "control"
	server, client = sessionsWith(t, "client-a", srvCfg, cfg)
	for name, s := range map[string]*Session{"server": server, "client": client} {
		if got := s.MaxStreams(); got != 8 {
			t.Errorf("%s: stream cap %d with no lone window, want 8", name, got)
		}
	}
}
