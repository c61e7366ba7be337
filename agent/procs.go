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

// One P while the agent carries only one-way transfers. While every
// stream the agent carries moves bytes one way only and fast, nobody
// waits on a reply: each transfer's bytes go through one goroutine per
// agent at a time (read, seal, write; or read, open, write), and a second
// P adds hand-offs between threads, which cost CPU on a machine the
// transfers share with their endpoints, more than the parallelism it
// adds. Then the Go scheduler runs on one P. Anything else takes the
// default back at once: a stream that opens (before its first byte
// moves), bytes the other way, a stream slowing or ending. With one P a
// goroutine woken by the network can wait for the busy one to block or
// for Go's 10 ms network poll, which is why a stream that is not a
// transfer (an idle one included) never runs on one P (bench/README.md,
// "twenty-third part" for a lone transfer, "twenty-fourth part" for
// several).
//
// Only the process's owner turns this on (ManageGoProcs): GOMAXPROCS is
// the whole process's, and an operator's GOMAXPROCS is left alone.

const (
	// procsTick is how often the policy looks at the streams.
	procsTick = 100 * time.Millisecond
	// transferBytes a tick (10 MiB/s) one way make a stream a transfer.
	transferBytes = 1 << 20
	// quietBytes a tick at most may go the other way (a peer's acks and
	// flow-control updates); more means someone waits on replies.
	quietBytes = 16 << 10
	// transferTicks in a row (half a second) make it transfers only: a
	// message stream's burst is not a transfer, and connections that come
	// and go beside transfers more often than that find the default Ps.
	transferTicks = 5
)

// sent is one stream's bytes so far, each way.
type sent struct{ toPeer, fromPeer int64 }

// reading is every open stream's bytes at one moment.
type reading map[*admin.StreamBytes]sent

// transfersOnly decides, from two readings a tick apart, whether every
// stream the agent carries is a one-way transfer: the same streams open
// at both, at least one, each with transferBytes or more one way and
// quietBytes or less the other.
func transfersOnly(prev, now reading) bool {
	if len(now) == 0 || len(now) != len(prev) {
		return false
	}
	for s, n := range now {
		p, ok := prev[s]
		if !ok {
			return false
		}
		up, down := n.toPeer-p.toPeer, n.fromPeer-p.fromPeer
		if max(up, down) < transferBytes || min(up, down) > quietBytes {
			return false
		}
	}
	return true
}

// totals is all the agent's streams together: how many are open and
// the bytes they carried so far, both ways.
type totals struct{ open, bytes int64 }

// mayBeTransfers is what transfersOnly needs of the totals, read without
// going over every stream: the same number open, and bytes enough for
// each to be a transfer. An agent with many streams, most idle, pays for
// this only.
func mayBeTransfers(prev, now totals) bool {
	return now.open > 0 && now.open == prev.open && now.bytes-prev.bytes >= now.open*transferBytes
}

// goProcs runs the policy for one agent.
type goProcs struct {
	log        hclog.Logger
	readTotals func() totals
	read       func(into reading) // fills an empty reading
	one        func()             // the scheduler on one P
	reset      func()             // the scheduler back to its default

	// The last readings (run's goroutine only). A reading of every
	// stream is taken only when the totals allow transfers; otherwise
	// now stays empty, and the next tick's comparison fails.
	lastTotals totals
	prev, now  reading
	ticks      int // readings in a row that saw transfers only

	mu     sync.Mutex
	single atomic.Bool // on one P now
}

func newGoProcs(log hclog.Logger, m *admin.Metrics) *goProcs {
	return &goProcs{
		log: log,
		readTotals: func() totals {
			open, bytes := m.Carrying()
			return totals{open, bytes}
		},
		read: func(into reading) {
			m.EachOpenStream(func(b *admin.StreamBytes) {
				up, down := b.Load()
				into[b] = sent{up, down}
			})
		},
		one:   func() { runtime.GOMAXPROCS(1) },
		reset: runtime.SetDefaultGOMAXPROCS,
		prev:  reading{},
		now:   reading{},
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
	g.lastTotals = g.readTotals()
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
	t := g.readTotals()
	clear(g.now)
	if mayBeTransfers(g.lastTotals, t) {
		g.read(g.now)
	}
	g.lastTotals = t
	if transfersOnly(g.prev, g.now) {
		g.ticks++
	} else {
		g.ticks = 0
		g.leave("not transfers only")
	}
	g.prev, g.now = g.now, g.prev
	if g.ticks >= transferTicks {
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
	g.log.Debug("go scheduler on one P: the agent carries one-way transfers only")
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
