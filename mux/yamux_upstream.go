//go:build upstreamyamux

package mux

import (
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// Upstream yamux v0.1.2 has no public reset and no stream cap: a build
// against it (the e2e wire-compatibility test only) half-closes where we
// would reset, and relies on mux's own check at accept for the cap. Never
// ship it: a reset then reaches the far application as a clean EOF.

func resetStream(y *yamux.Stream) error { return y.Close() }

func refusedStreams(*yamux.Session) (overLimit, backlogFull uint64) { return 0, 0 }

func strayFrames(*yamux.Session) uint64 { return 0 }

func setMaxStreams(*yamux.Config, int) {}

func setLoneWindow(*yamux.Config, uint32) {}

func loneWindowLent(*yamux.Session) int64 { return 0 }

func setDeliver(*yamux.Stream, func([]byte) int) bool { return false }

func deliversLarge(*yamux.Stream) bool { return false }

// receiveBuffered: upstream does not tell.
func receiveBuffered(*yamux.Session) int { return 0 }

func setBackground(*yamux.Stream) {}

func notePathRTT(*yamux.Session, time.Duration) {}

func pathRTT(*yamux.Session) time.Duration { return 0 }

func notePathFloor(*yamux.Session, time.Duration) {}

func pathFloor(*yamux.Session) time.Duration { return 0 }

func windowSharedBy(*yamux.Session) int { return 1 }

// writeQueued: upstream queues no copies (its writers wait).
func writeQueued(*yamux.Session) int { return 0 }

// streamWindow: upstream does not tell.
func streamWindow(*yamux.Session) int { return 0 }

func writeBufferedTo(y *yamux.Stream, w io.Writer, commit func(n int) bool) (int, error, error) {
	buf := make([]byte, 32<<10)
	n, err := y.Read(buf)
	if n == 0 {
		return 0, err, nil
	}
	if commit != nil && !commit(n) {
		return 0, nil, nil
	}
	m, werr := w.Write(buf[:n])
	return m, nil, werr
}
