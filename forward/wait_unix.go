//go:build unix

package forward

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// socketWaiter waits in the runtime's poller, as a Read would, holding no
// buffer meanwhile: it takes a buffer only once there is data and reads
// into it in the same call, so a message costs one read(2) after the
// wake-up (a one-byte MSG_PEEK to wait, then a Read, cost two). Its state
// and the function the poller calls are bound once.
//
// The first attempt cannot be skipped even when the last read emptied the
// socket: RawConn.Read clears the poller's readiness before calling us, so
// data that arrived since would otherwise wait for an arrival that never
// comes.
type socketWaiter struct {
	c       net.Conn
	rc      syscall.RawConn
	sockErr error
	readFD  func(fd uintptr) bool // w.read1

	// read's state: the pool buffers come from, and the buffer read into
	// with its byte count (0: end of stream).
	pool *sync.Pool
	bp   *[]byte
	n    int
}

// newSocketWaiter returns nil when c is not a socket with a file
// descriptor.
func newSocketWaiter(c net.Conn) *socketWaiter {
	rc := sockopt.RawSocket(c)
	if rc == nil {
		return nil
	}
	w := &socketWaiter{c: c, rc: rc}
	w.readFD = w.read1
	return w
}

// read waits for data and reads it into a buffer from pool, which the
// caller then owns; io.EOF at the end of the stream.
func (w *socketWaiter) read(pool *sync.Pool) (*[]byte, int, error) {
	w.sockErr, w.pool, w.bp, w.n = nil, pool, nil, 0
	if err := w.rc.Read(w.readFD); err != nil {
		return nil, 0, err
	}
	if err := w.sockErr; err != nil {
		return nil, 0, &net.OpError{Op: "read", Net: "tcp", Source: w.c.LocalAddr(), Addr: w.c.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	}
	bp, n := w.bp, w.n
	w.bp = nil
	if n == 0 {
		pool.Put(bp)
		return nil, 0, io.EOF
	}
	return bp, n, nil
}

func (w *socketWaiter) read1(fd uintptr) bool {
	bp := w.pool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *bp)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			w.pool.Put(bp)
			return false // nothing yet, and no buffer held while we wait
		case nil:
			w.bp, w.n = bp, n // data, or 0 at the end of the stream
			return true
		default:
			w.pool.Put(bp)
			w.sockErr = err
			return true
		}
	}
}
