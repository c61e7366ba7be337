package forward

import "net"

// readWaiter blocks until its connection has something to read (data, EOF
// or an error), holding no buffer meanwhile: 1,000 idle streams then hold
// no copy buffers at all. It is made once per pipe direction, so a wait
// allocates nothing (an idle or chatty connection waits before every
// message).
type readWaiter struct {
	stream interface{ WaitReadable() } // a tunnel stream
	socket *socketWaiter               // a socket we can peek
}

func newReadWaiter(c net.Conn) readWaiter {
	if w, ok := c.(interface{ WaitReadable() }); ok {
		return readWaiter{stream: w}
	}
	return readWaiter{socket: newSocketWaiter(c)}
}

// wait returns when a Read would not block. Connections without a way to
// wait return at once, and the caller's Read waits instead. An error is
// the connection's read error.
func (w readWaiter) wait() error {
	switch {
	case w.stream != nil:
		w.stream.WaitReadable() // the next Read returns the stream's error, if any
		return nil
	case w.socket != nil:
		return w.socket.wait()
	}
	return nil
}
