package interop

import (
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/internal/pathrelay"
)

// pathRelay is the tunnel's network path: a relay the test can cut or
// blackhole (see internal/pathrelay).
type pathRelay struct{ *pathrelay.Relay }

func startPathRelay(t testing.TB, target string) *pathRelay {
	return &pathRelay{pathrelay.Start(t, target)}
}

func (r *pathRelay) addr() string              { return r.Addr() }
func (r *pathRelay) cut() int                  { return r.Cut() }
func (r *pathRelay) hold()                     { r.Hold() }
func (r *pathRelay) release()                  { r.Release() }
func (r *pathRelay) blackhole(d time.Duration) { r.Blackhole(d) }
