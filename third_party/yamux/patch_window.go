package yamux

// Patched for tunnelworks (see PATCHED.md, patch 12): streams that receive
// bulk data share one stream's window while another stream of the session
// exchanges small messages. Each stream may have MaxStreamWindowSize bytes
// in flight toward us; with k bulk streams on one session that is k
// windows of data queued in the one connection, ahead of any small frame
// of another stream. The receiver decides how much credit it gives (the
// window updates it sends), so it can cap the sum without any change on
// the wire: each bulk stream is then offered MaxStreamWindowSize / k, never
// less than the protocol's initial 256 KiB. With nobody to wait behind
// the queue (bulk streams only), or one bulk stream, every stream keeps
// the whole window: smaller windows cost bulk throughput (more window
// updates), for no one's gain.

const (
	// bulkHistory is how many of the last large data frames are looked at
	// to count the streams receiving bulk now.
	bulkHistory = 16
	// interactiveSpan is how many large frames (32 KiB each from our
	// peers: 8 MiB) after another stream's last small frame the window
	// stays shared.
	interactiveSpan = 256
)

// noteBulk records a large data frame for stream id (recvLoop only).
func (s *Session) noteBulk(id uint32) {
	s.recentBulk[s.recentNext] = id
	s.recentNext = (s.recentNext + 1) % bulkHistory
	k := uint32(0)
	for i, a := range s.recentBulk {
		if a != 0 && !slicesContains(s.recentBulk[:i], a) {
			k++
		}
	}
	s.bulkCount = k
	if s.sinceSmall < interactiveSpan {
		s.sinceSmall++
	}
	s.updateShare()
}

// noteSmall records a small data frame for stream id (recvLoop only): a
// stream that is not receiving bulk is exchanging messages.
func (s *Session) noteSmall(id uint32) {
	if slicesContains(s.recentBulk[:], id) {
		return
	}
	s.sinceSmall = 0
	s.updateShare()
}

func (s *Session) updateShare() {
	share := uint32(1)
	if s.bulkCount > 1 && s.sinceSmall < interactiveSpan {
		share = s.bulkCount
	}
	if s.shareWindow.Load() != share {
		s.shareWindow.Store(share)
	}
}

func slicesContains(ids []uint32, id uint32) bool {
	for _, a := range ids {
		if a == id {
			return true
		}
	}
	return false
}

// windowMax is the largest window the stream is offered now.
func (s *Stream) windowMax() uint32 {
	max := s.session.config.MaxStreamWindowSize
	if k := s.session.shareWindow.Load(); k > 1 {
		max /= k
	}
	if max < initialStreamWindow {
		max = initialStreamWindow
	}
	return max
}

// creditDelta is the window update that brings the stream's credit to
// max: max less what is buffered and the credit the sender still has; 0
// when that is already more (the window shrank: the sender uses up what
// it has first), where upstream's unsigned arithmetic would wrap.
func creditDelta(max, buffered, credit uint32) uint32 {
	if uint64(buffered)+uint64(credit) >= uint64(max) {
		return 0
	}
	return max - buffered - credit
}
