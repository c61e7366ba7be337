package yamux

// Patched for tunnelworks (see PATCHED.md, patch 9): direct delivery. A
// reader parked on an idle stream can let the session's receive goroutine
// hand it small frames itself, instead of buffering them and waking the
// reader's goroutine: on a round trip that saves a goroutine hand-off (and
// often the wake-up of an idle thread) at each end. Nothing changes on the
// wire.

import (
	"bytes"
	"io"
)

// maxDirectFrame is the largest frame delivered directly: bulk data keeps
// its two goroutines (recvLoop reads the connection while the reader
// writes on), and recvLoop never spends long in a deliver function.
const maxDirectFrame = 16 << 10

// SetDeliver sets (or with nil clears) a function that takes data frames
// straight from the session's receive goroutine. It is called for a frame
// of at most 16 KiB that carries no flags, arrives while the receive
// buffer is empty, on an established stream (or one we half-closed). It
// returns how many bytes of p it took, from the front; those count as
// read (the window update goes out as a Read's would), and the rest is
// buffered for Read as usual, waking readers. A frame it takes whole
// wakes no reader. p is valid only during the call.
//
// f runs on the goroutine that reads the whole session: it must not block
// and must not call this stream's methods. SetDeliver waits for a call in
// progress to return, so once SetDeliver(nil) returns, f runs no more.
// Closes, resets, deadlines and session shutdown wake readers as before.
func (s *Stream) SetDeliver(f func(p []byte) int) {
	s.deliverMu.Lock()
	s.deliver = f
	s.hasDeliver.Store(f != nil)
	s.deliverMu.Unlock()
}

// deliverable says whether a frame may go to the deliver function: the
// stream is open for the peer's data and nothing is buffered before it.
func (s *Stream) deliverable(length uint32) bool {
	s.stateLock.Lock()
	state := s.state
	s.stateLock.Unlock()
	if state != streamEstablished && state != streamLocalClose {
		return false
	}
	s.recvLock.Lock()
	defer s.recvLock.Unlock()
	return length <= s.recvWindow && (s.recvBuf == nil || s.recvBuf.Len() == 0)
}

// deliverDirect reads a data frame's body and offers it to the deliver
// function; the rest goes to the receive buffer. handled is false when
// the frame does not qualify (readData then buffers it as upstream does).
func (s *Stream) deliverDirect(length uint32, conn io.Reader) (handled bool, err error) {
	if !s.deliverable(length) {
		return false, nil
	}
	if s.session.directBuf == nil {
		s.session.directBuf = make([]byte, maxDirectFrame)
	}
	body := s.session.directBuf[:length]
	if _, err := io.ReadFull(conn, body); err != nil {
		s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
		return true, err
	}

	// Only recvLoop adds to the buffer, so it is still empty; the state
	// may have changed (a local Reset).
	taken := 0
	s.deliverMu.Lock()
	if f := s.deliver; f != nil && s.deliverable(0) {
		taken = f(body)
		if taken < 0 || taken > len(body) {
			taken = 0 // a broken deliver function: buffer it all
		}
	}
	s.deliverMu.Unlock()

	s.recvLock.Lock()
	s.recvWindow -= length
	if taken < len(body) {
		if s.recvBuf == nil {
			s.recvBuf = bytes.NewBuffer(make([]byte, 0, len(body)-taken))
		}
		s.recvBuf.Write(body[taken:])
	}
	s.recvLock.Unlock()

	if taken < len(body) {
		asyncNotify(s.recvNotifyCh)
	}
	if taken > 0 {
		s.sendWindowUpdateNoWait()
	}
	return true, nil
}

// sendWindowUpdateNoWait is sendWindowUpdate for recvLoop, which must not
// wait for the connection: the update is the same (delta and threshold),
// queued for sendLoop without waiting. No flags: the stream is
// established (deliverable).
func (s *Stream) sendWindowUpdateNoWait() {
	max := s.session.config.MaxStreamWindowSize
	s.recvLock.Lock()
	var bufLen uint32
	if s.recvBuf != nil {
		bufLen = uint32(s.recvBuf.Len())
	}
	delta := (max - bufLen) - s.recvWindow
	if delta < max/2 {
		s.recvLock.Unlock()
		return
	}
	s.recvWindow += delta
	s.recvLock.Unlock()

	hdr := header(make([]byte, headerSize))
	hdr.encode(typeWindowUpdate, 0, s.id, delta)
	select {
	case s.session.sendCh <- &sendReady{Hdr: hdr}:
	default:
		// sendCh is full: queue it from another goroutine rather than
		// stall the session's reads (sendLoop may be waiting for the peer,
		// which may be waiting for this window).
		go func() { _ = s.session.sendNoWait(hdr) }()
	}
}
