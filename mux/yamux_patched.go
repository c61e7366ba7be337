//go:build !upstreamyamux

package mux

import (
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// What mux needs of our yamux copy (third_party/yamux, PATCHED.md) beyond
// upstream's API. The e2e test that proves the wire unchanged builds the
// agents against upstream yamux with the tag upstreamyamux, which swaps in
// yamux_upstream.go.

// resetStream resets y in order behind its data.
func resetStream(y *yamux.Stream) error { return y.Reset() }

// refusedStreams is how many opens yamux reset on its own.
func refusedStreams(y *yamux.Session) (overLimit, backlogFull uint64) { return y.RefusedStreams() }

// strayFrames is how many frames y dropped for streams it does not hold
// (patch 6).
func strayFrames(y *yamux.Session) uint64 { return y.StrayFrames() }

// setMaxStreams caps the streams yamux holds.
func setMaxStreams(c *yamux.Config, n int) { c.MaxStreams = n }

// setLoneWindow lets a session's only bulk receiver's window grow to n
// (patch 22; 0: no further than the stream window).
func setLoneWindow(c *yamux.Config, n uint32) { c.LoneStreamWindow = n }

// loneWindowLent is how much of the lone window's excess y's streams
// hold now (patch 22).
func loneWindowLent(y *yamux.Session) int64 { return y.LoneExtraLent() }

// setDeliver sets y's direct delivery (patch 9); ok says it can.
func setDeliver(y *yamux.Stream, f func(p []byte) int) (ok bool) {
	y.SetDeliver(f)
	return true
}

// deliversLarge says whether y's large frames go to its deliver function
// now (patches 10 and 16).
func deliversLarge(y *yamux.Stream) bool { return y.DeliversLarge() }

// receiveBuffered is how many bytes y's streams hold unread (patch 11).
func receiveBuffered(y *yamux.Session) int { return y.ReceiveBuffered() }

// setBackground keeps y's small frames (our control stream's notices)
// from making bulk streams share their window (patch 13).
func setBackground(y *yamux.Stream) { y.SetBackground() }

// notePathRTT tells y a round-trip time of its path (patch 13).
func notePathRTT(y *yamux.Session, d time.Duration) { y.NotePathRTT(d) }

// pathRTT is the least round-trip time y was told of (patch 13).
func pathRTT(y *yamux.Session) time.Duration { return y.PathRTT() }

// notePathFloor tells y a round trip its path takes at least now, one
// that may rise (patch 18).
func notePathFloor(y *yamux.Session, d time.Duration) { y.NotePathFloor(d) }

// pathFloor is the floor y was told last (patch 18).
func pathFloor(y *yamux.Session) time.Duration { return y.PathFloor() }

// writeQueued is how many bytes of frame copies wait in y's write queue
// (patch 19).
func writeQueued(y *yamux.Session) int { return y.WriteQueued() }

// windowSharedBy is by how many bulk streams y's window is shared now.
func windowSharedBy(y *yamux.Session) int { return y.WindowSharedBy() }

// streamWindow is the largest window a stream of y is offered now.
func streamWindow(y *yamux.Session) int { return int(y.StreamWindow()) }

// writeBufferedTo writes what y received to w from its receive chunks
// (patch 14).
func writeBufferedTo(y *yamux.Stream, w io.Writer, commit func(n int) bool) (int, error, error) {
	return y.WriteBufferedTo(w, commit)
}
