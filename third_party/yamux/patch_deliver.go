package yamux

// Patched for tunnelworks (see PATCHED.md, patch 9): direct delivery. A
// reader parked on an idle stream can let the session's receive goroutine
// hand it small frames itself, instead of buffering them and waking the
// reader's goroutine: on a round trip that saves a goroutine hand-off (and
// often the wake-up of an idle thread) at each end. Nothing changes on the
// wire.

import (
	"io"
)

// maxDirectFrame is the largest frame delivered directly to a stream that
// receives alone (patch 10: one bulk stream then skips the hand-off and the
// copy out of its buffer, as a plain TLS relay's copy loop does) or whose
// session has no stream exchanging messages (patch 16: every bulk stream
// does), and maxSharedDirectFrame the largest while other streams' frames
// arrive between its own and a stream exchanges messages: then each bulk
// stream keeps its own writer, so recvLoop never spends one stream's
// socket write while a message waits behind it.
const (
	maxDirectFrame       = 64 << 10
	maxSharedDirectFrame = 16 << 10
)

// soleRun is how many large data frames (over maxSharedDirectFrame) in a
// row one stream must receive to count as the session's only bulk
// receiver (patch 10). Small frames of other streams (a ping, a notice)
// neither count nor break the run.
const soleRun = 4

// noteData records a data frame for stream st (recvLoop only) and says
// whether a frame of this length may be delivered directly. Patched for
// tunnelworks (see PATCHED.md, patches 10 and 16).
func (s *Session) noteData(st *Stream, length uint32) bool {
	id := st.id
	if length <= maxSharedDirectFrame {
		if !st.background.Load() {
			s.noteSmall(st)
		}
		return true
	}
	if id == s.dataRunID {
		s.dataRun++
	} else {
		s.dataRunID, s.dataRun = id, 1
	}
	s.noteBulk(st, length)
	sole := uint32(0) // stream IDs start at 1
	if s.dataRun >= soleRun {
		sole = id
	}
	if s.soleReceiver.Load() != sole {
		s.soleReceiver.Store(sole)
	}
	return length <= maxDirectFrame && (sole != 0 || s.bulkDirect.Load())
}

// DeliversLarge says whether the stream's large frames go to a deliver
// function now (see SetDeliver): it is its session's only bulk receiver
// (patch 10), or no stream of the session exchanges messages, so nobody
// waits behind recvLoop's socket writes (patch 16). A reader that holds a
// large buffer gains from setting one only then; otherwise it may as well
// wait in Read. Patched for tunnelworks (see PATCHED.md).
func (s *Stream) DeliversLarge() bool {
	return s.session.soleReceiver.Load() == s.id || s.session.bulkDirect.Load()
}

// SetDeliver sets (or with nil clears) a function that takes data frames
// straight from the session's receive goroutine. It is called for a frame
// of at most 16 KiB (64 KiB while DeliversLarge: the stream has received
// soleRun large frames in a row with no other stream's large frame
// between, or no stream of the session exchanges messages) that carries
// no flags, arrives while the receive buffer is empty, on an established
// stream (or one we half-closed). It returns how many bytes of p it took, from the front;
// those count as read (the window update goes out as a Read's would), and
// the rest is buffered for Read as usual, waking readers. A frame it takes
// whole wakes no reader. p is valid only during the call.
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
	if uint32(len(s.session.directBuf)) < length {
		// 16 KiB, and 64 KiB once a stream's large frames are delivered.
		size := maxSharedDirectFrame
		if int(length) > size {
			size = maxDirectFrame
		}
		s.session.directBuf = make([]byte, size)
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
			s.recvBuf = newRecvBuffer(s.session.recvChunks)
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
	max := s.windowMax()
	s.recvLock.Lock()
	var bufLen uint32
	if s.recvBuf != nil {
		bufLen = uint32(s.recvBuf.Len())
	}
	max = s.loneWindowLocked(max, bufLen)           // patch 22
	delta := creditDelta(max, bufLen, s.recvWindow) // patched (patch 12): never below 0
	if delta < max/2 {
		s.recvLock.Unlock()
		return
	}
	s.recvWindow += delta
	s.recvLock.Unlock()

	hdr := header(s.session.recvHdr[:])
	hdr.encode(typeWindowUpdate, 0, s.id, delta)
	if s.session.sendUpdateNoWait(&s.session.recvFlow, hdr) { // patch 21
		return
	}
	hdr = header(make([]byte, headerSize))
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
