//go:build unix

package forward

import (
	"net"
	"os"
	"syscall"
)

// waitSocketReadable waits in the runtime's poller, as a Read would, but
// with a one-byte MSG_PEEK that leaves the data in the socket.
//
// A pending socket error (a reset) is returned: the peek consumes it, and
// the Read after it would see a clean EOF.
//
// The first peek cannot be skipped even when the last read emptied the
// socket: RawConn.Read clears the poller's readiness before calling us, so
// data that arrived since would otherwise wait for an arrival that never
// comes.
func waitSocketReadable(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var one [1]byte
	var sockErr error
	err = rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch err {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // nothing yet: the poller waits for the next arrival
			case nil:
				return true // data or EOF
			default:
				sockErr = err
				return true
			}
		}
	})
	if err != nil {
		return err
	}
	if sockErr != nil {
		return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("recvfrom", sockErr)}
	}
	return nil
}
