//go:build unix

package forward

import (
	"net"
	"os"
	"syscall"
)

// socketWaiter waits in the runtime's poller, as a Read would, but with a
// one-byte MSG_PEEK that leaves the data in the socket. Its state and the
// function the poller calls are bound once.
//
// A pending socket error (a reset) is returned: the peek consumes it, and
// the Read after it would see a clean EOF.
//
// The first peek cannot be skipped even when the last read emptied the
// socket: RawConn.Read clears the poller's readiness before calling us, so
// data that arrived since would otherwise wait for an arrival that never
// comes.
type socketWaiter struct {
	c       net.Conn
	rc      syscall.RawConn
	one     [1]byte
	sockErr error
	peekFD  func(fd uintptr) bool // w.peek
}

// newSocketWaiter returns nil when c is not a socket we can peek.
func newSocketWaiter(c net.Conn) *socketWaiter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	w := &socketWaiter{c: c, rc: rc}
	w.peekFD = w.peek
	return w
}

func (w *socketWaiter) wait() error {
	w.sockErr = nil
	if err := w.rc.Read(w.peekFD); err != nil {
		return err
	}
	if err := w.sockErr; err != nil {
		return &net.OpError{Op: "read", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: os.NewSyscallError("recvfrom", err)}
	}
	return nil
}

func (w *socketWaiter) peek(fd uintptr) bool {
	for {
		_, _, err := syscall.Recvfrom(int(fd), w.one[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // nothing yet: the poller waits for the next arrival
		case nil:
			return true // data or EOF
		default:
			w.sockErr = err
			return true
		}
	}
}
