package mux

import (
	"bytes"
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// Tests of how mux feeds yamux's shared bulk window (third_party/yamux,
// patches 12 and 13): its pings give the path's round-trip time, and the
// peer's delivery notices on the control stream do not count as a small
// message waiting behind bulk data.

func TestPingsGiveLeastRTT(t *testing.T) {
	cfg := Config{PingAfter: 40 * time.Millisecond}
	server, client := sessions(t, "client-a", cfg)
	waitUntil(t, "both sessions' least RTT from their pings", func() bool {
		return server.LeastRTT() > 0 && client.LeastRTT() > 0
	})
	for _, s := range []*Session{server, client} {
		if rtt := s.LeastRTT(); rtt > 10*time.Second {
			t.Fatalf("least RTT %s over loopback", rtt)
		}
	}
}

// The floor (the kernel's recent least round trip, which rises when the
// path lengthens) is read at every answered ping and follows it up; the
// least ping does not rise.
func TestPathFloorFollowsPathMinRTT(t *testing.T) {
	var kernel atomic.Int64
	kernel.Store(int64(5 * time.Second))
	cfg := Config{PingAfter: 40 * time.Millisecond, PathMinRTT: func() time.Duration { return time.Duration(kernel.Load()) }}
	server, client := sessions(t, "client-a", cfg)
	for _, s := range []*Session{server, client} {
		waitUntil(t, "the floor read at a ping", func() bool { return s.PathFloor() == 5*time.Second })
	}
	least := client.LeastRTT()
	kernel.Store(int64(50 * time.Second)) // the path lengthened
	for _, s := range []*Session{server, client} {
		waitUntil(t, "the floor risen", func() bool { return s.PathFloor() == 50*time.Second })
	}
	if l := client.LeastRTT(); l > least || l >= 5*time.Second {
		t.Fatalf("least ping %s after %s: it never rises, and is the ping's, not the floor", l, least)
	}
}

func TestDeliveryNoticesDoNotShareWindow(t *testing.T) {
	cfg := Config{Window: 1 << 20, Resumable: true}
	server, client := sessions(t, "client-a", cfg)
	accepted := acceptedStreams(t, server, pipeTarget)
	serve(t, client, nil) // as the agents do: it reads the server's control stream
	var cli, srv [2]*Stream
	for i := range cli {
		st, err := client.Open(context.Background(), "bulk", "")
		if err != nil {
			t.Fatal(err)
		}
		cli[i], srv[i] = st, <-accepted
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB: two large frames
	got := make([]byte, len(chunk))
	// 9 MiB, with notices all along (the window stays shared for 256
	// large frames, 8 MiB, after a small frame that counts).
	for round := 0; round < 72; round++ {
		for i := range srv {
			if _, err := srv[i].Write(chunk); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(cli[i], got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, chunk) {
				t.Fatal("bytes read differ from those sent")
			}
			// What a resumable stream's receiver sends as it delivers.
			if err := srv[i].SendDelivered(uint64(round)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The notices were read on the client in order with the bulk frames
	// (one connection); a last write makes sure the newest were seen.
	if _, err := srv[0].Write(chunk); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cli[0], got); err != nil {
		t.Fatal(err)
	}
	if k := windowSharedBy(client.y); k != 1 {
		t.Fatalf("the client's window shared by %d streams with only delivery notices beside the bulk, want 1", k)
	}
}

// The first ping goes out as the session starts, not a PingAfter later:
// the least round trip is best measured before streams load the
// connection.
func TestFirstPingAtOnce(t *testing.T) {
	cfg := Config{PingAfter: time.Hour, DeadAfter: 2 * time.Hour}
	server, client := sessions(t, "client-a", cfg)
	waitUntil(t, "both sessions' least RTT, long before PingAfter", func() bool {
		return server.LeastRTT() > 0 && client.LeastRTT() > 0
	})
}

// A session's first pings go out one per watch tick (a quarter of
// PingAfter), later ones one per PingAfter; a tick that comes a moment
// short of the interval (the last ping went out just after its tick)
// still sends, so the interval is PingAfter, not five ticks.
func TestPingSchedule(t *testing.T) {
	const after = 10 * time.Second
	const tick = after / 4
	const late = 5 * time.Millisecond // the last ping went out this long after its tick
	for _, c := range []struct {
		since time.Duration
		sent  int
		due   bool
	}{
		{tick - late, 1, true},  // the second ping, a tick after the first
		{tick - late, 3, true},  // the fourth
		{tick - late, 4, false}, // the fifth waits for PingAfter
		{3*tick - late, 4, false},
		{4*tick - late, 4, true},
		{4*tick - late, 100, true},
		{tick / 4, 1, false}, // never more than one per tick
	} {
		if got := pingDue(c.since, c.sent, after); got != c.due {
			t.Errorf("pingDue(%v since, %d sent) = %v, want %v", c.since, c.sent, got, c.due)
		}
	}
}

// StreamWindow says what a stream is offered: once the RTT is known and
// before bulk data has given a rate, the initial window; with bulk data
// flowing fast (loopback), the class's whole window.
func TestStreamWindowSizedToRate(t *testing.T) {
	const window = 1 << 20
	cfg := Config{Window: window}
	server, client := sessions(t, "client-a", cfg)
	accepted := acceptedStreams(t, server, pipeTarget)
	waitUntil(t, "the client's least RTT", func() bool { return client.LeastRTT() > 0 })
	if w := client.StreamWindow(); w != 256<<10 {
		t.Fatalf("stream window %d with no bulk data yet, want the initial 256 KiB", w)
	}
	st, err := client.Open(context.Background(), "bulk", "")
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	got := make([]byte, len(chunk))
	// Until a measurement sees the rate (every 16 large frames), at most
	// 64 MiB.
	for i := 0; i < 1024 && client.StreamWindow() != window; i++ {
		if _, err := srv.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, chunk) {
			t.Fatal("bytes read differ from those sent")
		}
	}
	if w := client.StreamWindow(); w != window {
		t.Fatalf("stream window %d with bulk data flowing over loopback, want the whole %d", w, window)
	}
}
