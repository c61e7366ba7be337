package yamux

import (
	"errors"
	"sync/atomic"
)

// Patched for tunnelworks (patch 21, see PATCHED.md): window updates
// without a hand-off to sendLoop. Upstream queues every window update for
// sendLoop, and the goroutine that sends it waits for sendLoop to write
// it: each update readies sendLoop (and, from a stream's reader, readies
// the reader again), which wakes a thread of an idle P. A receiver moving
// a GB did this about two thousand times. Now an update goes out from the
// goroutine that makes it, in its turn in s.writes, or waits there as a
// copy for whoever holds the connection (patch 19). The frames are the
// same: the protocol is unchanged.

// nowWriter is what a connection may offer to say that it takes a small
// frame at once: the socket under it has room (transport/ssl.Conn). Only
// then is a window update written by the goroutine that makes it;
// without it, updates go through sendLoop as upstream.
type nowWriter interface {
	WritableNow() bool
}

// writeFrameNoWait sends a frame of hdr and body (a window update without
// flags, or a small data frame of an established stream, patch 22) in
// f's turn without waiting: written at once if nobody holds the connection and it
// can take it without waiting, else left in s.writes as a copy for
// whoever holds it. It returns false when neither can be done (conn has
// no WritableNow or its socket is full, the queue is full): then the
// caller hands it to sendLoop, as upstream does. recvLoop must never wait
// for a write (the peer's receive loop may be waiting for ours); a
// stream's reader waits for sendLoop at most ConnectionWriteTimeout.
func (s *Session) writeFrameNoWait(f *writeFlow, hdr header, body []byte) bool {
	w, ok := s.conn.(nowWriter)
	if !ok {
		return false
	}
	took, err := s.writes.queueFrame(f, hdr, body)
	switch {
	case errors.Is(err, errQueueFull):
		return false
	case err != nil:
		return true // a write failed: the session is ending, and the update with it
	case !took:
		return true // a copy waits for whoever holds the connection
	}
	if !w.WritableNow() {
		// The socket is full: the write could wait for the peer.
		s.writes.releaseNoWrite()
		return false
	}
	s.writeTaken(hdr, body)
	s.writes.releaseNoWrite()
	return true
}

// writeTaken writes a frame on the connection taken in s.writes; a
// failed write ends the session (as a queued frame's would, without
// waiting for recvLoop: the caller may be it).
func (s *Session) writeTaken(hdr header, body []byte) {
	select {
	case <-s.shutdownCh:
		return
	default:
	}
	_, err := s.conn.Write(hdr)
	if err == nil && len(body) > 0 {
		_, err = s.conn.Write(body)
	}
	if err != nil {
		s.writes.fail(err)
		s.failedQueuedWrite(err)
	}
}

// TryWrite writes b whole as one data frame if that needs no wait, for a
// goroutine that must never wait for the connection (the agents' receive
// loop, sending a delivery notice as it delivers): the stream is
// established and not writing, its window takes b, and the connection
// takes the frame at once or is held by a writer that will write a copy
// (see writeFrameNoWait). It returns false, having sent nothing, when
// any of that fails; the caller then writes from elsewhere. b is at most
// 4 KiB. Patched for tunnelworks (patch 22, see PATCHED.md).
func (s *Stream) TryWrite(b []byte) bool {
	if len(b) == 0 || len(b) > smallFrameBody || !s.sendLock.TryLock() {
		return false
	}
	defer s.sendLock.Unlock()
	s.stateLock.Lock()
	established := s.state == streamEstablished
	s.stateLock.Unlock()
	if !established || atomic.LoadUint32(&s.sendWindow) < uint32(len(b)) {
		return false
	}
	s.sendHdr.encode(typeData, 0, s.id, uint32(len(b)))
	if !s.session.writeFrameNoWait(&s.flow, s.sendHdr, b) {
		return false
	}
	atomic.AddUint32(&s.sendWindow, ^uint32(len(b)-1))
	return true
}
