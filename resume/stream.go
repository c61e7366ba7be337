// Package resume keeps tunnelled TCP connections open across the loss of
// the tunnel connection. A Stream owns nothing but its state: the local
// socket stays with forward's pipe, and the yamux stream that carries it
// (the carrier, a *mux.Stream) is disposable. When the carrier's session
// is lost the Stream is suspended: reads wait, writes go on into the
// replay buffer until it is full (then they wait, and the pipe stops
// reading the local socket: TCP backpressure, never loss). When a new
// session to the same peer comes up, the opener moves the stream there
// (mux's Resume), the two sides tell each other how much they have
// delivered, resend the rest, and carry on.
//
// Sequence numbers and acknowledgements are ours, above yamux: a byte is
// delivered once Read has returned it to the pipe (which writes it to the
// local socket or fails the whole stream), the end of data (FIN) counts as
// one more, and each side tells the other what it has delivered on the
// session's control stream, so the sender can drop it from the replay
// buffer. Delivery notices never wait behind the stream's own data.
package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/tunnelworks/tunnel/mux"
)

// ErrExpired ends a stream that stayed suspended for its whole resume
// window. The pipe then resets the local connection: the application
// sees a failure, never a clean end of data.
var ErrExpired = errors.New("tunnel lost and not back within the stream's resume window")

// ErrPeerLost ends a suspended stream that the peer can no longer resume:
// it refused the resume, or came back as a new instance without its
// streams (a restart that was not a handover).
var ErrPeerLost = errors.New("the peer no longer holds the stream")

var errAbortedHere = fmt.Errorf("stream reset here: %w", net.ErrClosed)

// Stream is one resumable tunnelled connection, as forward's pipe sees it
// (a net.Conn with CloseWrite and Abort).
type Stream struct {
	t       *Table
	token   mux.Token
	opener  bool // we opened it: we move it to new sessions
	peerKey string
	peer    string // the peer's name, for logs
	inst    string // the peer's instance when the stream opened
	class   string
	// home is the class it opened on: a stream moved to another (Move)
	// resumes there while its own has no session up.
	home    string
	service string
	source  string // the opener's local application, sent again in a new open
	window  time.Duration
	// maxReplay bounds the replay buffer: bytes sent that the peer has not
	// delivered. A write that would go beyond it waits.
	maxReplay int
	budget    *semaphore.Weighted // the peer's, shared by its streams
	ctx       context.Context     // cancelled when the stream ends: budget waits stop
	cancel    context.CancelFunc
	local     net.Addr
	remote    net.Addr

	// rmu serialises moves: one resume at a time.
	rmu sync.Mutex
	// wmu orders writes to the carrier: the pipe's writes and a resume's
	// resend. Taken before mu, never while holding it.
	wmu sync.Mutex
	// pending is flush's list of the chunks to write, its array reused
	// (under wmu): a message written without an allocation.
	pending [][]byte

	mu      sync.Mutex
	cond    sync.Cond
	carrier *mux.Stream // nil while suspended
	gen     uint64      // changes with every detach and attach
	err     error       // why it ended; nil while it lives
	// answered: the peer has accepted the stream (see mux's Answered).
	// Until then a lost stream is opened again, not resumed.
	answered bool
	// peerHolds: the peer has shown that its resume table holds the
	// stream (a heavy notice, a resume it served). A delivery notice
	// (acked > 0) shows it too: see peerHoldsLocked.
	peerHolds bool
	// openingOn: the session our first open of it is on its way to, until
	// it is attached (see moveOpened).
	openingOn *mux.Session
	done      bool        // ended: out of the table, budget returned
	expiry    *time.Timer // while suspended (or closing): the end of the window
	since     time.Time   // suspended since
	order     uint64      // when the table made it, for the bound's oldest first

	// Our direction (sequence numbers count data bytes, then one for FIN).
	replay     replayBuffer
	acked      uint64 // the peer has delivered [0, acked)
	sent       uint64 // data bytes written by the pipe
	written    uint64 // data bytes given to the current carrier
	flushed    uint64 // of which its Write has returned (see drop)
	finSent    bool   // the pipe half-closed
	finWritten bool   // and the current carrier has the FIN
	closing    bool   // Close was called: ends once the peer has everything

	held   int64      // budget bytes this stream holds
	frozen bool       // handed over to the successor (see Freeze)
	local2 *localConn // its local connection, when given to Local

	// The peer's direction.
	delivered    uint64 // bytes Read returned, plus one for the FIN
	finDelivered bool
	notified     uint64      // what we last told the peer
	ackTimer     *time.Timer // tells the peer the rest, a moment later
	ackArmed     bool
	ackNow       bool // armed to fire at once (a notice is due)
	// Direct delivery (see SetDeliver): the carrier it is set on, the
	// pipe's function and the generation it was set for; deliverHook is
	// s.deliverDirect, bound once (an idle stream sits with it set).
	deliverOn   *mux.Stream
	deliverTo   func(p []byte) int
	deliverGen  uint64
	deliverHook func(p []byte) int

	// prev is the carrier a move let go while its session lives on (a
	// Move between lanes, or the peer's): freed on both sides once the
	// stream is on its next carrier (see mux's Discard).
	prev *mux.Stream
	// onHeavy (Options.OnHeavy) until it is called; rate bytes carried
	// since rateSince, waited the time our writes waited for the path
	// meanwhile.
	onHeavy   func(*Stream)
	heavyHook func(*Stream) // Options.OnHeavy, to arm again at home
	rate      int
	waited    time.Duration
	rateSince time.Time
}

// countLocked counts n bytes carried either way and waited, time a write
// of ours waited for the path, and calls onHeavy once the stream turns
// heavy (see HeavyBytes).
func (s *Stream) countLocked(n int, waited time.Duration) {
	if s.onHeavy == nil {
		return
	}
	s.rate += n
	s.waited += waited
	if s.rate < BackloggedBytes {
		return
	}
	now := time.Now()
	elapsed := now.Sub(s.rateSince)
	fast := s.rate >= HeavyBytes && elapsed <= HeavyWithin
	backlogged := s.waited >= HeavyWithin/2 && 2*s.waited >= elapsed
	if !fast && !backlogged {
		if s.rate >= HeavyBytes || elapsed > 4*HeavyWithin {
			s.rate, s.waited, s.rateSince = 0, 0, now
		}
		return
	}
	if !s.answered && (s.carrier == nil || !s.carrier.Answered()) || !s.peerHoldsLocked() {
		// Not movable until the peer has taken the open and holds the
		// stream (see Move), and a fast transfer may carry a megabyte
		// before either is known here: ask again with its next bytes.
		return
	}
	f := s.onHeavy
	s.onHeavy = nil
	s.t.spawn(func() { f(s) })
}

// peerHeavy: the peer says (a heavy notice) that the stream, one we
// opened, keeps its writes toward us waiting for the path: a transfer we
// only read, which our own count cannot see (our writes never wait). As
// if it had turned heavy here.
func (s *Stream) peerHeavy() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peerHolds = true // only the stream in its table sends the notice
	if s.onHeavy == nil || s.err != nil || !s.answered && (s.carrier == nil || !s.carrier.Answered()) {
		return
	}
	f := s.onHeavy
	s.onHeavy = nil
	s.t.spawn(func() { f(s) })
}

// tellPeerHeavy is the heavy hook of a stream the peer opened, when the
// peer takes heavy notices: a transfer toward the peer that keeps our
// writes waiting is one the peer, which opened it and may move it, cannot
// see. Once per carrier.
func tellPeerHeavy(s *Stream) {
	s.mu.Lock()
	c := s.carrier
	s.mu.Unlock()
	if c != nil {
		_, _ = c.NotifyHeavy()
	}
}

// WatchHeavy (again) calls f once the stream, one we opened, turns heavy
// from now on (see Options.OnHeavy): for a caller that found nowhere to
// move it yet.
func (s *Stream) WatchHeavy(f func(*Stream)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opener && s.err == nil {
		s.onHeavy, s.rate, s.waited, s.rateSince = f, 0, 0, time.Now()
	}
}

// carriedLive says whether the stream's carrier is up on a live session.
func (s *Stream) carriedLive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.carrier != nil && !s.carrier.SessionClosed()
}

// seq is the sequence number after everything we have sent.
func (s *Stream) seq() uint64 {
	if s.finSent {
		return s.sent + 1
	}
	return s.sent
}

// Ended says whether the stream has ended (its state is gone).
func (s *Stream) Ended() bool { return s.ctx.Err() != nil }

// Token is the stream's name on the wire.
func (s *Stream) Token() mux.Token { return s.token }

// Service is the name of the service the stream was opened for.
func (s *Stream) Service() string { return s.service }

// Class is the class of session that carries it (Options.Class).
func (s *Stream) Class() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.class
}

func (s *Stream) Read(p []byte) (int, error) {
	n, err, _ := s.read(func(c *mux.Stream, gen uint64) (int, error, error) {
		n, err := c.Read(p)
		if n > 0 && !s.commitDelivered(gen, n) {
			return 0, nil, nil // moved meanwhile: the new carrier brings these bytes again
		}
		return n, err, nil
	})
	return n, err
}

// WriteBufferedTo is Read and a write of what was read to w in one: the
// bytes go to w straight from the carrier's receive buffer (mux's
// WriteBufferedTo), without a copy into a buffer of the caller's. rerr is
// what Read would have returned, werr w's error.
func (s *Stream) WriteBufferedTo(w io.Writer) (n int, rerr, werr error) {
	return s.read(func(c *mux.Stream, gen uint64) (int, error, error) {
		return c.WriteBufferedToIf(w, func(n int) bool { return s.commitDelivered(gen, n) })
	})
}

// commitDelivered counts n bytes read from the carrier of generation gen
// as delivered, and tells the peer when due; false if the stream moved
// to another carrier meanwhile (that one brings the bytes again: what we
// told the peer we had was fixed at the move).
func (s *Stream) commitDelivered(gen uint64, n int) bool {
	s.mu.Lock()
	if gen != s.gen {
		s.mu.Unlock()
		return false
	}
	s.delivered += uint64(n)
	s.countLocked(n, 0)
	send := s.noteDeliveredLocked()
	s.mu.Unlock()
	send()
	return true
}

// read runs f, a read from the current carrier that counts what it
// delivers with commitDelivered, until it delivers bytes or the stream
// ends; across a lost session it waits for the next carrier.
func (s *Stream) read(f func(c *mux.Stream, gen uint64) (n int, rerr, werr error)) (int, error, error) {
	for {
		s.mu.Lock()
		for s.carrier == nil && s.err == nil && !s.finDelivered && !s.frozen {
			s.cond.Wait()
		}
		if s.finDelivered {
			s.mu.Unlock()
			return 0, io.EOF, nil
		}
		if s.frozen {
			s.mu.Unlock()
			return 0, ErrHandedOver, nil
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return 0, err, nil
		}
		c, gen := s.carrier, s.gen
		s.mu.Unlock()

		n, err, werr := f(c, gen)
		if n > 0 || werr != nil {
			return n, nil, werr
		}
		if err == nil {
			continue
		}
		s.mu.Lock()
		if gen != s.gen {
			s.mu.Unlock()
			continue // moved meanwhile
		}
		if err == io.EOF {
			// The peer's FIN on a live session (mux reports a lost
			// session as ErrSessionLost, never EOF).
			s.delivered++
			s.finDelivered = true
			send := s.notifyNowLocked()
			complete := s.completeLocked()
			s.mu.Unlock()
			send()
			if complete {
				s.finish(nil)
			}
			return 0, io.EOF, nil
		}
		s.mu.Unlock()
		if s.lost(c, gen, err) {
			continue
		}
		return 0, s.fail(err), nil
	}
}

// WaitReadable waits until a Read would not block, holding no buffer (see
// forward's pipe). While suspended it returns at once: Read waits then.
func (s *Stream) WaitReadable() {
	s.mu.Lock()
	c := s.carrier
	ready := s.finDelivered || s.err != nil
	s.mu.Unlock()
	if c != nil && !ready {
		c.WaitReadable()
	}
}

// SetDeliver lets the current carrier's session hand small frames
// straight to f while the pipe waits with nothing in hand (see mux's
// SetDeliver). What f takes counts as delivered, exactly as what Read
// returns. It takes nothing once the stream has moved, been frozen for a
// handover, or ended; ok is false when it cannot be set (suspended,
// ended, or the carrier cannot). nil clears it, waiting for a call in
// progress: then the caller has every byte delivered so far.
func (s *Stream) SetDeliver(f func(p []byte) int) (ok bool) {
	s.mu.Lock()
	if f == nil {
		c := s.deliverOn
		s.deliverOn, s.deliverTo = nil, nil
		s.mu.Unlock()
		if c != nil {
			c.SetDeliver(nil)
		}
		return true
	}
	c := s.carrier
	if c == nil || s.deliverOn != nil || s.frozen || s.err != nil || s.finDelivered {
		s.mu.Unlock()
		return false
	}
	s.deliverOn, s.deliverTo, s.deliverGen = c, f, s.gen
	if s.deliverHook == nil {
		s.deliverHook = s.deliverDirect
	}
	hook := s.deliverHook
	s.mu.Unlock()
	if !c.SetDeliver(hook) {
		s.mu.Lock()
		s.deliverOn, s.deliverTo = nil, nil
		s.mu.Unlock()
		return false
	}
	return true
}

// DeliversLarge says whether the current carrier's session hands it
// large frames directly now (see mux's DeliversLarge); false while
// suspended.
func (s *Stream) DeliversLarge() bool {
	s.mu.Lock()
	c := s.carrier
	s.mu.Unlock()
	return c != nil && c.DeliversLarge()
}

// deliverDirect runs on the carrier session's receive goroutine: it must
// not block, so a notice due now goes out from the notice timer.
func (s *Stream) deliverDirect(p []byte) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deliverTo == nil || s.gen != s.deliverGen || s.frozen || s.err != nil || s.finDelivered {
		return 0 // cleared, moved, handed over or ended: as Read drops such bytes
	}
	n := s.deliverTo(p)
	if n > 0 {
		s.delivered += uint64(n)
		s.countLocked(n, 0)
		s.noteDeliveredSoonLocked()
	}
	return n
}

func (s *Stream) Write(p []byte) (int, error) { return s.write(p, false) }

// LendBuffer lends a buffer to read the next write's bytes into (the
// pipe from the local connection does): WriteLent then keeps it in the
// replay buffer as it is, where Write copies.
func (s *Stream) LendBuffer() []byte {
	b := getChunk(largeChunkPool())
	return b[:cap(b)]
}

// WriteLent writes b, a buffer from LendBuffer cut to the bytes read
// into it, and takes the buffer back (also when b is empty or the write
// fails): the caller must not touch it again.
func (s *Stream) WriteLent(b []byte) (int, error) {
	if len(b) == 0 {
		putChunk(b)
		return 0, nil
	}
	if len(b) <= keepLentAbove {
		// A short read into a large chunk: the replay buffer would hold
		// the whole chunk for these few bytes until the peer confirms
		// them. Copy them into a chunk their size instead.
		n, err := s.write(b, false)
		putChunk(b)
		return n, err
	}
	return s.write(b, true)
}

// write sends p; lent says p is a lent buffer the replay buffer keeps.
func (s *Stream) write(p []byte, lent bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	n := int64(len(p))
	budgeted := s.budget.Acquire(s.ctx, n) == nil
	s.mu.Lock()
	if !budgeted && !s.frozen {
		s.mu.Unlock()
		return 0, s.endErr()
	}
	if s.err == nil && !s.frozen && s.replay.len() > 0 && s.replay.len()+len(p) > s.maxReplay {
		// The path holds a replay buffer of ours: a wait for it.
		start := time.Now()
		for s.err == nil && !s.frozen && s.replay.len() > 0 && s.replay.len()+len(p) > s.maxReplay {
			s.cond.Wait()
		}
		s.countLocked(0, time.Since(start))
	}
	if s.err != nil || s.finSent {
		err := s.err
		if err == nil {
			err = errors.New("write after close")
		}
		s.mu.Unlock()
		if budgeted {
			s.budget.Release(n)
		}
		return 0, err
	}
	if budgeted {
		s.held += n
	}
	if lent {
		s.replay.keep(p)
	} else {
		s.replay.push(p)
	}
	s.sent += uint64(len(p))
	s.countLocked(len(p), 0)
	frozen := s.frozen
	s.mu.Unlock()
	if frozen {
		return len(p), nil // the successor sends it
	}
	if err := s.flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// releaseLocked returns freed bytes of budget, up to what the stream holds.
func (s *Stream) releaseLocked(freed int) {
	if k := min(int64(freed), s.held); k > 0 {
		s.held -= k
		s.budget.Release(k)
	}
}

// CloseWrite sends our end of data.
func (s *Stream) CloseWrite() error {
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return err
	}
	s.finSent = true
	frozen := s.frozen
	s.mu.Unlock()
	if frozen {
		return nil // the successor sends it
	}
	return s.flush()
}

// flush gives the current carrier what it lacks of our direction: the
// bytes past written, then the FIN. Suspended, it does nothing: the
// resume resends.
func (s *Stream) flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for {
		s.mu.Lock()
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return err
		}
		c, gen := s.carrier, s.gen
		if c == nil {
			s.mu.Unlock()
			return nil
		}
		chunks := s.replay.from(s.pending[:0], s.written, s.acked, s.sent)
		fin := s.finSent && !s.finWritten
		s.mu.Unlock()
		err := s.writeTo(c, gen, chunks, fin)
		clear(chunks) // no chunk kept past its drop
		s.pending = chunks[:0]
		if err != nil {
			if s.lost(c, gen, err) {
				continue
			}
			return s.fail(err)
		}
		return nil
	}
}

// writeTo writes chunks (and the FIN) to carrier c of generation gen,
// counting them as written. Called with wmu held.
func (s *Stream) writeTo(c *mux.Stream, gen uint64, chunks [][]byte, fin bool) error {
	for _, b := range chunks {
		// Counted before the write: the peer's notice for these bytes
		// can arrive before Write returns.
		s.mu.Lock()
		if s.gen == gen {
			s.written += uint64(len(b))
		}
		var start time.Time
		if s.onHeavy != nil {
			start = time.Now() // how long the path keeps us waiting
		}
		s.mu.Unlock()
		if _, err := c.Write(b); err != nil {
			return err
		}
		s.mu.Lock()
		if s.gen == gen {
			s.flushed += uint64(len(b))
		}
		if !start.IsZero() {
			s.countLocked(0, time.Since(start))
		}
		s.mu.Unlock()
	}
	if fin {
		s.mu.Lock()
		if s.gen == gen {
			s.finWritten = true
		}
		s.mu.Unlock()
		if err := c.CloseWrite(); err != nil {
			return err
		}
	}
	return nil
}

// lost decides what a carrier error means: the session under it ended, or
// the stream moved to another carrier (true: the stream is suspended, or
// already elsewhere, and the caller retries), or the stream itself failed.
func (s *Stream) lost(c *mux.Stream, gen uint64, err error) bool {
	if errors.Is(err, mux.ErrAborted) {
		return false // the peer reset it: its application failed
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen {
		return true // moved
	}
	if !errors.Is(err, mux.ErrSessionLost) && !c.SessionClosed() {
		return false
	}
	if s.err == nil {
		s.suspendLocked()
	}
	return true
}

// suspendLocked drops the current carrier and starts the resume window;
// a stream we opened moves at once if its peer has a newer session.
func (s *Stream) suspendLocked() {
	s.pauseLocked()
	s.t.suspended(s)
}

// pauseLocked drops the current carrier, if any, and starts the resume
// window.
func (s *Stream) pauseLocked() {
	if s.carrier == nil && s.expiry != nil && !s.closing {
		return // already suspended: its window runs
	}
	s.detachLocked()
	s.since = time.Now()
	gen := s.gen
	s.armExpiryLocked(s.window, func() {
		s.mu.Lock()
		still := s.gen == gen && s.err == nil
		s.mu.Unlock()
		if still {
			s.t.expired.Add(1)
			s.fail(ErrExpired)
		}
	})
}

// detachLocked stops using the current carrier, if any.
func (s *Stream) detachLocked() {
	if s.carrier != nil {
		s.answered = s.answered || s.carrier.Answered()
		s.carrier.Release()
		if !s.carrier.SessionClosed() {
			if s.prev != nil {
				s.prev.Discard() // an older one, from a move that failed
			}
			s.prev = s.carrier
		}
		s.carrier = nil
	}
	s.gen++
	s.written, s.finWritten = min(s.acked, s.sent), false
	s.flushed = s.written
	s.cond.Broadcast()
}

func (s *Stream) armExpiryLocked(d time.Duration, f func()) {
	if s.expiry != nil {
		s.expiry.Stop()
	}
	s.expiry = time.AfterFunc(d, f)
}

// waitsForSessionLocked: suspended, or ended here while the session that
// carried it is gone (it waits for a resume to confirm its end).
func (s *Stream) waitsForSessionLocked() bool {
	return s.err == nil && (s.carrier == nil || (s.closing && s.carrier.SessionClosed()))
}

// idle says that no bytes can move on the stream now: it waits for a new
// session (its pipe, if any, waits with it), or it ended here and waits
// for the peer to confirm it.
func (s *Stream) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err == nil && !s.frozen && (s.carrier == nil || s.closing)
}

// Suspended says whether the stream waits for a new session, and since when.
func (s *Stream) Suspended() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.carrier == nil && s.err == nil, s.since
}

// acknowledge is the peer's delivery notice: it has delivered [0, n).
func (s *Stream) acknowledge(n uint64) {
	s.mu.Lock()
	if s.err != nil || n <= s.acked || n > s.written+boolN(s.finWritten) {
		// Old, or beyond what it was given (a confused peer: ignored).
		s.mu.Unlock()
		return
	}
	s.ackLocked(n)
	complete := s.closing && s.completeLocked()
	s.mu.Unlock()
	if complete {
		// Not here: this runs on the carrier's receive loop, and the
		// end closes the carrier (a write).
		s.t.spawn(func() { s.finish(nil) })
	}
}

// recyclableLocked is how many bytes from the front of the replay buffer
// no write is reading: only their chunks go back to the pool. A peer that
// confirms bytes still being written must not make us send another
// stream's data from a recycled chunk. (Writes to carriers take turns
// under wmu, so none but the current one's can be in progress.)
func (s *Stream) recyclableLocked() int {
	if s.flushed <= s.acked {
		return 0
	}
	return int(s.flushed - s.acked)
}

// ackLocked drops [acked, n) from the replay buffer.
func (s *Stream) ackLocked(n uint64) {
	if data := min(n, s.sent); data > s.acked {
		s.releaseLocked(s.replay.drop(int(data-s.acked), s.recyclableLocked()))
	}
	s.acked = n
	s.cond.Broadcast()
}

func boolN(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// completeLocked: both ends of data crossed and were delivered.
func (s *Stream) completeLocked() bool {
	return s.finSent && s.acked == s.sent+1 && s.finDelivered
}

// Delivery notices: every notifyEvery bytes at once, the rest after
// notifyDelay (a ping-pong needs no notice per message; the replay buffer
// of an idle stream empties a moment later).
const notifyDelay = 20 * time.Millisecond

// maxNotifyEvery: a notice at least every MiB. Our peer's replay cap may
// be smaller than ours (an agent from before lone windows had 4 MiB for
// bulk): it must hear from us before it fills. Fewer notices bought
// nothing measurable (bench/README.md, "seventeenth part").
const maxNotifyEvery = 1 << 20

func (s *Stream) notifyEvery() uint64 { return uint64(max(min(s.maxReplay/4, maxNotifyEvery), 4096)) }

// noteDeliveredLocked returns what to call, without the lock, to tell
// the peer what we delivered (a no-op when not yet due).
func (s *Stream) noteDeliveredLocked() func() {
	if s.delivered-s.notified >= s.notifyEvery() {
		return s.notifyNowLocked()
	}
	if !s.ackArmed {
		s.ackArmed = true
		if s.ackTimer == nil {
			s.ackTimer = time.AfterFunc(notifyDelay, s.notifyLater)
		} else {
			s.ackTimer.Reset(notifyDelay)
		}
	}
	return func() {}
}

// noteDeliveredSoonLocked is noteDeliveredLocked for a caller that must
// not block: a notice due now is sent by the timer at once.
func (s *Stream) noteDeliveredSoonLocked() {
	due := s.delivered-s.notified >= s.notifyEvery()
	if s.ackArmed && (!due || s.ackNow) {
		return // set already; resetting a timer due now wakes the poller again
	}
	s.ackArmed, s.ackNow = true, due
	delay := notifyDelay
	if due {
		delay = 0
	}
	if s.ackTimer == nil {
		s.ackTimer = time.AfterFunc(delay, s.notifyLater)
	} else {
		s.ackTimer.Reset(delay)
	}
}

func (s *Stream) notifyLater() {
	s.mu.Lock()
	s.ackArmed, s.ackNow = false, false
	send := s.notifyNowLocked()
	s.mu.Unlock()
	send()
}

func (s *Stream) notifyNowLocked() func() {
	c, n := s.carrier, s.delivered
	if c == nil || n == s.notified || s.err != nil {
		return func() {}
	}
	s.notified = n
	return func() { _ = c.SendDelivered(n) } // lost with its session: the resume says it again
}

// fail ends the stream with err (the first cause wins) and returns the
// cause.
func (s *Stream) fail(err error) error {
	s.finish(err)
	return s.endErr()
}

func (s *Stream) endErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		return errAbortedHere
	}
	return s.err
}

// finish ends the stream once: out of the table, its budget returned,
// every waiter woken. err nil is a clean end.
func (s *Stream) finish(err error) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return
	}
	s.done = true
	clean := err == nil
	if clean {
		err = net.ErrClosed // calls after a clean end
	}
	s.err = err
	if s.expiry != nil {
		s.expiry.Stop()
	}
	if s.ackTimer != nil {
		s.ackTimer.Stop()
	}
	s.releaseLocked(s.replay.drop(s.replay.len(), s.recyclableLocked()))
	c := s.carrier
	if clean {
		s.carrier = nil
	}
	prev := s.prev
	s.prev = nil
	s.cond.Broadcast()
	s.mu.Unlock()
	if prev != nil {
		// A move that never completed: the peer may still hold its end
		// there, and the stream ends here either way.
		prev.Discard()
	}
	if c != nil {
		c.OnDelivered(nil)
		c.OnPeerHeavy(nil)
		if clean {
			_ = c.Close() // both FINs crossed: yamux frees it
		}
	}
	s.cancel()
	s.t.remove(s)
}

// Close ends our use of the stream. After a clean end in both directions
// the state stays until the peer has delivered our FIN (so a cut right
// now still ends cleanly after a resume), at most a resume window.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.done || s.frozen {
		s.mu.Unlock()
		return nil
	}
	if !s.finSent || !s.finDelivered {
		// Not a clean end: Pipe aborts first in that case; be sure.
		s.mu.Unlock()
		return s.Abort()
	}
	s.closing = true
	complete := s.completeLocked()
	if !complete && s.carrier != nil {
		s.armExpiryLocked(s.window, func() { s.finish(ErrExpired) })
	}
	s.mu.Unlock()
	if complete {
		s.finish(nil)
	}
	return nil
}

// Abort resets the stream: the peer's side fails too (at once if the
// carrier is up, at its resume otherwise).
func (s *Stream) Abort() error {
	s.mu.Lock()
	if s.frozen {
		s.mu.Unlock()
		return nil
	}
	c := s.carrier
	s.carrier = nil
	s.mu.Unlock()
	s.finish(errAbortedHere)
	if c != nil {
		c.OnDelivered(nil)
		c.OnPeerHeavy(nil)
		return c.Abort()
	}
	return nil
}

func (s *Stream) LocalAddr() net.Addr  { return s.local }
func (s *Stream) RemoteAddr() net.Addr { return s.remote }

// Deadlines are not supported: the pipe uses none on the stream, and a
// deadline would have to outlive carriers.
func (s *Stream) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (s *Stream) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (s *Stream) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

// peerHoldsLocked says whether the peer has shown that it holds the
// stream for resumes. It answers an open before its resume table holds
// the stream, and a resume (a move) sent in between, on another
// connection, would find nothing there and cut the stream. A delivery
// notice, a heavy notice or a resume served come from the peer's table.
func (s *Stream) peerHoldsLocked() bool { return s.peerHolds || s.acked > 0 }

// moveTo puts the stream on carrier c, which the peer has answered: the
// peer has delivered peerDelivered of ours. It resends the rest of our
// direction, then lets the pipe's writes go on. Called with rmu held.
func (s *Stream) moveTo(c *mux.Stream, peerDelivered uint64) error {
	resend, err := s.switchTo(c, peerDelivered)
	if err != nil {
		return err
	}
	return resend()
}

// switchTo is moveTo but for the resend, which it returns, to be called
// next: until it returns the pipe's writes wait (wmu is held), and rmu
// need not be held for it.
func (s *Stream) switchTo(c *mux.Stream, peerDelivered uint64) (resend func() error, err error) {
	s.wmu.Lock()
	unlocked := false
	defer func() {
		if !unlocked {
			s.wmu.Unlock()
		}
	}()
	s.mu.Lock()
	if s.err != nil {
		// The stream ended here while the move was on its way, and the
		// peer, which answered it, now holds its end on c: tell it, or
		// it waits there for as long as the session lives.
		err := s.err
		s.mu.Unlock()
		if err == net.ErrClosed {
			_ = c.Close() // a clean end (finish): the peer's is clean too
		} else {
			_ = c.Abort()
		}
		return nil, err
	}
	if peerDelivered < s.acked || peerDelivered > s.seq() {
		s.mu.Unlock()
		_ = c.Abort()
		return nil, s.fail(fmt.Errorf("%w: the peer says it delivered %d bytes; we sent %d and it had confirmed %d", ErrPeerLost, peerDelivered, s.seq(), s.acked))
	}
	s.ackLocked(peerDelivered)
	s.peerHolds = true // it served the resume
	if s.expiry != nil && !s.closing {
		s.expiry.Stop()
		s.expiry = nil
	}
	if old := s.carrier; old != nil && old != c {
		// The first open's carrier, attached after detachForMove found
		// none (the move raced the open): the peer let its end go in the
		// move, so nothing more arrives on it. Let it go here too, or a
		// reader waiting on it would wait for ever.
		old.Release()
	}
	if s.prev != nil {
		// Both ends have let it go: the peer before it answered the move
		// (or we before we answered it).
		s.prev.Discard()
		s.prev = nil
	}
	s.carrier = c
	s.gen++
	gen := s.gen
	s.answered = s.answered || c.Answered()
	s.written = min(peerDelivered, s.sent)
	s.flushed = s.written
	s.finWritten = peerDelivered > s.sent
	c.OnDelivered(s.acknowledge)
	if s.opener {
		c.OnPeerHeavy(s.peerHeavy)
	} else if s.heavyHook != nil {
		// Told once per carrier: on its new lane the peer may want to
		// know again (a stream that went home).
		s.onHeavy, s.rate, s.waited, s.rateSince = s.heavyHook, 0, 0, time.Now()
	}
	chunks := s.replay.from(nil, s.written, s.acked, s.sent)
	fin := s.finSent
	resent := s.sent - s.written
	s.notified = s.delivered // the resume told the peer
	s.cond.Broadcast()       // the reader goes on with c
	s.mu.Unlock()

	unlocked = true
	return func() error {
		defer s.wmu.Unlock()
		s.t.replayed.Add(resent)
		if err := s.writeTo(c, gen, chunks, fin); err != nil {
			if s.lost(c, gen, err) {
				return nil // suspended again, or moved on: the next carrier resends
			}
			return s.fail(err)
		}
		return nil
	}, nil
}

// detachForMove stops using the current carrier and fixes what we have
// delivered, which goes to the peer in the move. Called with rmu held.
func (s *Stream) detachForMove() (delivered uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, s.err
	}
	if s.carrier != nil {
		s.pauseLocked()
	}
	return s.delivered, nil
}

// replayBuffer holds the bytes sent and not yet delivered by the peer,
// as the chunks the pipe wrote (copies; pooled).
type replayBuffer struct {
	chunks [][]byte
	head   int // bytes of chunks[0] already dropped
	size   int // bytes held
}

// chunkSizes are the pooled chunk sizes, smallest first: a chatty
// stream's messages (a BGP keepalive is 19 bytes) take a small chunk, so
// a thousand quiet streams each with a message unconfirmed hold little.
var chunkSizes = [...]int{512, 4 << 10, 64 << 10}

// keepLentAbove is the most bytes of a lent chunk copied into a smaller
// chunk rather than kept as they are (the middle chunk size).
const keepLentAbove = 4 << 10

// chunkPools hold arrays (*[512]byte, …), not slices: putting a
// pointer in a Pool does not allocate, putting a slice header does.
var chunkPools = [len(chunkSizes)]sync.Pool{
	{New: func() any { return new([512]byte) }},
	{New: func() any { return new([4 << 10]byte) }},
	{New: func() any { return new([64 << 10]byte) }},
}

// getChunk is an empty chunk from pool p.
func getChunk(p *sync.Pool) []byte {
	switch a := p.Get().(type) {
	case *[512]byte:
		return a[:0]
	case *[4 << 10]byte:
		return a[:0]
	default:
		return a.(*[64 << 10]byte)[:0]
	}
}

// putChunk gives b, a chunk of one of the pooled sizes, back to its pool.
func putChunk(b []byte) {
	switch cap(b) {
	case 512:
		chunkPools[0].Put((*[512]byte)(b[:512]))
	case 4 << 10:
		chunkPools[1].Put((*[4 << 10]byte)(b[:4<<10]))
	case 64 << 10:
		chunkPools[2].Put((*[64 << 10]byte)(b[:64<<10]))
	}
}

// chunkPool is the pool of the smallest chunks that hold n bytes (the
// largest, for more).
func chunkPool(n int) *sync.Pool {
	for i, size := range chunkSizes {
		if n <= size {
			return &chunkPools[i]
		}
	}
	return largeChunkPool()
}

func (r *replayBuffer) len() int { return r.size }

func (r *replayBuffer) push(p []byte) {
	for len(p) > 0 {
		b := getChunk(chunkPool(len(p)))
		n := min(len(p), cap(b))
		b = append(b, p[:n]...)
		r.chunks = append(r.chunks, b)
		r.size += n
		p = p[n:]
	}
}

// keep holds b, a chunk of the largest pool, as it is.
func (r *replayBuffer) keep(b []byte) {
	r.chunks = append(r.chunks, b)
	r.size += len(b)
}

// largeChunkPool is the pool of the largest chunks.
func largeChunkPool() *sync.Pool { return &chunkPools[len(chunkSizes)-1] }

// drop frees the first n bytes and returns how many it freed. Whole
// chunks within the first recyclable bytes go back to the pool.
func (r *replayBuffer) drop(n, recyclable int) int {
	n = min(n, r.size)
	left, whole := n, 0
	for left > 0 {
		b := r.chunks[whole]
		k := len(b) - r.head
		if k > left {
			r.head += left
			break
		}
		left -= k
		recyclable -= k
		r.head = 0
		whole++
		if recyclable >= 0 {
			putChunk(b)
		} // else a write may still read it: the GC takes it
	}
	// Shifted down, not resliced: a chatty stream keeps one small array
	// for its list of chunks instead of allocating one per message.
	kept := copy(r.chunks, r.chunks[whole:])
	clear(r.chunks[kept:])
	r.chunks = r.chunks[:kept]
	r.size -= n
	if kept == 0 && cap(r.chunks) > 64 {
		r.chunks = nil // let a long stream's array go
	}
	return n
}

// from returns views of the bytes from sequence number at on; the buffer
// starts at base and ends at end. The views stay valid until those bytes
// are dropped, which only a delivery notice for them can do.
func (r *replayBuffer) from(out [][]byte, at, base, end uint64) [][]byte {
	if at >= end {
		return out
	}
	skip := int(at - base)
	for i, b := range r.chunks {
		if i == 0 {
			b = b[r.head:]
		}
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		out = append(out, b[skip:])
		skip = 0
	}
	return out
}
