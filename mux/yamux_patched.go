//go:build !upstreamyamux

package mux

import "github.com/hashicorp/yamux"

// What mux needs of our yamux copy (third_party/yamux, PATCHED.md) beyond
// upstream's API. The e2e test that proves the wire unchanged builds the
// agents against upstream yamux with the tag upstreamyamux, which swaps in
// yamux_upstream.go.

// resetStream resets y in order behind its data.
func resetStream(y *yamux.Stream) error { return y.Reset() }

// refusedStreams is how many opens yamux reset on its own.
func refusedStreams(y *yamux.Session) (overLimit, backlogFull uint64) { return y.RefusedStreams() }

// setMaxStreams caps the streams yamux holds.
func setMaxStreams(c *yamux.Config, n int) { c.MaxStreams = n }

// setDeliver sets y's direct delivery (patch 9); ok says it can.
func setDeliver(y *yamux.Stream, f func(p []byte) int) (ok bool) {
	y.SetDeliver(f)
	return true
}

// receivesAlone says whether y is its session's only bulk receiver (patch 10).
func receivesAlone(y *yamux.Stream) bool { return y.ReceivesAlone() }

// receiveBuffered is how many bytes y's streams hold unread (patch 11).
func receiveBuffered(y *yamux.Session) int { return y.ReceiveBuffered() }
