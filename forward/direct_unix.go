//go:build unix

package forward

import (
	"net"
	"syscall"
)

// nonBlockingWriter returns a function that writes what c's socket takes
// now and never waits (0 when it is full or failed: the caller's own
// Write then meets the error), or nil if c has no socket.
func nonBlockingWriter(c net.Conn) func(p []byte) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return func(p []byte) int {
		var n int
		_ = rc.Write(func(fd uintptr) bool {
			for {
				k, err := syscall.Write(int(fd), p)
				if err == syscall.EINTR {
					continue
				}
				if err == nil {
					n = k
				}
				return true // done either way: never wait in the poller
			}
		})
		return n
	}
}
