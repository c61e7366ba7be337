//go:build !unix

package ssl

import (
	"syscall"
)

// socketWritable is never sure here: yamux's receive loop hands its window
// updates to its send loop, as upstream does.
func socketWritable(syscall.RawConn) bool { return false }
