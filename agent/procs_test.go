package agent

import (
	"runtime"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
)

func TestLoneTransferDecision(t *testing.T) {
	mib := int64(1 << 20)
	for _, tc := range []struct {
		name      string
		prev, now carried
		want      bool
	}{
		{"an upload alone", carried{1, 0, 0}, carried{1, 2 * mib, 0}, true},
		{"a download alone, a few acks back", carried{1, 5, 7 * mib}, carried{1, 4096, 9 * mib}, true},
		{"just enough", carried{1, 0, 0}, carried{1, loneTransferBytes, quietBytes}, true},
		{"too slow to be a transfer", carried{1, 0, 0}, carried{1, loneTransferBytes - 1, 0}, false},
		{"replies going back", carried{1, 0, 0}, carried{1, 2 * mib, quietBytes + 1}, false},
		{"two streams", carried{2, 0, 0}, carried{2, 8 * mib, 0}, false},
		{"a second stream came and went", carried{2, 0, 0}, carried{1, 8 * mib, 0}, false},
		{"nothing open", carried{0, 0, 0}, carried{0, 0, 0}, false},
		{"an idle stream", carried{1, 100, 100}, carried{1, 164, 164}, false},
	} {
		if got := loneTransfer(tc.prev, tc.now); got != tc.want {
			t.Errorf("%s: loneTransfer(%+v, %+v) = %v, want %v", tc.name, tc.prev, tc.now, got, tc.want)
		}
	}
}

// The policy on an agent's real metrics: one P only after loneTicks
// readings of a lone transfer, the default back at the next stream's
// start (before its first byte) and when the transfer stops.
func TestGoProcsFollowsTheStreams(t *testing.T) {
	m := admin.NewMetrics("test")
	var ones, resets int
	g := &goProcs{
		log:   hclog.NewNullLogger(),
		read:  newGoProcs(hclog.NewNullLogger(), m).read,
		one:   func() { ones++ },
		reset: func() { resets++ },
	}
	m.OnStreamStarted(g.streamStarted)
	defer m.OnStreamStarted(nil)
	state := func(wantOnes, wantResets int, when string) {
		t.Helper()
		if ones != wantOnes || resets != wantResets || g.single.Load() != (ones > resets) {
			t.Fatalf("%s: one P set %d times, default back %d times, single %v; want %d and %d",
				when, ones, resets, g.single.Load(), wantOnes, wantResets)
		}
	}

	g.prev = g.read()
	upload := m.StreamStarted("forward", "sink")
	// carry: the upload moves a tick's worth before each of n readings.
	carry := func(n int) {
		for range n {
			upload.AToB(loneTransferBytes)
			g.look()
		}
	}
	g.look() // the stream opened between readings: not yet
	carry(loneTicks - 1)
	state(0, 0, "before loneTicks readings of the transfer")
	carry(1)
	state(1, 0, "after loneTicks readings of the transfer")
	carry(1)
	state(1, 0, "one P is set once")

	other := m.StreamStarted("forward", "echo")
	state(1, 1, "as a second stream starts")
	carry(1)
	m.StreamEnded("forward", "echo", "", other)
	carry(loneTicks)
	state(1, 1, "a second stream ended a reading ago")
	carry(1)
	state(2, 1, "alone again for loneTicks readings")

	g.look() // nothing moved
	state(2, 2, "the transfer paused")
	m.StreamEnded("forward", "sink", "", upload)
	g.look()
	state(2, 2, "nothing open")
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
