package agent

import (
	"runtime"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
)

func TestTransfersOnlyDecision(t *testing.T) {
	mib := int64(1 << 20)
	a, b := new(admin.StreamBytes), new(admin.StreamBytes)
	for _, tc := range []struct {
		name      string
		prev, now reading
		want      bool
	}{
		{"an upload alone", reading{a: {0, 0}}, reading{a: {2 * mib, 0}}, true},
		{"a download alone, a few acks back", reading{a: {5, 7 * mib}}, reading{a: {4096, 9 * mib}}, true},
		{"just enough", reading{a: {0, 0}}, reading{a: {transferBytes, quietBytes}}, true},
		{"too slow to be a transfer", reading{a: {0, 0}}, reading{a: {transferBytes - 1, 0}}, false},
		{"replies going back", reading{a: {0, 0}}, reading{a: {2 * mib, quietBytes + 1}}, false},
		{"an upload and a download", reading{a: {0, 0}, b: {0, 0}}, reading{a: {8 * mib, 0}, b: {0, 3 * mib}}, true},
		{"a transfer beside an idle stream", reading{a: {0, 0}, b: {10, 10}}, reading{a: {8 * mib, 0}, b: {10, 10}}, false},
		{"a transfer beside a slow one", reading{a: {0, 0}, b: {0, 0}}, reading{a: {8 * mib, 0}, b: {transferBytes - 1, 0}}, false},
		{"a transfer beside messages", reading{a: {0, 0}, b: {0, 0}}, reading{a: {8 * mib, 0}, b: {64 << 10, 64 << 10}}, false},
		{"a second stream came and went", reading{a: {0, 0}, b: {0, 0}}, reading{a: {8 * mib, 0}}, false},
		{"a stream came", reading{a: {0, 0}}, reading{a: {8 * mib, 0}, b: {8 * mib, 0}}, false},
		{"one stream ended, another began", reading{a: {0, 0}}, reading{b: {8 * mib, 0}}, false},
		{"nothing open", reading{}, reading{}, false},
		{"an idle stream", reading{a: {100, 100}}, reading{a: {164, 164}}, false},
	} {
		if got := transfersOnly(tc.prev, tc.now); got != tc.want {
			t.Errorf("%s: transfersOnly(%v, %v) = %v, want %v", tc.name, tc.prev, tc.now, got, tc.want)
		}
	}
}

// The policy on an agent's real metrics: one P only after transferTicks
// readings of transfers only, the default back at the next stream's
// start (before its first byte), while that stream is not a transfer,
// and when the transfers stop.
func TestGoProcsFollowsTheStreams(t *testing.T) {
	m := admin.NewMetrics("test")
	var ones, resets int
	g := newGoProcs(hclog.NewNullLogger(), m)
	g.one = func() { ones++ }
	g.reset = func() { resets++ }
	m.OnStreamStarted(g.streamStarted)
	defer m.OnStreamStarted(nil)
	state := func(wantOnes, wantResets int, when string) {
		t.Helper()
		if ones != wantOnes || resets != wantResets || g.single.Load() != (ones > resets) {
			t.Fatalf("%s: one P set %d times, default back %d times, single %v; want %d and %d",
				when, ones, resets, g.single.Load(), wantOnes, wantResets)
		}
	}

	g.lastTotals = g.readTotals()
	upload := m.StreamStarted("forward", "sink")
	// carry: the transfers move a tick's worth before each of n readings.
	transfers := []func(int){upload.AToB}
	carry := func(n int) {
		for range n {
			for _, move := range transfers {
				move(transferBytes)
			}
			g.look()
		}
	}
	// settle: after the streams change, a reading sees the totals change
	// and the next one takes every stream's counts; transferTicks
	// comparisons come after those.
	settle := func() { carry(2) }
	g.look() // the stream opened between readings: not yet
	carry(1) // its first bytes: every stream read for the first time
	carry(transferTicks - 1)
	state(0, 0, "before transferTicks readings of the transfer")
	carry(1)
	state(1, 0, "after transferTicks readings of the transfer")
	carry(1)
	state(1, 0, "one P is set once")

	other := m.StreamStarted("forward", "echo")
	state(1, 1, "as a second stream starts")
	carry(transferTicks + 2)
	state(1, 1, "beside a stream that moves nothing")
	other.BToA(64)
	m.StreamEnded("forward", "echo", "", other)
	settle()
	carry(transferTicks - 1)
	state(1, 1, "a second stream ended a while ago")
	carry(1)
	state(2, 1, "alone again for transferTicks readings")

	download := m.StreamStarted("forward", "source")
	state(2, 2, "as a download starts")
	carry(1) // the download's first tick: it moves nothing yet
	transfers = append(transfers, download.BToA)
	carry(1) // both move: every stream read for the first time
	carry(transferTicks)
	state(3, 2, "an upload and a download for transferTicks readings")
	download.AToB(quietBytes + 1) // replies: someone waits on them
	carry(1)
	state(3, 3, "bytes went back on the download")

	m.StreamEnded("forward", "source", "", download)
	transfers = transfers[:1]
	settle()
	carry(transferTicks - 1)
	state(3, 3, "the download ended a while ago")
	carry(1)
	state(4, 3, "the upload alone again")
	g.look() // nothing moved
	state(4, 4, "the transfer paused")
	m.StreamEnded("forward", "sink", "", upload)
	g.look()
	state(4, 4, "nothing open")
}

// Many open streams, most of them idle: the policy looks at the totals
// only, and never reads every stream.
func TestGoProcsReadsEveryStreamOnlyWhenTheTotalsAllow(t *testing.T) {
	m := admin.NewMetrics("test")
	g := newGoProcs(hclog.NewNullLogger(), m)
	read := g.read
	reads := 0
	g.read = func(into reading) { reads++; read(into) }
	g.one, g.reset = func() {}, func() {}
	var meters []admin.StreamMeter
	for range 1000 {
		meters = append(meters, m.StreamStarted("forward", "idle"))
	}
	upload := m.StreamStarted("forward", "sink")
	g.lastTotals = g.readTotals()
	for range 3 * transferTicks {
		upload.AToB(8 * transferBytes)
		meters[0].BToA(100)
		g.look()
	}
	if reads != 0 || g.single.Load() {
		t.Errorf("a transfer beside 1000 idle streams: every stream read %d times, single %v; want 0, false", reads, g.single.Load())
	}
	for _, s := range meters {
		m.StreamEnded("forward", "idle", "", s)
	}
	m.StreamEnded("forward", "sink", "", upload)
}

func TestMayBeTransfers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prev, now totals
		want      bool
	}{
		{"one stream, enough", totals{1, 0}, totals{1, transferBytes}, true},
		{"three streams, enough for three", totals{3, 5}, totals{3, 5 + 3*transferBytes}, true},
		{"three streams, enough for two", totals{3, 0}, totals{3, 3*transferBytes - 1}, false},
		{"a stream came", totals{1, 0}, totals{2, 8 * transferBytes}, false},
		{"nothing open", totals{0, 0}, totals{0, 0}, false},
	} {
		if got := mayBeTransfers(tc.prev, tc.now); got != tc.want {
			t.Errorf("%s: mayBeTransfers(%v, %v) = %v, want %v", tc.name, tc.prev, tc.now, got, tc.want)
		}
	}
}

// An operator's GOMAXPROCS is theirs: the policy stays off.
func TestGoProcsLeavesAnOperatorsSetting(t *testing.T) {
	t.Setenv("GOMAXPROCS", "2")
	if goProcsApply() {
		t.Error("goProcsApply() with GOMAXPROCS set in the environment: want false")
	}
	stop := startGoProcs(t.Context(), true, hclog.NewNullLogger(), admin.NewMetrics("test"))
	stop()
	t.Setenv("GOMAXPROCS", "")
	if want := runtime.GOMAXPROCS(0) > 1; goProcsApply() != want {
		t.Errorf("goProcsApply() with the default Ps (%d): want %v", runtime.GOMAXPROCS(0), want)
	}
}
