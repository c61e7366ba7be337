package yamux

// Patched for tunnelworks (see PATCHED.md, patch 12): streams that receive
// bulk data share one stream's window while another stream of the session
// exchanges small messages. Each stream may have MaxStreamWindowSize bytes
// in flight toward us; with k bulk streams on one session that is k
// windows of data queued in the one connection, ahead of any small frame
// of another stream. The receiver decides how much credit it gives (the
// window updates it sends), so it can cap the sum without any change on
// the wire: each bulk stream is then offered 1/k of one stream's window
// (patch 13: of a budget sized to the path, which also holds a lone bulk
// stream), never less than one data frame. With nobody to wait behind
// the queue (bulk streams only) every stream keeps the whole window:
// smaller windows cost bulk throughput (more window updates), for no
// one's gain.

import "time"

const (
	// bulkHistory is how many of the last large data frames are looked at
	// to count the streams receiving bulk now.
	bulkHistory = 16
	// interactiveSpan is how many large frames (32 or 64 KiB each from
	// our peers: 8 to 16 MiB) after another stream's last small frame the
	// window stays shared.
	interactiveSpan = 256
	// smallRunInteractive is how many small frames in a row make a stream
	// that received bulk count as exchanging messages (patch 13).
	smallRunInteractive = 4
)

// noteBulk records a large data frame for stream st (recvLoop only).
func (s *Session) noteBulk(st *Stream, length uint32) {
	id := st.id
	if !st.seenLarge && s.lastSmall == id {
		// The last small frame was this stream's own first message (say
		// the header of a forwarded connection): nobody waits behind it.
		// Another stream exchanging messages sends again within a round
		// trip.
		s.sinceSmall = interactiveSpan
	}
	st.seenLarge, st.smallRun = true, 0
	s.recentBulk[s.recentNext] = id
	s.recentNext = (s.recentNext + 1) % bulkHistory
	// The rate is of the time bulk data came: of a pause between large
	// frames, what is longer than loneQueue and 4 of the last measured
	// gaps between them does not count (else the burst after it would
	// be offered a window sized to the pause). On a slow link frames
	// come far apart (32 KiB is 131 ms at 2 Mbit/s): that is no pause.
	now := time.Now()
	if s.rateStart.IsZero() {
		s.rateStart = now
	} else {
		pause := loneQueue
		if g := 4 * s.frameGap; g > pause {
			pause = g
		}
		if gap := now.Sub(s.lastLarge); gap > pause {
			s.rateStart = s.rateStart.Add(gap - pause)
		}
	}
	s.lastLarge = now
	s.rateBytes += uint64(length)
	if s.recentNext == 0 {
		s.updateBudget(now)
	}
	k := uint32(0)
	for i, a := range s.recentBulk {
		if a != 0 && !slicesContains(s.recentBulk[:i], a) {
			k++
		}
	}
	s.bulkCount = k
	// Patch 23: alone for long enough that the other bulk streams of the
	// session, if any, are not just waiting for their turn or their CPU.
	if id != s.aloneID {
		s.aloneID, s.aloneSince = id, now
	}
	if alone := k == 1 && now.Sub(s.aloneSince) >= loneSettle; s.bulkAlone.Load() != alone {
		s.bulkAlone.Store(alone)
	}
	if s.sinceSmall < interactiveSpan {
		s.sinceSmall++
	}
	s.updateShare()
}

// noteSmall records a small data frame for stream st (recvLoop only): a
// stream that is not receiving bulk is exchanging messages. A bulk
// stream's short frames (a sender's read that found less than a frame's
// worth) do not count until smallRunInteractive come in a row: with 8
// bulk streams, some stream's short frame often came when none of its
// large frames were among the last bulkHistory, and kept the window
// shared with nobody waiting (patch 13).
func (s *Session) noteSmall(st *Stream) {
	if st.seenLarge {
		if st.smallRun < smallRunInteractive {
			st.smallRun++
		}
		if st.smallRun < smallRunInteractive {
			return
		}
	}
	s.sinceSmall, s.lastSmall = 0, st.id
	s.updateShare()
}

func (s *Session) updateShare() {
	share := uint32(1)
	waiting := s.sinceSmall < interactiveSpan
	// Patch 16: with nobody waiting, recvLoop may write every bulk
	// stream's frames to its socket itself.
	if s.bulkDirect.Load() == waiting {
		s.bulkDirect.Store(!waiting)
	}
	if s.bulkCount > 1 && waiting {
		share = s.bulkCount
	}
	if s.shareWindow.Load() != share {
		s.shareWindow.Store(share)
	}
	// Patch 13: one bulk stream beside a waiting one is held to the
	// path's budget too (at most one window, so only where the path
	// holds less: a slow or short one).
	// Its own small frames (a run of short reads) leave nobody waiting.
	last := s.recentBulk[(s.recentNext+bulkHistory-1)%bulkHistory]
	alone := s.bulkCount == 1 && waiting && s.lastSmall != last
	if s.aloneBeside.Load() != alone {
		s.aloneBeside.Store(alone)
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
func (s *Stream) windowMax() uint32 { return s.session.StreamWindow() }

// StreamWindow is the largest window a stream of the session is offered
// now: MaxStreamWindowSize, or less while bulk streams share it beside a
// stream exchanging messages (patch 12) or are sized to the path (patch
// 13). Patched for tunnelworks (PATCHED.md, patch 13).
func (s *Session) StreamWindow() uint32 {
	max := s.config.MaxStreamWindowSize
	k := s.shareWindow.Load()
	if k <= 1 && !s.aloneBeside.Load() {
		// Nobody waits behind the bulk now, but a message may come: the
		// credit granted before it cannot be taken back (patch 13).
		if c := s.loneCap.Load(); c != 0 && c < max {
			return c
		}
		return max
	}
	if b := s.sharedBudget.Load(); b != 0 {
		// Patch 13: what the path needs, when known, shared; patch 15:
		// each stream at most its own window, so that together they can
		// fill a path that holds more than one window.
		if k > 1 {
			b /= k
		}
		if b < max {
			max = b
		}
	} else if k > 1 {
		max /= k // patch 12: one stream's window, shared
	}
	if k > 1 && max < minSharedWindow {
		max = minSharedWindow
	}
	return max
}

// Patch 13: the shared window sized to the path. One stream's window is
// what a bulk stream needs to fill a long path; on a short one (a LAN,
// loopback) the bulk streams' bytes in flight are a queue that a small
// message of another stream waits behind, at 1 MiB about 3 ms at 3
// Gbit/s. So while the window is shared, the bulk streams together get
// pathGain times what the path holds at the rate they receive now
// (rate × the least round-trip time seen, the bandwidth-delay product),
// never less than minSharedBudget nor more than one stream's window.
// When the window limits the rate, rate × RTT is about the budget itself
// and the budget grows pathGain-fold a measurement; when something else
// limits it, the budget falls back to pathGain BDPs. Unknown RTT: one
// stream's window, as patch 12.
const (
	// pathGain: BDPs of data in flight, headroom for a rate that rises
	// and for round trips longer than the least.
	pathGain = 4
	// minSharedWindow is the least window a sharing stream is offered:
	// one data frame of our earlier peers (32 KiB; patch 15 allows 64).
	minSharedWindow = 32 * 1024
	// minSharedBudget is the least budget: two of our peers' data frames,
	// so that a lone bulk stream, which is sent a window update once half
	// its window is read, always has a frame's credit. On a slow link it
	// is still the queue a message waits behind (at 2 Mbit/s, 260 ms).
	minSharedBudget = 64 * 1024
)

// NotePathRTT tells the session a round-trip time of its path (a ping's,
// say); it keeps the least. Patched for tunnelworks (PATCHED.md, patch 13).
func (s *Session) NotePathRTT(d time.Duration) {
	if d <= 0 {
		return
	}
	// Until the rate is measured, a stream nobody waits behind keeps the
	// initial window (see loneCap).
	s.loneCap.CompareAndSwap(0, initialStreamWindow)
	for {
		old := s.pathRTT.Load()
		if old != 0 && old <= int64(d) {
			return
		}
		if s.pathRTT.CompareAndSwap(old, int64(d)) {
			return
		}
	}
}

// PathRTT is the least round-trip time told to NotePathRTT, 0 if none.
func (s *Session) PathRTT() time.Duration { return time.Duration(s.pathRTT.Load()) }

// NotePathFloor tells the session a round trip its path takes at least
// now, by a measure that forgets old samples (TCP's own minimum over its
// last minutes, say); 0 forgets it. Patched for tunnelworks (PATCHED.md,
// patch 18): the least ping never rises, so a path that lengthened under
// a long-lived connection (a failover to a longer route) kept its old
// round trip, and bulk streams beside a message were held to a window
// the new path could not fill.
func (s *Session) NotePathFloor(d time.Duration) {
	if d < 0 {
		d = 0
	}
	s.pathFloor.Store(int64(d))
}

// PathFloor is the round trip told to NotePathFloor last, 0 if none.
func (s *Session) PathFloor() time.Duration { return time.Duration(s.pathFloor.Load()) }

// sizingRTT is the round trip patch 13 sizes windows by: the least ping,
// or the floor if that is longer (patch 18); 0 until a ping is answered.
func (s *Session) sizingRTT() time.Duration {
	rtt := time.Duration(s.pathRTT.Load())
	if floor := time.Duration(s.pathFloor.Load()); rtt != 0 && floor > rtt {
		return floor
	}
	return rtt
}

// WindowSharedBy is by how many bulk streams the window is shared now (1:
// not shared). Patched for tunnelworks (PATCHED.md, patches 12 and 13).
func (s *Session) WindowSharedBy() int { return int(s.shareWindow.Load()) }

// SetBackground marks the stream as background: its small frames (say,
// acknowledgements that can wait) do not make bulk streams share their
// window as an interactive stream's do. Patched for tunnelworks
// (PATCHED.md, patch 13).
func (s *Stream) SetBackground() { s.background.Store(true) }

// updateBudget measures the bulk receive rate over the last bulkHistory
// large frames and sets the shared budget from it (recvLoop only).
func (s *Session) updateBudget(now time.Time) {
	elapsed := now.Sub(s.rateStart)
	bytes := s.rateBytes
	s.frameGap = elapsed / bulkHistory
	s.rateStart, s.rateBytes = now, 0
	rtt := s.sizingRTT()
	b := sharedBudget(bytes, elapsed, rtt, maxSharedBudget(s.config.MaxStreamWindowSize))
	if s.sharedBudget.Load() != b {
		s.sharedBudget.Store(b)
	}
	if c := loneCap(bytes, elapsed, rtt, s.loneCeiling()); c != 0 {
		s.loneCap.Store(c)
	}
}

// Patch 13: a bulk stream nobody waits behind is offered at most what
// the path holds plus loneQueue at the rate it receives, so that the
// credit already granted when a message stream starts (which no window
// update can take back) is at most about loneQueue of queue ahead of it:
// a whole window was 4 s at 2 Mbit/s. When the window limits the rate
// the cap grows (pathGain RTTs plus loneQueue of data per round trip
// measured) until the queue it makes is about that long; a fast path
// gets the whole window (at 3 Gbit/s, 100 ms is 37 MB).
const loneQueue = 100 * time.Millisecond

// loneCap is what a bulk stream nobody waits behind may have in flight,
// having received bytes in elapsed on a path of least round-trip time
// rtt: rate × (pathGain × rtt + loneQueue) within [minSharedBudget, max];
// 0 (no change) when rtt is unknown.
func loneCap(bytes uint64, elapsed, rtt time.Duration, max uint32) uint32 {
	if rtt <= 0 {
		return 0
	}
	return inFlight(bytes, elapsed, pathGain*rtt+loneQueue, max)
}

// maxSharedBudget bounds the budget: every stream that can be counted
// sharing it (bulkHistory) at its own window, within 32 bits. Patch 15;
// patch 13 bounded it by one stream's window, which on a path holding
// more (400 Mbit/s at 40 ms holds 2 MB) left the link half empty once
// the sharing streams were counted right.
func maxSharedBudget(window uint32) uint32 {
	if b := uint64(window) * bulkHistory; b < 1<<32-1 {
		return uint32(b)
	}
	return 1<<32 - 1
}

// sharedBudget is what k sharing bulk streams may have in flight in all,
// having received bytes in elapsed on a path of least round-trip time
// rtt: pathGain × rate × rtt within [minSharedBudget, max]; 0 (one
// stream's window) when rtt is unknown.
func sharedBudget(bytes uint64, elapsed, rtt time.Duration, max uint32) uint32 {
	if rtt <= 0 {
		return 0
	}
	return inFlight(bytes, elapsed, pathGain*rtt, max)
}

// inFlight is what the rate of bytes received in elapsed delivers in d,
// within [minSharedBudget, max]; 0 when no time was measured.
func inFlight(bytes uint64, elapsed, d time.Duration, max uint32) uint32 {
	if elapsed <= 0 {
		return 0
	}
	n := float64(bytes) * d.Seconds() / elapsed.Seconds()
	switch {
	case n >= float64(max):
		return max
	case n <= minSharedBudget:
		return minSharedBudget
	}
	return uint32(n)
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
