package yamux

// Tests for the tunnelworks patch "bulk receivers share a window" (see
// PATCHED.md, patch 12).

import (
	"bytes"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// Two streams receiving bulk at once are each offered half the window;
// once one receives alone it is offered the whole window again. The
// credit is read where it counts, on the sender.
func TestStream_BulkReceiversShareWindow(t *testing.T) {
	const max = 1 << 20
	c, s := tcpPair(t)
	conf := patchConf()
	conf.MaxStreamWindowSize = max
	client, err := Client(c, conf)
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	ca, sa := openPair(t, client, server)
	cb, sb := openPair(t, client, server)

	credit := func(st *Stream) uint32 { return atomic.LoadUint32(&st.sendWindow) }
	readAll := func(st *Stream, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := io.ReadFull(st, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatal("bytes read differ from those sent")
		}
	}

	// 3 rounds of 64 KiB on each stream, taking turns (large frames of both
	// streams arrive interleaved); nobody reads until all are buffered.
	msg := pattern(64 << 10)
	sendRounds := func(ca, cb, sa, sb *Stream) {
		t.Helper()
		for i := 0; i < 3; i++ {
			for _, st := range []*Stream{ca, cb} {
				if _, err := st.Write(msg); err != nil {
					t.Fatal(err)
				}
			}
		}
		waitFor(t, "both streams' data buffered", func() bool { return buffered(sa) == 3*len(msg) && buffered(sb) == 3*len(msg) })
	}
	// Bulk streams only: nobody waits behind them, the window stays whole.
	sendRounds(ca, cb, sa, sb)
	if k := server.shareWindow.Load(); k != 1 {
		t.Fatalf("window shared by %d with only bulk streams on the session, want 1", k)
	}
	for i := 0; i < 3; i++ {
		readAll(sa, msg)
		readAll(sb, msg)
	}
	// A third stream sends a small message: now two bulk streams share.
	cp, sp := openPair(t, client, server)
	if _, err := cp.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	readAll(sp, []byte("ping"))
	waitFor(t, "the window shared by 2", func() bool { return server.shareWindow.Load() == 2 })
	// Two new streams (their credit starts at the initial 256 KiB: a
	// window shrinks only as the sender uses up the credit it has).
	ca, sa = openPair(t, client, server)
	cb, sb = openPair(t, client, server)
	sendRounds(ca, cb, sa, sb)
	for i := 0; i < 3; i++ {
		readAll(sa, msg)
	}
	// Each read may send a window update; the credit the receiver has
	// offered (what the sender will hold once the updates arrive) stays
	// within half the window (upstream: the whole window; the first two
	// streams' frames still count among the recent ones, so a quarter).
	offered := func(st *Stream) uint32 {
		st.recvLock.Lock()
		defer st.recvLock.Unlock()
		return st.recvWindow + uint32(st.recvBuf.Len())
	}
	if o := offered(sa); o <= 64<<10 || o > max/2 {
		t.Fatalf("stream a offered %d bytes of credit while two streams receive bulk, want (64 KiB, %d]", o, max/2)
	}
	o := offered(sa)
	waitFor(t, "the sender holding the credit offered", func() bool { return credit(ca) == o })

	// Stream a alone now: 32 large frames (1 MiB).
	sent := make(chan error, 1)
	go func() {
		for i := 0; i < 16; i++ {
			if _, err := ca.Write(msg); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	for i := 0; i < 16; i++ {
		readAll(sa, msg)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if k := server.shareWindow.Load(); k != 1 {
		t.Fatalf("window shared by %d after stream a received alone, want 1", k)
	}
	if o := offered(sa); o <= max/2 {
		t.Fatalf("stream a offered %d bytes of credit receiving alone, want more than half the window (%d)", o, max/2)
	}
	for i := 0; i < 3; i++ {
		readAll(sb, msg)
	}
}

// A window that shrank below what the sender may still send gets no
// update until the sender has used up its credit: the delta is 0, where
// upstream's unsigned arithmetic would wrap to a huge credit.
func TestCreditDelta(t *testing.T) {
	for _, c := range []struct{ max, buffered, credit, want uint32 }{
		{1 << 20, 0, 0, 1 << 20},
		{1 << 20, 100, 200, 1<<20 - 300},
		{256 << 10, 200 << 10, 200 << 10, 0}, // shrank under buffered + credit
		{256 << 10, 0, 256 << 10, 0},
	} {
		if got := creditDelta(c.max, c.buffered, c.credit); got != c.want {
			t.Errorf("creditDelta(%d, %d, %d) = %d, want %d", c.max, c.buffered, c.credit, got, c.want)
		}
	}
}

// Tests for patch 13: the shared window sized to the path, and
// background streams.

// sharedBudget is pathGain BDPs at the measured rate, within
// [minSharedBudget, max]; 0 (one stream's window) with no RTT known.
func TestSharedBudget(t *testing.T) {
	const max = 1 << 20
	for _, c := range []struct {
		bytes        uint64
		elapsed, rtt time.Duration
		want         uint32
	}{
		{512 << 10, time.Millisecond, 0, 0},                            // RTT unknown
		{512 << 10, time.Millisecond, 50 * time.Microsecond, 104857},   // loopback: 4 × 26 KB
		{512 << 10, time.Millisecond, 10 * time.Microsecond, 64 << 10}, // 4 × 5 KB, floored
		{512 << 10, time.Millisecond, 200 * time.Microsecond, 419430},  // 4 × 512 KiB/ms × 0.2 ms
		{512 << 10, time.Millisecond, 50 * time.Millisecond, max},      // a long path: one stream's window
		{512 << 10, 0, 50 * time.Millisecond, 0},                       // no time measured
	} {
		if got := sharedBudget(c.bytes, c.elapsed, c.rtt, max); got != c.want {
			t.Errorf("sharedBudget(%d B in %s, rtt %s) = %d, want %d", c.bytes, c.elapsed, c.rtt, got, c.want)
		}
	}
}

// Two bulk streams sharing beside a small message are offered a share
// of pathGain BDPs: on a path of 1 µs that is the floor (64 KiB in all,
// but at least a frame each), on a path of 1 s each stream its own window
// (patch 15: patch 13 gave them one window in all, which leaves a path
// that holds more half empty).
func TestStream_SharedWindowSizedToPath(t *testing.T) {
	const max = 1 << 20
	for _, c := range []struct {
		name      string
		rtt       time.Duration
		floor     time.Duration // told to NotePathFloor (patch 18)
		low, high uint32        // offered credit of a sharing stream, (low, high]
	}{
		{"short path", time.Microsecond, 0, 0, minSharedWindow},
		{"long path", time.Second, 0, max / 2, max},
		// A path that lengthened: the least ping is short, the floor
		// (TCP's recent minimum) long; the window is sized by the floor.
		{"lengthened path", time.Microsecond, time.Second, max / 2, max},
		{"floor below the least ping", time.Microsecond, time.Nanosecond, 0, minSharedWindow},
	} {
		t.Run(c.name, func(t *testing.T) {
			cc, sc := tcpPair(t)
			conf := patchConf()
			conf.MaxStreamWindowSize = max
			client, err := Client(cc, conf)
			if err != nil {
				t.Fatal(err)
			}
			server, err := Server(sc, conf)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.Close(); server.Close() })
			server.NotePathRTT(time.Hour) // the least is kept
			server.NotePathRTT(c.rtt)
			server.NotePathRTT(2 * c.rtt)
			if got := time.Duration(server.pathRTT.Load()); got != c.rtt {
				t.Fatalf("path RTT %s, want the least told, %s", got, c.rtt)
			}
			server.NotePathFloor(c.floor)
			cp, sp := openPair(t, client, server)
			if _, err := cp.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			readFull(t, sp, []byte("ping"))
			ca, sa := openPair(t, client, server)
			cb, sb := openPair(t, client, server)
			msg := pattern(64 << 10)
			// 2 MiB each, in rounds of one write on each stream (so that
			// both streams' frames are among the last ones): the credit
			// a stream held before the window was shared is used up, and
			// the rate measured. The writes run beside the reads: a
			// share may be less than a write.
			for i := 0; i < 32; i++ {
				sent := make(chan error, 2)
				for _, st := range []*Stream{ca, cb} {
					go func(st *Stream) {
						_, err := st.Write(msg)
						sent <- err
					}(st)
				}
				readFull(t, sa, msg)
				readFull(t, sb, msg)
				for j := 0; j < 2; j++ {
					if err := <-sent; err != nil {
						t.Fatal(err)
					}
				}
			}
			if k := server.shareWindow.Load(); k != 2 {
				t.Fatalf("window shared by %d, want 2", k)
			}
			offered := func(st *Stream) uint32 {
				st.recvLock.Lock()
				defer st.recvLock.Unlock()
				return st.recvWindow + uint32(st.recvBuf.Len())
			}
			for _, st := range []*Stream{sa, sb} {
				if o := offered(st); o <= c.low || o > c.high {
					t.Fatalf("a sharing stream offered %d bytes of credit, want (%d, %d]", o, c.low, c.high)
				}
			}
		})
	}
}

// A background stream's small frames (the agents' delivery notices) do
// not make bulk streams share their window; another stream's do.
func TestStream_BackgroundFramesDoNotShare(t *testing.T) {
	cc, sc := tcpPair(t)
	conf := patchConf()
	conf.MaxStreamWindowSize = 1 << 20
	client, err := Client(cc, conf)
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(sc, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	cn, sn := openPair(t, client, server)
	sn.SetBackground()
	ca, sa := openPair(t, client, server)
	cb, sb := openPair(t, client, server)
	msg := pattern(64 << 10)
	bulk := func() {
		t.Helper()
		for i := 0; i < 2; i++ {
			for _, st := range []*Stream{ca, cb} {
				if _, err := st.Write(msg); err != nil {
					t.Fatal(err)
				}
			}
			readFull(t, sa, msg)
			readFull(t, sb, msg)
		}
	}
	bulk()
	for i := 0; i < 3; i++ { // notices between bulk frames
		if _, err := cn.Write([]byte("notice")); err != nil {
			t.Fatal(err)
		}
		readFull(t, sn, []byte("notice"))
		bulk()
		if k := server.shareWindow.Load(); k != 1 {
			t.Fatalf("window shared by %d after a background stream's small frames, want 1", k)
		}
	}
	cp, sp := openPair(t, client, server)
	if _, err := cp.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	readFull(t, sp, []byte("ping"))
	bulk()
	if k := server.shareWindow.Load(); k != 2 {
		t.Fatalf("window shared by %d after another stream's small frame, want 2", k)
	}
}

func readFull(t *testing.T, st *Stream, want []byte) {
	t.Helper()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(st, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes read differ from those sent")
	}
}

// A bulk stream's short frames (what a sender's short reads make) do not
// make the window shared; smallRunInteractive small frames in a row on
// it do: it has turned to exchanging messages.
func TestStream_BulkStreamsShortFramesDoNotShare(t *testing.T) {
	cc, sc := tcpPair(t)
	conf := patchConf()
	conf.MaxStreamWindowSize = 1 << 20
	client, err := Client(cc, conf)
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(sc, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	ca, sa := openPair(t, client, server)
	cb, sb := openPair(t, client, server)
	large, short := pattern(64<<10), pattern(1000)
	for i := 0; i < 100; i++ { // 400 large frames, 200 short ones between
		for _, p := range []struct{ c, s *Stream }{{ca, sa}, {cb, sb}} {
			for _, msg := range [][]byte{large, short} {
				if _, err := p.c.Write(msg); err != nil {
					t.Fatal(err)
				}
				readFull(t, p.s, msg)
			}
		}
	}
	if k := server.shareWindow.Load(); k != 1 {
		t.Fatalf("window shared by %d with bulk streams' short frames only, want 1", k)
	}
	for i := 0; i < smallRunInteractive; i++ {
		if _, err := ca.Write(short); err != nil {
			t.Fatal(err)
		}
		readFull(t, sa, short)
	}
	for _, p := range []struct{ c, s *Stream }{{ca, sa}, {cb, sb}} {
		if _, err := p.c.Write(large); err != nil {
			t.Fatal(err)
		}
		readFull(t, p.s, large)
	}
	if k := server.shareWindow.Load(); k != 2 {
		t.Fatalf("window shared by %d after %d small frames in a row on a stream, want 2", k, smallRunInteractive)
	}
}

// One bulk stream beside a stream that exchanges messages is held to the
// path's budget too, once the path's RTT is known; with none told, or
// with nobody waiting, it keeps its whole window.
func TestStream_LoneBulkStreamSizedToPath(t *testing.T) {
	const max = 1 << 20
	offered := func(st *Stream) uint32 {
		st.recvLock.Lock()
		defer st.recvLock.Unlock()
		return st.recvWindow + uint32(st.recvBuf.Len())
	}
	for _, c := range []struct {
		name      string
		rtt       time.Duration
		ping      bool
		header    bool   // the bulk stream sends a small message first
		shortRun  bool   // and a run of small frames after some bulk
		low, high uint32 // offered credit of the bulk stream, (low, high]
	}{
		{"short path, a message waiting", time.Microsecond, true, false, false, 32 << 10, minSharedBudget},
		{"no RTT known", 0, true, false, false, max / 2, max},
		{"nobody waiting", time.Microsecond, false, false, false, max / 2, max},
		{"nobody waiting but its own first message", time.Microsecond, false, true, false, max / 2, max},
		{"nobody waiting but its own small frames", time.Microsecond, false, false, true, max / 2, max},
		{"a message waiting, its own first message after", time.Microsecond, true, true, false, 32 << 10, minSharedBudget},
	} {
		t.Run(c.name, func(t *testing.T) {
			cc, sc := tcpPair(t)
			conf := patchConf()
			conf.MaxStreamWindowSize = max
			client, err := Client(cc, conf)
			if err != nil {
				t.Fatal(err)
			}
			server, err := Server(sc, conf)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.Close(); server.Close() })
			server.NotePathRTT(c.rtt)
			ca, sa := openPair(t, client, server)
			var cp, sp *Stream
			if c.ping {
				cp, sp = openPair(t, client, server)
				if _, err := cp.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				readFull(t, sp, []byte("ping"))
			}
			if c.header {
				if _, err := ca.Write([]byte("header")); err != nil {
					t.Fatal(err)
				}
				readFull(t, sa, []byte("header"))
			}
			msg := pattern(64 << 10)
			for i := 0; i < 32; i++ { // 2 MiB: the credit held before is used up
				if i == 2 && c.ping && c.header {
					// the message stream goes on: the bulk stream's
					// first message came after its last one
					if _, err := cp.Write([]byte("ping")); err != nil {
						t.Fatal(err)
					}
					readFull(t, sp, []byte("ping"))
				}
				if i == 2 && c.shortRun {
					for j := 0; j < smallRunInteractive; j++ {
						if _, err := ca.Write([]byte("short")); err != nil {
							t.Fatal(err)
						}
						readFull(t, sa, []byte("short"))
					}
				}
				// written on its own: the credit may be less than a
				// write (a short read consumed some without an update)
				sent := make(chan error, 1)
				go func() {
					_, err := ca.Write(msg)
					sent <- err
				}()
				readFull(t, sa, msg)
				if err := <-sent; err != nil {
					t.Fatal(err)
				}
			}
			if o := offered(sa); o <= c.low || o > c.high {
				t.Fatalf("the bulk stream offered %d bytes of credit, want (%d, %d]", o, c.low, c.high)
			}
		})
	}
}

func TestLoneCap(t *testing.T) {
	const max = 1 << 20
	for _, c := range []struct {
		bytes        uint64
		elapsed, rtt time.Duration
		want         uint32
	}{
		{512 << 10, time.Second, 0, 0},                                 // RTT unknown: no change
		{512 << 10, 0, 40 * time.Millisecond, 0},                       // no time measured
		{300_000, time.Second, 40 * time.Millisecond, 78_000},          // 2.4 Mbit/s: 300 kB/s × 260 ms
		{1_250_000, time.Second, 40 * time.Millisecond, 325_000},       // 10 Mbit/s
		{100_000, time.Second, 40 * time.Millisecond, minSharedBudget}, // floored
		{512 << 10, time.Millisecond, 50 * time.Microsecond, max},      // loopback: the whole window
	} {
		got := loneCap(c.bytes, c.elapsed, c.rtt, max)
		if d := int64(got) - int64(c.want); d < -1 || d > 1 { // float rounding
			t.Errorf("loneCap(%d B in %s, rtt %s) = %d, want %d", c.bytes, c.elapsed, c.rtt, got, c.want)
		}
	}
}

// A bulk stream nobody waits behind is offered what its rate needs
// (loneCap) once the path's RTT is known: a paced sender (at most 32 KiB
// per 10 ms, 3.3 MB/s) gets at most half the window; with no RTT told it
// keeps the whole window. A fast sender that pauses half a second
// between bursts of 16 frames gets more than 128 KiB (counting the
// pauses, about 100 KiB). Until the rate is measured a stream keeps the
// initial window.
func TestStream_LoneBulkCapSizedToRate(t *testing.T) {
	const max = 1 << 20
	offered := func(st *Stream) uint32 {
		st.recvLock.Lock()
		defer st.recvLock.Unlock()
		return st.recvWindow + uint32(st.recvBuf.Len())
	}
	for _, c := range []struct {
		name      string
		rtt       time.Duration
		writes    int
		pace      time.Duration
		low, high uint32 // offered credit of the bulk stream, (low, high]
	}{
		{"paced, RTT known", time.Microsecond, 40, 10 * time.Millisecond, 0, max / 2},
		{"paced, no RTT known", 0, 40, 10 * time.Millisecond, max / 2, max},
		{"rate not yet measured", time.Microsecond, 12, 0, 0, initialStreamWindow},
		{"bursts after pauses", time.Microsecond, 64, 0, 128 << 10, max},
		{"rate not yet measured, no RTT known", 0, 12, 0, max / 2, max},
	} {
		t.Run(c.name, func(t *testing.T) {
			cc, sc := tcpPair(t)
			conf := patchConf()
			conf.MaxStreamWindowSize = max
			client, err := Client(cc, conf)
			if err != nil {
				t.Fatal(err)
			}
			server, err := Server(sc, conf)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.Close(); server.Close() })
			server.NotePathRTT(c.rtt)
			ca, sa := openPair(t, client, server)
			msg := pattern(32 << 10)
			for i := 0; i < c.writes; i++ {
				if _, err := ca.Write(msg); err != nil {
					t.Fatal(err)
				}
				readFull(t, sa, msg)
				time.Sleep(c.pace)
				if c.name == "bursts after pauses" && i%16 == 15 {
					// 16 frames at once, then a pause the rate must
					// count as loneQueue at most (512 KiB in half a
					// second: a cap about 100 KiB)
					time.Sleep(5 * loneQueue)
				}
			}
			if o := offered(sa); o <= c.low || o > c.high {
				t.Fatalf("the bulk stream offered %d bytes of credit, want (%d, %d]", o, c.low, c.high)
			}
		})
	}
}

// Patch 18: windows are sized by the longer of the least ping and the
// floor, and by nothing until a ping is answered.
func TestSizingRTT(t *testing.T) {
	s := &Session{}
	s.NotePathFloor(time.Second)
	if got := s.sizingRTT(); got != 0 {
		t.Fatalf("before any ping: sized by %s, want unknown (0)", got)
	}
	s.NotePathRTT(time.Millisecond)
	if got := s.sizingRTT(); got != time.Second {
		t.Fatalf("floor 1s over a 1ms ping: sized by %s", got)
	}
	s.NotePathFloor(0)
	if got := s.sizingRTT(); got != time.Millisecond {
		t.Fatalf("floor forgotten: sized by %s, want the least ping, 1ms", got)
	}
}
