package resume

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/mux"
)

// A live stream moves between two live sessions to the same server in
// the middle of an echo both ways: every byte comes back once and in
// order, the application sees nothing, the old carrier is freed at both
// ends, and both sides count a move, not a resume. A move whose new
// session is cut before the answer puts the stream back on the session of
// its class, where it carries on.
func TestMoveBetweenLiveSessions(t *testing.T) {
	m := startMoveRig(t, 8<<20) // the echo's first half before the failed move
	r, cl, sess1, sess2, rs, echo := m.r, m.cl, m.first, m.second, m.rs, m.echo

	echo.waitFor(t, 1<<20)
	waitHeld(t, rs)
	if err := rs.Move(sess2, "second"); err != nil {
		t.Fatalf("move: %v", err)
	}
	if got := rs.Class(); got != "second" {
		t.Errorf("class after the move %q, want second", got)
	}
	if n := sess2.NumStreams(); n != 1 {
		t.Errorf("the new session holds %d streams, want the moved one", n)
	}
	// Each side's control stream stays; the old carrier goes at both ends.
	waitUntil(t, "the old carrier freed on the client", func() bool { return sess1.NumStreams() == 0 && sess1.WireStreams() == 2 })
	if st := cl.table.Stats(); st.Moved != 1 || st.Resumed != 0 {
		t.Errorf("client counts %d moves and %d resumes, want 1 and 0", st.Moved, st.Resumed)
	}
	// The server counts the move once its resend is done, which may be
	// after the client's Move has its answer.
	waitUntil(t, "the server to count the move", func() bool { return r.serverTable().Stats().Moved == 1 })
	if st := r.serverTable().Stats(); st.Moved != 1 || st.Resumed != 0 {
		t.Errorf("server counts %d moves and %d resumes, want 1 and 0", st.Moved, st.Resumed)
	}
	echo.waitFor(t, 2<<20)

	// A third session, held and then cut while the move waits for its
	// answer: the move fails and the stream resumes on the session of
	// its class ("second" again).
	third := startRelay(t, r.srvLn.Addr().String())
	t.Cleanup(third.close)
	sess3 := cl.serveExtra(t, third.addr(), "third")
	third.hold()
	moved := make(chan error, 1)
	go func() { moved <- rs.Move(sess3, "third") }()
	waitUntil(t, "the move under way", func() bool { return cl.table.Stats().Suspended == 1 })
	third.cut()
	if err := <-moved; err == nil || errors.Is(err, ErrNotMoved) {
		t.Fatalf("a move to a session cut before its answer returned %v", err)
	}
	if got := rs.Class(); got != "second" {
		t.Errorf("class after the failed move %q, want second back", got)
	}
	echo.goOn()
	// The resume is counted once it is done, just after the stream is
	// back on its carrier: wait for the count as well.
	waitUntil(t, "the stream back on the second session", func() bool {
		st := cl.table.Stats()
		return sess2.NumStreams() == 1 && st.Suspended == 0 && st.Resumed >= 1
	})
	if st := cl.table.Stats(); st.Moved != 1 || st.Resumed != 1 {
		t.Errorf("client counts %d moves and %d resumes, want 1 and 1 (the failed move resumed)", st.Moved, st.Resumed)
	}
	echo.finish(t)
	if err := r.pipeErrors(); err != nil {
		t.Fatal(err)
	}
}

// A stream moved back and forth between two live sessions 200 times, in
// the middle of an echo both ways: each move frees the old carrier at
// both ends, so nothing builds up in either yamux (each session holds its
// two control streams and at most the stream), both sides count every
// move, and every byte comes back once and in order.
func TestManyMovesHoldNothing(t *testing.T) {
	m := startMoveRig(t, 16<<20) // the echo's second half after the moves
	r, cl, sess1, sess2, rs, echo := m.r, m.cl, m.first, m.second, m.rs, m.echo

	echo.waitFor(t, 64<<10)
	waitHeld(t, rs)
	const moves = 200
	for i := range moves {
		to, class := sess2, "second"
		if i%2 == 1 {
			to, class = sess1, "first"
		}
		if err := rs.Move(to, class); err != nil {
			t.Fatalf("move %d of %d: %v", i+1, moves, err)
		}
	}
	echo.goOn()
	// Back on the first session after an even number of moves.
	for _, s := range []*mux.Session{sess1, sess2} {
		if n := s.NumStreams(); n > 1 {
			t.Errorf("a client session holds %d streams after the moves, want at most the moved one", n)
		}
	}
	waitUntil(t, "the old carriers freed at both ends", func() bool {
		wire := 0
		for _, s := range r.serverSessions() {
			wire += s.WireStreams()
		}
		return sess1.NumStreams() == 1 && sess1.WireStreams() == 3 && sess2.WireStreams() == 2 && wire == 2+3
	})
	if st := cl.table.Stats(); st.Moved != moves || st.Resumed != 0 || st.Streams != 1 {
		t.Errorf("client counts %d moves, %d resumes and %d streams, want %d, 0 and 1", st.Moved, st.Resumed, st.Streams, moves)
	}
	// The server counts a move once its resend is done.
	waitUntil(t, "the server to count every move", func() bool { return r.serverTable().Stats().Moved == moves })
	if st := r.serverTable().Stats(); st.Resumed != 0 || st.Streams != 1 {
		t.Errorf("server counts %d resumes and %d streams, want 0 and 1", st.Resumed, st.Streams)
	}
	echo.finish(t)
	if err := r.pipeErrors(); err != nil {
		t.Fatal(err)
	}
}

// moveRig is a client with two live sessions to the server ("first",
// and "second" through a relay, as an agent's second lane) and a piped
// resumable echo stream on the first.
type moveRig struct {
	r             *rig
	cl            *client
	first, second *mux.Session
	rs            *Stream
	echo          *echoCheck // total bytes, its second half gated (goOn)
}

func startMoveRig(t *testing.T, total int64) moveRig {
	r := newRig(t, time.Minute)
	cl := r.newClient("edge")
	first := cl.session(t)
	app, rs := cl.openPiped(t, first, Options{Window: time.Minute, Class: "first"})
	cl.table.SessionUp(first, "first")
	echo := startEcho(t, app, total)
	relay := startRelay(t, r.srvLn.Addr().String())
	t.Cleanup(relay.close)
	second := cl.serveExtra(t, relay.addr(), "second")
	return moveRig{r: r, cl: cl, first: first, second: second, rs: rs, echo: echo}
}

// openPiped opens a resumable stream to the echo service on sess, piped
// (as an agent's forward pipes it) to a local connection whose other end,
// app, it returns.
func (cl *client) openPiped(t *testing.T, sess *mux.Session, o Options) (app net.Conn, rs *Stream) {
	t.Helper()
	app, local := tcpPair(t)
	rs, err := cl.table.Open(cl.ctx, sess, "echo", "", local.LocalAddr(), local.RemoteAddr(), o)
	if err != nil {
		t.Fatal(err)
	}
	cl.wg.Go(func() {
		if res := forward.Pipe(cl.ctx, rs.Local(local), rs, nil, 0); res.Err != nil && cl.ctx.Err() == nil {
			cl.r.noteErr("client pipe", res.Err)
		}
	})
	return app, rs
}

// serveExtra sets up one more session of the client through addr, serves
// it until the test ends and makes it the current one of class.
func (cl *client) serveExtra(t *testing.T, addr, class string) *mux.Session {
	t.Helper()
	sess, err := cl.connectTo(addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = sess.Serve(cl.ctx, func(string) (mux.Service, bool) { return mux.Service{}, false }, nil)
	})
	t.Cleanup(func() { sess.Close(); wg.Wait() })
	cl.table.SessionUp(sess, class)
	return sess
}

// echoCheck writes total pseudo-random bytes to an echo (paced in 32 KiB
// writes; the second half once go is called) and checks every byte that
// comes back.
type echoCheck struct {
	c      net.Conn
	total  int64
	gate   chan struct{}
	echoed atomic.Int64
	wg     sync.WaitGroup
	err    atomic.Pointer[error]
}

func startEcho(t *testing.T, c net.Conn, total int64) *echoCheck {
	e := &echoCheck{c: c, total: total, gate: make(chan struct{})}
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	e.wg.Go(func() {
		src := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 32<<10)
		for sent := int64(0); sent < total; sent += int64(len(buf)) {
			if sent == total/2 {
				<-e.gate
			}
			for i := range buf {
				buf[i] = byte(src.Uint32())
			}
			if _, err := c.Write(buf); err != nil {
				e.fail(err)
				return
			}
			time.Sleep(time.Millisecond) // so that the moves land mid-stream
		}
		_ = c.(*net.TCPConn).CloseWrite()
	})
	e.wg.Go(func() {
		want := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			for i := range n {
				if w := byte(want.Uint32()); buf[i] != w {
					e.fail(errors.New("echo differs at byte " + itoa(e.echoed.Load()+int64(i))))
					return
				}
			}
			e.echoed.Add(int64(n))
			if err == io.EOF {
				return
			}
			if err != nil {
				e.fail(err)
				return
			}
		}
	})
	t.Cleanup(func() {
		c.Close()
		select {
		case <-e.gate:
		default:
			close(e.gate)
		}
		e.wg.Wait()
	})
	return e
}

// goOn lets the second half go.
func (e *echoCheck) goOn() { close(e.gate) }

func (e *echoCheck) fail(err error) { e.err.CompareAndSwap(nil, &err) }

func (e *echoCheck) waitFor(t *testing.T, n int64) {
	t.Helper()
	waitUntil(t, "the echo to pass "+itoa(n)+" bytes", func() bool {
		if p := e.err.Load(); p != nil {
			t.Fatalf("echo: %v", *p)
		}
		return e.echoed.Load() >= n
	})
}

// finish waits for the whole echo and its end of data.
func (e *echoCheck) finish(t *testing.T) {
	t.Helper()
	e.wg.Wait()
	if p := e.err.Load(); p != nil {
		t.Fatalf("echo: %v", *p)
	}
	if got := e.echoed.Load(); got != e.total {
		t.Fatalf("echoed %d bytes, want %d", got, e.total)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// waitUntil polls cond for at most 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A stream that ends here while its move is on its way (after the peer
// answered it: the peer's end is on the new carrier already) ends at the
// peer too, at once: the peer is told on the new carrier, not left
// holding its end there, and its target with it, for as long as the
// session lives.
func TestMoveEndedBeforeItLands(t *testing.T) {
	r := newRig(t, time.Minute)
	cl := r.newClient("edge")
	sess1 := cl.session(t)
	app, local := tcpPair(t)
	defer app.Close()
	rs, err := cl.table.Open(cl.ctx, sess1, "echo", "", local.LocalAddr(), local.RemoteAddr(), Options{Window: time.Minute, Class: "first"})
	if err != nil {
		t.Fatal(err)
	}
	cl.table.SessionUp(sess1, "first")
	// A round trip: the peer has answered the open, so it may move.
	if _, err := rs.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rs, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	waitHeld(t, rs)
	second := startRelay(t, r.srvLn.Addr().String())
	t.Cleanup(second.close)
	sess2 := cl.serveExtra(t, second.addr(), "second")

	// Hold the move between the peer's answer and the stream's switch
	// to the new carrier (moveTo takes the write lock), and reset the
	// stream there.
	rs.wmu.Lock()
	moved := make(chan error, 1)
	go func() { moved <- rs.Move(sess2, "second") }()
	waitUntil(t, "the peer's answer to the move", func() bool { return sess2.NumStreams() == 1 })
	if err := rs.Abort(); err != nil {
		t.Fatal(err)
	}
	rs.wmu.Unlock()
	if err := <-moved; !errors.Is(err, ErrNotMoved) {
		t.Errorf("a move of a stream reset during it returned %v, want ErrNotMoved", err)
	}
	waitUntil(t, "the peer's end to end", func() bool { return r.serverTable().Stats().Streams == 0 })
	waitUntil(t, "the new carrier freed on the client", func() bool { return sess2.WireStreams() == 2 })
	if st := cl.table.Stats(); st.Moved != 0 || st.Streams != 0 {
		t.Errorf("client counts %d moves and holds %d streams, want none", st.Moved, st.Streams)
	}
}

// A stream turns heavy (Options.OnHeavy) once it carries a megabyte
// within a second, and, on a path slower than that, once it fills the
// path: a transfer through a 2 Mbit/s link, which never carries a
// megabyte in a second, turns heavy once its writes have waited for the
// link, and a stream of small messages over the same link does not.
func TestHeavyStreams(t *testing.T) {
	r := newRig(t, time.Minute)
	cl := r.newClient("edge")
	slow := startRelay(t, r.srvLn.Addr().String())
	t.Cleanup(slow.close)
	slow.slow(256 << 10) // bytes per second: 2 Mbit/s

	type result struct {
		heavy   bool
		carried int64
	}
	run := func(t *testing.T, sess *mux.Session, chunk int, every time.Duration, total int64) result {
		heavy := make(chan struct{})
		rs, err := cl.table.Open(cl.ctx, sess, "sink", "", nil, nil, Options{Window: time.Minute, Class: "bulk",
			OnHeavy: func(*Stream) { close(heavy) }})
		if err != nil {
			t.Fatal(err)
		}
		var reading sync.WaitGroup
		reading.Go(func() { _, _ = io.Copy(io.Discard, rs) }) // as a pipe does: it takes the answer
		defer func() { rs.Abort(); reading.Wait() }()
		buf := make([]byte, chunk)
		var carried int64
		for deadline := time.Now().Add(30 * time.Second); carried < total && time.Now().Before(deadline); carried += int64(chunk) {
			select {
			case <-heavy:
				return result{true, carried}
			default:
			}
			if _, err := rs.Write(buf); err != nil {
				t.Fatal(err)
			}
			time.Sleep(every)
		}
		select {
		case <-heavy:
			return result{true, carried}
		case <-time.After(time.Second):
			return result{false, carried}
		}
	}

	t.Run("fast", func(t *testing.T) {
		if got := run(t, cl.session(t), 64<<10, 0, 64<<20); !got.heavy {
			t.Fatalf("a stream that carried %d bytes as fast as loopback goes did not turn heavy", got.carried)
		}
	})
	sess, err := cl.connectTo(slow.addr())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = sess.Serve(cl.ctx, func(string) (mux.Service, bool) { return mux.Service{}, false }, nil)
	})
	defer func() { sess.Close(); wg.Wait() }()
	t.Run("slow link, transfer", func(t *testing.T) {
		got := run(t, sess, 32<<10, 0, 4<<20)
		if !got.heavy {
			t.Fatalf("a transfer through a 2 Mbit/s link did not turn heavy in %d bytes", got.carried)
		}
	})
	// Downloads: the client only reads, and its writes never wait; the
	// server's do, and it says so (a heavy notice).
	download := func(t *testing.T, service string) result {
		heavy := make(chan struct{})
		rs, err := cl.table.Open(cl.ctx, sess, service, "", nil, nil, Options{Window: time.Minute, Class: "bulk",
			OnHeavy: func(*Stream) { close(heavy) }})
		if err != nil {
			t.Fatal(err)
		}
		var carried atomic.Int64
		read := make(chan struct{})
		go func() {
			defer close(read)
			buf := make([]byte, 32<<10)
			for {
				n, err := rs.Read(buf)
				carried.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		defer func() { rs.Abort(); <-read }()
		select {
		case <-heavy:
			return result{true, carried.Load()}
		case <-read:
		case <-time.After(30 * time.Second):
		}
		select {
		case <-heavy:
			return result{true, carried.Load()}
		case <-time.After(time.Second):
			return result{false, carried.Load()}
		}
	}
	t.Run("slow link, download", func(t *testing.T) {
		if got := download(t, "source"); !got.heavy {
			t.Fatalf("a download through a 2 Mbit/s link did not turn heavy in %d bytes", got.carried)
		}
	})
	t.Run("slow link, messages from the server", func(t *testing.T) {
		if got := download(t, "drip"); got.heavy {
			t.Fatalf("a stream of small messages from the server turned heavy after %d bytes", got.carried)
		}
	})
	t.Run("slow link, messages", func(t *testing.T) {
		// 1 KiB every 10 ms: 0.8 Mbit/s, well within the link, 600 KiB.
		if got := run(t, sess, 1<<10, 10*time.Millisecond, 600<<10); got.heavy {
			t.Fatalf("a stream of small messages turned heavy after %d bytes", got.carried)
		}
	})
}

// A stream moved to another class's session goes home when that session
// is lost and its class has none up for homeAfter: it resumes on the session of the
// class it opened on, every byte echoed once, and is watched again for
// turning heavy (to move once another session is up).
func TestMovedStreamGoesHome(t *testing.T) {
	r := newRig(t, time.Minute)
	cl := r.newClient("edge")
	sess1 := cl.session(t)
	var heavy atomic.Int32
	app, rs := cl.openPiped(t, sess1, Options{Window: time.Minute, Class: "first", OnHeavy: func(*Stream) { heavy.Add(1) }})
	cl.table.SessionUp(sess1, "first")
	echo := startEcho(t, app, 16<<20)
	second := startRelay(t, r.srvLn.Addr().String())
	t.Cleanup(second.close)
	sess2 := cl.serveExtra(t, second.addr(), "second")

	echo.waitFor(t, 1<<20)
	waitUntil(t, "the stream to turn heavy on its first session", func() bool { return heavy.Load() == 1 })
	if err := rs.Move(sess2, "second"); err != nil {
		t.Fatalf("move: %v", err)
	}
	echo.waitFor(t, 2<<20)
	second.cut()
	waitUntil(t, "the second session to end", sess2.Closed)
	cl.table.SessionDown(sess2, "second") // as the agent's keeper does
	echo.goOn()
	waitUntil(t, "the stream home on the first session", func() bool {
		return rs.Class() == "first" && sess1.NumStreams() == 1 && cl.table.Stats().Suspended == 0
	})
	waitUntil(t, "the stream watched again, and heavy again", func() bool { return heavy.Load() == 2 })
	echo.finish(t)
	if err := r.pipeErrors(); err != nil {
		t.Fatal(err)
	}
}

// The peer answers a stream's open before it holds the stream for
// resumes (its handler can be descheduled between the two on a busy
// host). A move in that gap would reach the peer on another connection,
// find nothing there and cut the stream: it must wait until the peer has
// shown it holds the stream (a delivery notice). Then it moves, and every
// byte comes back once.
func TestNoMoveBeforeThePeerHoldsIt(t *testing.T) {
	r := newRig(t, time.Minute)
	release := make(chan struct{})
	hold := func() { <-release }
	r.beforeAccept.Store(&hold)
	cl := r.newClient("edge")
	first := cl.session(t)
	cl.table.SessionUp(first, "first")
	relay := startRelay(t, r.srvLn.Addr().String())
	t.Cleanup(relay.close)
	second := cl.serveExtra(t, relay.addr(), "second")

	app, rs := cl.openPiped(t, first, Options{Window: time.Minute, Class: "first"})
	echo := startEcho(t, app, 8<<20)
	echo.goOn()
	waitUntil(t, "the open answered", rs.carrierAnswered)
	if err := rs.Move(second, "second"); !errors.Is(err, ErrNotMoved) || rs.Ended() {
		t.Fatalf("a move before the peer held the stream: %v (stream ended: %v), want ErrNotMoved and the stream carrying on", err, rs.Ended())
	}
	if got := rs.Class(); got != "first" {
		t.Fatalf("class after the move not made %q, want first", got)
	}
	close(release)
	waitHeld(t, rs)
	if err := rs.Move(second, "second"); err != nil {
		t.Fatalf("a move once the peer held the stream: %v", err)
	}
	echo.finish(t)
	waitUntil(t, "the server to count the move", func() bool { return r.serverTable().Stats().Moved == 1 })
	if st := r.serverTable().Stats(); st.Refused != 0 || st.Moved != 1 {
		t.Errorf("the server refused %d resumes and counted %d moves, want 0 and 1", st.Refused, st.Moved)
	}
	if err := r.pipeErrors(); err != nil {
		t.Fatal(err)
	}
}

// waitHeld waits until the peer has shown it holds rs (a delivery notice),
// after which rs may move.
func waitHeld(t *testing.T, rs *Stream) {
	t.Helper()
	waitUntil(t, "the peer to hold the stream (a delivery notice)", func() bool {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		return rs.peerHoldsLocked()
	})
}

// carrierAnswered says whether the peer has taken the stream's open.
func (s *Stream) carrierAnswered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answered || s.carrier != nil && s.carrier.Answered()
}
