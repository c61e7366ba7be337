package resume

import (
	crand "crypto/rand"
	"errors"
	"io"
	"net"
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
