package agent

import (
	"context"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
)

// One P for a lone transfer. While the agent carries a single stream and
// that stream is a one-way transfer, its bytes go through one goroutine
// per agent at a time (read, seal, write; or read, open, write), so a
// second P adds no parallelism: it only adds hand-offs between threads,
// which cost CPU on a machine the transfer shares with its endpoints.
// Then the Go scheduler runs on one P. Anything else takes the default
// back at once: a stream that opens (before its first byte moves), bytes
// the other way, the transfer slowing or ending. With one P a goroutine
// woken by the network can wait for the busy one to block or for Go's
// 10 ms network poll, which is why light streams never run on one P
// (bench/README.md, "twenty-third part").
//
// Only the process's owner turns this on (ManageGoProcs): GOMAXPROCS is
// the whole process's, and an operator's GOMAXPROCS is left alone.

const (
	// procsTick is how often the policy looks at the streams.
	procsTick = 100 * time.Millisecond
	// loneTransferBytes a tick (10 MiB/s) one way make a stream a transfer.
	loneTransferBytes = 1 << 20
	// quietBytes a tick at most may go the other way (a peer's acks and
	// flow-control updates); more means someone waits on replies.
	quietBytes = 16 << 10
	// loneTicks in a row (half a second) make it a lone transfer: a
	// message stream's burst is not one, and connections that come and go
	// beside a transfer more often than that find the default Ps.
	loneTicks = 5
)

// carried is what the policy reads of the agent's streams: how many are
// open and the bytes all of them carried so far, each way.
type carried struct {
	open, toPeer, fromPeer int64
}

// loneTransfer decides, from two readings a tick apart, whether the agent
// carries a single one-way transfer.
func loneTransfer(prev, now carried) bool {
	if now.open != 1 || prev.open != 1 {
		return false
	}
	up, down := now.toPeer-prev.toPeer, now.fromPeer-prev.fromPeer
	return max(up, down) >= loneTransferBytes && min(up, down) <= quietBytes
}

// goProcs runs the policy for one agent.
type goProcs struct {
	log   hclog.Logger
	read  func() carried
	one   func() // the scheduler on one P
	reset func() // the scheduler back to its default

	prev carried // the last reading (run's goroutine only)
	lone int     // readings in a row that saw a lone transfer

	mu     sync.Mutex
	single atomic.Bool // on one P now
}

func newGoProcs(log hclog.Logger, m *admin.Metrics) *goProcs {
	return &goProcs{
		log: log,
		read: func() carried {
			open, up, down := m.Carrying()
			return carried{open, up, down}
		},
		one:   func() { runtime.GOMAXPROCS(1) },
		reset: runtime.SetDefaultGOMAXPROCS,
	}
}

// goProcsApply says whether the policy may run in this process: GOMAXPROCS is
// the default (not set by the operator) and more than one.
func goProcsApply() bool {
	return os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) > 1
}

// run looks every tick until ctx ends, then leaves the default.
func (g *goProcs) run(ctx context.Context, tick time.Duration) {
	t := time.NewTicker(tick)
	defer t.Stop()
	defer g.leave("agent stopping")
	g.prev = g.read()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.look()
		}
	}
}

// look reads the streams once more and enters or leaves one P.
func (g *goProcs) look() {
	now := g.read()
	if loneTransfer(g.prev, now) {
		g.lone++
	} else {
		g.lone = 0
		g.leave("not a lone transfer")
	}
	g.prev = now
	if g.lone >= loneTicks {
		g.enter()
	}
}

func (g *goProcs) enter() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.single.Load() {
		return
	}
	g.one()
	g.single.Store(true)
	g.log.Debug("go scheduler on one P: the agent carries a lone transfer")
}

// leave takes the default back if on one P. A stream's start calls it
// (streamStarted), so the cheap case is the atomic load.
func (g *goProcs) leave(why string) {
	if !g.single.Load() {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.single.Load() {
		return
	}
	g.reset()
	g.single.Store(false)
	g.log.Debug("go scheduler back to its default Ps", "why", why, "procs", runtime.GOMAXPROCS(0))
}

func (g *goProcs) streamStarted() { g.leave("a stream started") }

// startGoProcs starts the policy on m's streams if managed and it applies;
// the returned stop ends it and waits.
func startGoProcs(ctx context.Context, managed bool, log hclog.Logger, m *admin.Metrics) (stop func()) {
	if !managed || !goProcsApply() {
		return func() {}
	}
	g := newGoProcs(log, m)
	m.OnStreamStarted(g.streamStarted)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { g.run(ctx, procsTick) })
	return func() {
		cancel()
		wg.Wait()
		m.OnStreamStarted(nil)
	}
}
