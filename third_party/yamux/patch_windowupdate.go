package yamux

import "errors"

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

// sendUpdateNoWait sends hdr, a window update without flags, in f's turn
// without waiting: written at once if nobody holds the connection and it
// can take it without waiting, else left in s.writes as a copy for
// whoever holds it. It returns false when neither can be done (conn has
// no WritableNow or its socket is full, the queue is full): then the
// caller hands it to sendLoop, as upstream does. recvLoop must never wait
// for a write (the peer's receive loop may be waiting for ours); a
// stream's reader waits for sendLoop at most ConnectionWriteTimeout.
func (s *Session) sendUpdateNoWait(f *writeFlow, hdr header) bool {
	w, ok := s.conn.(nowWriter)
	if !ok {
		return false
	}
	took, err := s.writes.queueFrame(f, hdr, nil)
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
	s.writeTakenHeader(hdr)
	s.writes.releaseNoWrite()
	return true
}

// writeTakenHeader writes hdr on the connection taken in s.writes; a
// failed write ends the session (as a queued frame's would, without
// waiting for recvLoop: the caller may be it).
func (s *Session) writeTakenHeader(hdr header) {
	select {
	case <-s.shutdownCh:
		return
	default:
	}
	if _, err := s.conn.Write(hdr); err != nil {
		s.writes.fail(err)
		s.failedQueuedWrite(err)
	}
}
