package mux

import (
	"encoding/binary"
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

// errResetHere is what a stream's own calls return after we reset it.
var errResetHere = fmt.Errorf("stream reset here: %w", net.ErrClosed)

// Stream is one tunnelled TCP connection. Close is yamux's half-close (FIN),
// so CloseWrite is the same call; reads continue until the peer's FIN.
type Stream struct {
	y          *yamux.Stream
	sess       *Session
	service    string
	awaitReply bool        // opener side: the first Read consumes the peer's answer
	answered   atomic.Bool // the peer accepted it (its answer was ok)
	aborted    atomic.Bool // we reset it
	closeOnce  sync.Once
	resumable  bool  // opened resumable (or moved here): named token
	token      Token // its name, when resumable
}

// Answered says whether the peer has accepted the stream: always on the
// accepting side; on the opening side once the first Read has read the
// peer's ok. A resumable stream lost before then may never have reached
// the peer, and is opened again rather than resumed.
func (st *Stream) Answered() bool { return st.answered.Load() }

// Token is the name of a resumable stream; ok is false for a plain one.
func (st *Stream) Token() (token Token, ok bool) { return st.token, st.resumable }

// AcceptResume answers the peer's move of a resumable stream here (see
// Config.Resume) with how many of its bytes we have delivered.
func (st *Stream) AcceptResume(delivered uint64) error {
	_ = st.y.SetWriteDeadline(time.Now().Add(st.sess.cfg.OpenTimeout))
	defer st.y.SetWriteDeadline(time.Time{})
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], delivered)
	if _, err := st.y.Write(encodeReply(CodeOK, string(n[:]))); err != nil {
		return fmt.Errorf("answer resume: %w", st.sess.explain(err))
	}
	return nil
}

// SendDelivered tells the peer, on the control stream, that we have
// delivered n bytes of this resumable stream to our application, so it
// can drop them from its replay buffer.
func (st *Stream) SendDelivered(n uint64) error {
	return st.sess.sendDelivered(st.y.StreamID(), n)
}

// OnDelivered sets the handler of the peer's delivery notices for this
// stream (nil removes it). It runs on the session's receive loop (or its
// control reader): it must not block, nor write to the session.
func (st *Stream) OnDelivered(f func(delivered uint64)) {
	st.sess.setOnDelivered(st.y.StreamID(), f)
}

// SessionClosed says whether the session carrying the stream has ended
// (or is ending): then the stream's errors say nothing about the peer's
// side of it.
func (st *Stream) SessionClosed() bool { return st.sess.y.IsClosed() }

// OnPeerHeavy sets the handler of the peer's heavy notices for this
// stream, one we opened (nil removes it). It runs on the session's
// receive loop (or its control reader): it must not block, nor write to
// the session.
func (st *Stream) OnPeerHeavy(f func()) {
	st.sess.setOnPeerHeavy(st.y.StreamID(), f)
}

// NotifyHeavy tells the peer, which opened this resumable stream, that
// the stream's bytes toward it keep our writes waiting for the path. sent
// is false if the peer does not take such notices.
func (st *Stream) NotifyHeavy() (sent bool, err error) {
	return st.sess.sendHeavy(st.y.StreamID())
}

// Release stops using a resumable stream that moved to another session,
// without a word to the peer: a reset or a FIN here could reach the peer
// before the move and end its side. Calls blocked on it return at once;
// yamux frees it with its session.
func (st *Stream) Release() {
	st.aborted.Store(true)
	st.closeOnce.Do(func() { st.sess.untrack(st) })
	st.OnDelivered(nil)
	st.OnPeerHeavy(nil)
	_ = st.y.SetDeadline(time.Unix(1, 0))
}

// Discard frees a resumable stream that moved to another session while
// its own session lives on: Release, then a reset that frees it in both
// yamuxes. Only once the peer has answered the move (it let its end go
// then): a reset that arrived before the move would end the peer's side.
func (st *Stream) Discard() {
	st.Release()
	_ = resetStream(st.y)
}

// Service is the name the stream was opened for.
func (st *Stream) Service() string { return st.service }

// Session is the session carrying the stream.
func (st *Stream) Session() *Session { return st.sess }

func (st *Stream) Read(p []byte) (int, error) {
	if err := st.takeReply(); err != nil {
		return 0, err
	}
	n, err := st.y.Read(p)
	if err != nil {
		err = st.readErr(err)
	}
	return n, err
}

// WriteBufferedTo is Read and a write of what was read to w in one: it
// waits as Read does, then writes what the stream received (at most 64
// KiB) to w straight from yamux's receive buffer, without a copy into a
// buffer of the caller's. rerr is what Read would have returned, werr
// w's error.
func (st *Stream) WriteBufferedTo(w io.Writer) (n int, rerr, werr error) {
	return st.WriteBufferedToIf(w, nil)
}

// WriteBufferedToIf is WriteBufferedTo with commit, called with the byte
// count before any is written; returning false drops them (then 0 and no
// error).
func (st *Stream) WriteBufferedToIf(w io.Writer, commit func(n int) bool) (n int, rerr, werr error) {
	if err := st.takeReply(); err != nil {
		return 0, err, nil
	}
	n, rerr, werr = writeBufferedTo(st.y, w, commit)
	if rerr != nil {
		rerr = st.readErr(rerr)
	}
	return n, rerr, werr
}

// takeReply reads the peer's answer to our open, once, before the first
// byte of data.
func (st *Stream) takeReply() error {
	if !st.awaitReply {
		return nil
	}
	code, msg, err := readReply(st.y)
	if err != nil {
		err = st.readErr(err)
		if errors.Is(err, ErrAborted) {
			// yamux resets a stream it will not hold (the peer's
			// stream limit) before a word of answer.
			return fmt.Errorf("the peer reset the stream before answering (at its stream limit, or its target failed at once): %w", err)
		}
		return fmt.Errorf("waiting for the peer's answer: %w", err)
	}
	st.awaitReply = false
	_ = st.y.SetReadDeadline(time.Time{})
	if code != CodeOK {
		return &OpenError{Service: st.service, Code: code, Msg: msg}
	}
	st.answered.Store(true)
	return nil
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

// SetDeliver lets the session's receive goroutine hand small frames
// straight to f while the reader waits with nothing in hand (yamux's
// SetDeliver: f takes what it can without blocking, the rest is read as
// usual). nil clears it, waiting for a call in progress. ok is false
// when the stream cannot: the first Read has the peer's answer to
// consume, or the stream was reset here.
func (st *Stream) SetDeliver(f func(p []byte) int) (ok bool) {
	if f == nil {
		return setDeliver(st.y, nil)
	}
	if st.awaitReply || st.aborted.Load() {
		return false
	}
	return setDeliver(st.y, f)
}

// DeliversLarge says whether the session hands the stream's large frames
// too to a function set with SetDeliver now (it is the session's only bulk
// receiver, or no stream of the session exchanges messages), so a reader
// holding a large buffer gains from setting one.
func (st *Stream) DeliversLarge() bool { return deliversLarge(st.y) }

func (st *Stream) readErr(err error) error {
	if st.aborted.Load() {
		return errResetHere
	}
	if errors.Is(err, yamux.ErrConnectionReset) {
		return ErrAborted
	}
	// Our yamux reads io.EOF only after the peer's FIN, even once the
	// session is gone (shutdownClose, PATCHED.md): a stream whose FIN came
	// just before the session closed ended cleanly. A drain closes its
	// session right after the last stream's FIN.
	if errors.Is(err, yamux.ErrSessionShutdown) || errors.Is(err, yamux.ErrStreamClosed) {
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
		switch {
		case st.aborted.Load():
			err = errResetHere
		case errors.Is(err, yamux.ErrConnectionReset):
			err = ErrAborted
		default:
			err = st.sess.explain(err)
		}
	}
	return n, err
}

// CloseWrite sends FIN: the peer reads EOF, and we can still read.
func (st *Stream) CloseWrite() error { return st.y.Close() }

// Close says we are done with the stream: FIN if not sent yet. yamux frees
// it once the peer has closed its side too.
func (st *Stream) Close() error {
	var err error
	if !st.aborted.Load() {
		err = st.y.Close()
	}
	// Untracked after its FIN is written: Drain counts on that order.
	st.closeOnce.Do(func() { st.sess.untrack(st) })
	return err
}

// Abort resets the stream: the reset travels in order behind the data we
// already wrote on it (never on another stream that could overtake it), so
// the peer's reads and writes fail with ErrAborted and it resets its own
// local connection in turn rather than see a clean end of data. yamux
// frees the stream here at once.
func (st *Stream) Abort() error {
	st.aborted.Store(true)
	st.closeOnce.Do(func() { st.sess.untrack(st) })
	return resetStream(st.y)
}

func (st *Stream) LocalAddr() net.Addr                { return st.y.LocalAddr() }
func (st *Stream) RemoteAddr() net.Addr               { return st.y.RemoteAddr() }
func (st *Stream) SetDeadline(t time.Time) error      { return st.y.SetDeadline(t) }
func (st *Stream) SetReadDeadline(t time.Time) error  { return st.y.SetReadDeadline(t) }
func (st *Stream) SetWriteDeadline(t time.Time) error { return st.y.SetWriteDeadline(t) }
