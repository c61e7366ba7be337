package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

// OpenError is the peer's refusal of a stream.
type OpenError struct {
	Service string
	Code    Code
	Msg     string
}

func (e *OpenError) Error() string {
	if e.Msg == "" {
		return fmt.Sprintf("peer refused stream to %q: %s", e.Service, e.Code)
	}
	return fmt.Sprintf("peer refused stream to %q: %s: %s", e.Service, e.Code, e.Msg)
}

// ErrAborted is returned by reads and writes on a stream that the peer
// reset (its local connection failed).
var ErrAborted = errors.New("stream reset by the peer")

// ErrSessionLost is returned by a stream read when the session ended under
// it: yamux reports that as a clean EOF, which would hide lost data.
var ErrSessionLost = errors.New("tunnel session lost")

// Stream is one tunnelled TCP connection. Close is yamux's half-close (FIN),
// so CloseWrite is the same call; reads continue until the peer's FIN.
type Stream struct {
	y          *yamux.Stream
	sess       *Session
	service    string
	awaitReply bool        // opener side: the first Read consumes the peer's answer
	aborted    atomic.Bool // by us or the peer
	byPeer     atomic.Bool
	closeOnce  sync.Once
	mu         sync.Mutex
	onAbort    func()
}

// Service is the name the stream was opened for.
func (st *Stream) Service() string { return st.service }

// Session is the session carrying the stream.
func (st *Stream) Session() *Session { return st.sess }

func (st *Stream) Read(p []byte) (int, error) {
	if st.aborted.Load() {
		return 0, ErrAborted
	}
	if st.awaitReply {
		code, msg, err := readReply(st.y)
		if err != nil {
			return 0, fmt.Errorf("waiting for the peer's answer: %w", st.readErr(err))
		}
		st.awaitReply = false
		_ = st.y.SetReadDeadline(time.Time{})
		if code != CodeOK {
			return 0, &OpenError{Service: st.service, Code: code, Msg: msg}
		}
	}
	n, err := st.y.Read(p)
	if err != nil {
		err = st.readErr(err)
	}
	return n, err
}

// WaitReadable blocks until a Read would not block (data, EOF or an error
// is pending) without holding a buffer: an idle stream's reader then holds
// no memory while it waits.
func (st *Stream) WaitReadable() {
	if st.awaitReply || st.aborted.Load() {
		return // Read has the reply to consume first, or an error to give
	}
	// yamux's Read with an empty buffer waits for data and consumes none.
	_, _ = st.y.Read(nil)
}

func (st *Stream) abortedByPeer() {
	st.byPeer.Store(true)
	st.aborted.Store(true)
	// Unblock a Read or Write in progress; they return ErrAborted.
	_ = st.y.SetDeadline(time.Unix(1, 0))
	// The user may be blocked elsewhere (reading its local connection):
	// tell it directly.
	st.mu.Lock()
	f := st.onAbort
	st.mu.Unlock()
	if f != nil {
		f()
	}
}

// OnAbort registers f to run (once, on the session's control goroutine)
// when the peer resets the stream; forward.Pipe uses it to reset the local
// connection even while nothing reads the stream. f must not block.
func (st *Stream) OnAbort(f func()) {
	st.mu.Lock()
	st.onAbort = f
	st.mu.Unlock()
	if st.byPeer.Load() {
		f()
	}
}

func (st *Stream) readErr(err error) error {
	if st.aborted.Load() {
		return ErrAborted
	}
	if err == io.EOF || errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamClosed) {
		// A real FIN and a dead session look the same from yamux: ask the session.
		if st.sess.y.IsClosed() {
			if r := st.sess.Err(); r != nil {
				return fmt.Errorf("%w: %w", ErrSessionLost, r)
			}
			return ErrSessionLost
		}
	}
	return err
}

func (st *Stream) Write(p []byte) (int, error) {
	n, err := st.y.Write(p)
	if err != nil {
		if st.aborted.Load() {
			return n, ErrAborted
		}
		err = st.sess.explain(err)
	}
	return n, err
}

// CloseWrite sends FIN: the peer reads EOF, and we can still read.
func (st *Stream) CloseWrite() error { return st.y.Close() }

// Close says we are done with the stream: FIN if not sent yet. yamux frees
// it once the peer has closed its side too.
func (st *Stream) Close() error {
	st.closeOnce.Do(func() { st.sess.untrack(st) })
	if st.aborted.Load() && !st.byPeer.Load() {
		return nil // Abort sends the FIN later, on purpose
	}
	return st.y.Close()
}

// Abort resets the stream: the peer's reads and writes on it fail with
// ErrAborted at once, so it resets its own local connection in turn rather
// than see a clean end of data.
//
// The FIN that frees the stream in yamux is sent only after abortFinDelay:
// the abort travels on the control stream, and a peer that read our FIN
// before acting on the abort would hand its application a clean EOF.
func (st *Stream) Abort() error {
	if st.byPeer.Load() || !st.aborted.CompareAndSwap(false, true) {
		return st.Close()
	}
	st.sess.sendAbort(st.y.StreamID())
	_ = st.y.SetDeadline(time.Unix(1, 0)) // our own blocked calls return now
	st.closeOnce.Do(func() { st.sess.untrack(st) })
	s := st.sess
	started := s.spawn(func() {
		t := time.NewTimer(abortFinDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.closed:
		}
		_ = st.y.Close()
	})
	if !started {
		_ = st.y.Close() // the session is closing anyway
	}
	return nil
}

// abortFinDelay is how long an aborted stream waits before its FIN; the
// abort ahead of it on the same connection only needs the peer's control
// goroutine to be scheduled.
const abortFinDelay = time.Second

func (st *Stream) LocalAddr() net.Addr                { return st.y.LocalAddr() }
func (st *Stream) RemoteAddr() net.Addr               { return st.y.RemoteAddr() }
func (st *Stream) SetDeadline(t time.Time) error      { return st.y.SetDeadline(t) }
func (st *Stream) SetReadDeadline(t time.Time) error  { return st.y.SetReadDeadline(t) }
func (st *Stream) SetWriteDeadline(t time.Time) error { return st.y.SetWriteDeadline(t) }
