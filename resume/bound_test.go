package resume

import (
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/mux"
)

// TestPeerStreamsBounded: a peer certificate holds at most
// Config.MaxPeerStreams streams. At the bound the oldest idle one (no
// pipe uses it: here, streams registered and never carried, as a
// suspended stream is) is reset to make room and counted; with every
// stream in use, the new one is refused.
func TestPeerStreamsBounded(t *testing.T) {
	r := newRig(t, time.Hour)
	const bound = 3

	t.Run("the oldest idle stream makes room", func(t *testing.T) {
		cl := r.newClient("client-a")
		cl.table.cfg.MaxPeerStreams = func() int { return bound }
		sess := cl.session(t)
		addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
		idle := func() *Stream {
			t.Helper()
			var token mux.Token
			_, _ = crand.Read(token[:])
			s, err := cl.table.newStream(token, true, sess, "echo", "", addr, addr, Options{Window: time.Hour})
			if err != nil {
				t.Fatalf("stream within the bound: %v", err)
			}
			t.Cleanup(func() { _ = s.Abort() })
			return s
		}
		var held []*Stream
		for range bound {
			held = append(held, idle())
		}
		if st := cl.table.Stats(); st.Streams != bound || st.Suspended != bound || st.Evicted != 0 {
			t.Fatalf("at the bound: %+v", st)
		}
		idle()
		if !held[0].Ended() {
			t.Fatal("the oldest idle stream was not reset to make room")
		}
		for _, s := range held[1:] {
			if s.Ended() {
				t.Fatal("a younger stream was reset")
			}
		}
		if st := cl.table.Stats(); st.Streams != bound || st.Evicted != 1 {
			t.Fatalf("after one over the bound: %+v, want %d streams, 1 evicted", st, bound)
		}
	})

	t.Run("streams in use are never reset to make room", func(t *testing.T) {
		cl := r.newClient("client-b")
		cl.table.cfg.MaxPeerStreams = func() int { return bound }
		var apps []net.Conn
		for range bound {
			apps = append(apps, cl.dialEcho(t))
		}
		sess := cl.session(t)
		addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
		if _, err := cl.table.Open(cl.ctx, sess, "echo", "", addr, addr, Options{Window: time.Hour}); !errors.Is(err, ErrTooManyStreams) {
			t.Fatalf("a stream over the bound with all in use: %v, want ErrTooManyStreams", err)
		}
		for i, app := range apps {
			msg := []byte{'a' + byte(i)}
			if _, err := app.Write(msg); err != nil {
				t.Fatal(err)
			}
			back := make([]byte, 1)
			_ = app.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(app, back); err != nil || back[0] != msg[0] {
				t.Fatalf("stream %d after the refusal: %q, %v", i, back, err)
			}
		}
		if st := cl.table.Stats(); st.Streams != bound || st.Evicted != 0 {
			t.Fatalf("%+v, want %d streams, none evicted", st, bound)
		}
	})
}

// TestPeerStreamsBoundedConcurrentOpens: opens that reach the bound at
// once each reset an idle stream of their own: the count of evictions is
// the streams reset, and none is refused while idle ones remain. (Each
// picked the oldest idle stream under the table's lock and reset it
// after: two opens at once picked the same one, both counted it, and the
// second reset a further one, or gave up after its rounds.)
func TestPeerStreamsBoundedConcurrentOpens(t *testing.T) {
	r := newRig(t, time.Hour)
	const bound, opens = 8, 8
	for trial := range 50 {
		cl := r.newClient(fmt.Sprintf("client-%d", trial))
		cl.table.cfg.MaxPeerStreams = func() int { return bound }
		open := newStreamOn(t, cl, cl.session(t))
		var held []*Stream
		for range bound {
			s, err := open()
			if err != nil {
				t.Fatalf("stream within the bound: %v", err)
			}
			held = append(held, s)
		}
		var wg sync.WaitGroup
		errs := make(chan error, opens)
		for range opens {
			wg.Go(func() {
				if _, err := open(); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("trial %d: an open at the bound with idle streams to reset: %v", trial, err)
		}
		reset := 0
		for _, s := range held {
			if s.Ended() {
				reset++
			}
		}
		if st := cl.table.Stats(); st.Streams != bound || int(st.Evicted) != reset || reset != opens {
			t.Fatalf("trial %d: %d opens at once at the bound: %+v, %d streams reset; want %d streams, %d evicted and reset", trial, opens, st, reset, bound, opens)
		}
	}
}

// TestPeerStreamsBoundLockOrder: an open at the bound looks for an idle
// stream without holding the table's lock while it takes a stream's: a
// stream's own paths take its lock, then the table's (a lost session
// moving the stream, Move), so the other order deadlocks.
func TestPeerStreamsBoundLockOrder(t *testing.T) {
	r := newRig(t, time.Hour)
	cl := r.newClient("client-a")
	cl.table.cfg.MaxPeerStreams = func() int { return 1 }
	open := newStreamOn(t, cl, cl.session(t))
	idle, err := open()
	if err != nil {
		t.Fatal(err)
	}
	// The idle stream's lock held, as its own path holds it ...
	idle.mu.Lock()
	opened := make(chan error, 1)
	go func() {
		_, err := open()
		opened <- err
	}()
	// ... that path can still take the table's lock while the open at
	// the bound waits for the stream's.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(goroutines(), "resume.(*Stream).idle("); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			idle.mu.Unlock()
			t.Fatal("the open at the bound never looked at the idle stream")
		}
	}
	got := make(chan struct{})
	go func() {
		cl.table.Holds(idle.token)
		close(got)
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Error("the table's lock held by an open at the bound waiting for a stream's lock: deadlock")
	}
	idle.mu.Unlock()
	<-got
	if err := <-opened; err != nil {
		t.Fatalf("the open at the bound: %v", err)
	}
	if !idle.Ended() {
		t.Fatal("the idle stream was not reset to make room")
	}
}

// goroutines is the stacks of every goroutine.
func goroutines() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// newStreamOn returns a function that adds a resumable stream of cl's to
// its table on sess, as an open does (no target behind it), each reset
// when the test ends.
func newStreamOn(t *testing.T, cl *client, sess *mux.Session) func() (*Stream, error) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	return func() (*Stream, error) {
		var token mux.Token
		_, _ = crand.Read(token[:])
		s, err := cl.table.newStream(token, true, sess, "echo", "", addr, addr, Options{Window: time.Hour})
		if err == nil {
			t.Cleanup(func() { _ = s.Abort() })
		}
		return s, err
	}
}
