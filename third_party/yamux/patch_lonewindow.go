package yamux

import "time"

// Patch 22: a lone bulk stream's window grows past MaxStreamWindowSize.
// Patched for tunnelworks, see PATCHED.md.
//
// One stream's window (MaxStreamWindowSize) bounds what a peer can make
// us buffer per stream, and the session's stream cap is counted from it.
// A lone bulk stream on a fast path needs more in flight than that: its
// sender stops whenever the window is used up, and on a machine whose
// CPUs the agents share with others, a reader descheduled for a few
// milliseconds is a window's worth of bytes at a few Gbit/s. So the
// session lends one extra amount, LoneStreamWindow - MaxStreamWindowSize,
// to its only bulk receiver while the path is fast enough for it (patch
// 13's lone cap, which already bounds what a lone stream may queue ahead
// of a message to come, allows more than one window). A stream gives back
// what it no longer holds as credit or buffered bytes when it sends its
// next window update, and the rest when it closes; so the session never
// holds more than its streams' windows plus the one extra.

// loneSettle is how long a stream must have received every large frame
// of its session before it may borrow the extra (patch 23): several bulk
// streams whose senders share busy CPUs leave gaps of milliseconds, in
// which one of them gets many frames in a row.
const loneSettle = 100 * time.Millisecond

// loneCeiling is the most a lone bulk stream is ever offered: the lone
// window when set, else MaxStreamWindowSize.
func (s *Session) loneCeiling() uint32 {
	if w := s.config.LoneStreamWindow; w > s.config.MaxStreamWindowSize {
		return w
	}
	return s.config.MaxStreamWindowSize
}

// loneExtra is what the session may lend: the lone window's excess over
// one stream's.
func (s *Session) loneExtra() int64 {
	return int64(s.loneCeiling()) - int64(s.config.MaxStreamWindowSize)
}

// LoneExtraLent is how many bytes of the lone window's extra streams
// hold now (at most LoneStreamWindow - MaxStreamWindowSize). Patched for
// tunnelworks (patch 22).
func (s *Session) LoneExtraLent() int64 { return s.loneLent.Load() }

// loneWindowLocked is the window for the stream's next update, given
// base (StreamWindow) and the bytes it buffers: base, plus what it holds
// or may borrow of the extra while it is the session's only bulk
// receiver on a fast enough path. It takes or gives back the difference.
// Called with recvLock held.
func (s *Stream) loneWindowLocked(base, buffered uint32) uint32 {
	sess := s.session
	extra := sess.loneExtra()
	if extra <= 0 {
		return base
	}
	want := int64(0)
	// The only bulk receiver: the stream of the last large frames
	// (patch 10's run) and of every large frame of the last loneSettle
	// and bulkHistory (patch 23). A run alone is not enough: with several
	// bulk streams one often gets soleRun frames in a row, or 16 while
	// the others' senders wait for a CPU, and the extra went to
	// whichever did (TestLoneWindowNotLentBesideOtherBulk).
	if base >= sess.config.MaxStreamWindowSize && sess.soleReceiver.Load() == s.id && sess.bulkAlone.Load() &&
		sess.shareWindow.Load() <= 1 && !sess.aloneBeside.Load() {
		// Patch 13's lone cap, sized to the path, decides how far: on a
		// slow path it stays under one window and nothing is lent.
		if c := int64(sess.loneCap.Load()); c > int64(base) {
			want = min64(c-int64(base), extra)
		}
	}
	held := int64(s.lent.Load())
	switch {
	case want > held:
		got := sess.lendLoneExtra(want-held, extra)
		if got > 0 && !s.lent.CompareAndSwap(uint32(held), uint32(held+got)) {
			sess.loneLent.Add(-got) // closed meanwhile
			return base
		}
		held += got
		if s.lentDone.Load() {
			// Closed since the check above: give it all back once.
			if s.lent.CompareAndSwap(uint32(held), 0) {
				sess.loneLent.Add(-held)
			}
			return base
		}
	case want < held:
		// Keep what the credit already granted and the buffered bytes
		// stand on above base (no update can take credit back); the rest
		// goes back.
		inUse := max64(max64(int64(buffered)+int64(s.recvWindow)-int64(base), want), 0)
		if inUse < held && s.lent.CompareAndSwap(uint32(held), uint32(inUse)) {
			sess.loneLent.Add(inUse - held)
			held = inUse
		}
		if want == 0 {
			return base
		}
	}
	return base + uint32(min64(held, want))
}

// lendLoneExtra takes up to n of the extra, what is left of it, and says
// how much it took.
func (s *Session) lendLoneExtra(n, extra int64) int64 {
	for {
		used := s.loneLent.Load()
		got := min64(n, extra-used)
		if got <= 0 {
			return 0
		}
		if s.loneLent.CompareAndSwap(used, used+got) {
			return got
		}
	}
}

// returnLoneExtra gives back all the stream holds and lends it no more
// (the stream is closed).
func (s *Stream) returnLoneExtra() {
	s.lentDone.Store(true)
	if n := s.lent.Swap(0); n != 0 {
		s.session.loneLent.Add(-int64(n))
	}
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}

func max64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}
