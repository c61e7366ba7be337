package yamux

import "io"

// Patched for tunnelworks (see PATCHED.md, patch 14): a reader that only
// passes the bytes on (the agents' pipe to a local socket) takes the
// stream's chunks and writes them to their destination itself, instead
// of copying them into its own buffer first and writing that.

// maxDetach bounds the bytes WriteBufferedTo takes from the stream at
// once (whole chunks, at least one).
const maxDetach = 64 << 10

// WriteBufferedTo waits as Read does until the stream has bytes (or has
// ended), then writes up to maxDetach of them to w straight from the
// stream's receive chunks, and returns how many w took. commit, if not
// nil, is called with the byte count once they are taken from the stream
// and before any is written; when it returns false they are dropped (the
// caller no longer wants them) and WriteBufferedTo returns 0 and no
// error. rerr is what Read would have returned (io.EOF at the end), werr
// w's error. The window update for the bytes goes out once they are
// written, so what the peer can make us hold stays within the window.
func (s *Stream) WriteBufferedTo(w io.Writer, commit func(n int) bool) (written int, rerr, werr error) {
	for {
		s.stateLock.Lock()
		reset := s.state == streamReset
		s.stateLock.Unlock()
		if reset {
			return 0, ErrConnectionReset, nil
		}
		s.recvLock.Lock()
		if s.recvBuf == nil || s.recvBuf.Len() == 0 {
			s.recvLock.Unlock()
			// An empty Read waits for data and consumes none; it
			// returns the stream's end or error.
			if _, err := s.Read(nil); err != nil {
				return 0, err, nil
			}
			continue
		}
		pools := s.recvBuf.pools
		chunks, off, n := s.recvBuf.detach(s.detached[:0], maxDetach)
		s.detached = chunks[:0]
		s.recvLock.Unlock()

		if commit == nil || commit(n) {
			for i, c := range chunks {
				b := *c
				if i == 0 {
					b = b[off:]
				}
				m, err := w.Write(b)
				written += m
				if err != nil {
					werr = err
					break
				}
			}
		}
		for i, c := range chunks {
			pools.put(c)
			chunks[i] = nil
		}
		asyncNotify(s.recvNotifyCh)
		if err := s.sendWindowUpdate(); err == ErrConnectionWriteTimeout {
			rerr = err // as Read: other failures end the session, and the next call says so
		}
		return written, rerr, werr
	}
}
