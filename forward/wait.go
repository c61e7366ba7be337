package forward

import "net"

// waitReadable blocks until c has something to read (data, EOF or an
// error), holding no buffer meanwhile: 1,000 idle streams then hold no
// copy buffers at all. Connections without a way to wait return at once,
// and the caller's Read waits instead. An error is the connection's read
// error.
func waitReadable(c net.Conn) error {
	if w, ok := c.(interface{ WaitReadable() }); ok {
		w.WaitReadable() // the next Read returns the stream's error, if any
		return nil
	}
	return waitSocketReadable(c)
}
