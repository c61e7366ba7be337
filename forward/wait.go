package forward

import (
	"net"
	"sync"
)

// readWaiter blocks until its connection has something to read (data, EOF
// or an error), holding no buffer meanwhile: 1,000 idle streams then hold
// no copy buffers at all. It is made once per pipe direction, so a wait
// allocates nothing (an idle or chatty connection waits before every
// message).
type readWaiter struct {
	stream interface{ WaitReadable() } // a tunnel stream
	socket *socketWaiter               // a socket we can wait on without a buffer
}

func newReadWaiter(c net.Conn) readWaiter {
	if w, ok := c.(interface{ WaitReadable() }); ok {
		return readWaiter{stream: w}
	}
	return readWaiter{socket: newSocketWaiter(c)}
}

// wait returns when a stream's Read would not block. Other connections
// return at once, and the caller's Read (or waitRead) waits instead.
func (w readWaiter) wait() {
	if w.stream != nil {
		w.stream.WaitReadable() // the next Read returns the stream's error, if any
	}
}

// waitRead waits as wait does; from a socket it also reads what arrived
// into a buffer from pool, taken only once there is data, and returns it
// with the byte count (io.EOF at the end of the stream). A nil buffer
// means nothing was read: the caller's Read comes next.
func (w readWaiter) waitRead(pool *sync.Pool) (*[]byte, int, error) {
	if w.socket != nil {
		return w.socket.read(pool)
	}
	w.wait()
	return nil, 0, nil
}
