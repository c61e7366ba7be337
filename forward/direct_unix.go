//go:build unix

package forward

import (
	"net"
	"os"
	"syscall"
)

// nonBlockingWriter returns a function that writes what c's socket takes
// now and never waits: 0 and no error when it is full; the socket's error
// when the write failed. nil if c has no socket.
func nonBlockingWriter(c net.Conn) func(p []byte) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return func(p []byte) (int, error) {
		var (
			n    int
			werr error
		)
		err := rc.Write(func(fd uintptr) bool {
			for {
				k, err := syscall.Write(int(fd), p)
				switch err {
				case nil:
					n = k
				case syscall.EINTR:
					continue
				case syscall.EAGAIN:
				default:
					werr = err
				}
				return true // done either way: never wait in the poller
			}
		})
		if err != nil {
			return 0, err // closed
		}
		if werr != nil {
			// The write took the socket's pending error (a reset): keep it
			// for the pipe, whose own write would only see EPIPE now.
			return 0, &net.OpError{Op: "write", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("write", werr)}
		}
		return n, nil
	}
}
