package ssl

import (
	"crypto/tls"
	"net"
	"sync"
	"syscall"

	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// Conn is a TLS connection that moves bulk data in few system calls.
//
// crypto/tls writes every record (at most 16 KiB of data) with its own
// write(2). Over loopback each of those calls also runs the peer's TCP
// receive path, so calls, not AES, were the main cost of the tunnel
// (profiles in bench/README.md). Conn sends all records of one Write in a
// single call, for one copy of what it sends. Reads go straight to the
// socket: crypto/tls reads what its record buffer has room for, often
// several records a call, and a buffer of our own under it saved few
// read(2) calls for a copy of every byte received (bench/README.md,
// "eighth part").
type Conn struct {
	*tls.Conn
	raw    *batchingConn
	socket syscall.RawConn // raw's socket, for WritableNow; nil without one
}

// Client starts the client side of a TLS connection on raw (the handshake
// runs on first use or with Handshake).
func Client(raw net.Conn, cfg *tls.Config) *Conn {
	b := newBatchingConn(raw)
	return &Conn{Conn: tls.Client(b, cfg), raw: b, socket: sockopt.RawSocket(raw)}
}

// Server starts the server side of a TLS connection on raw.
func Server(raw net.Conn, cfg *tls.Config) *Conn {
	b := newBatchingConn(raw)
	return &Conn{Conn: tls.Server(b, cfg), raw: b, socket: sockopt.RawSocket(raw)}
}

// Raw is the connection under TLS (for what the kernel knows of it, such
// as its round trip; never for reading or writing).
func (c *Conn) Raw() net.Conn { return c.raw.Conn }

// WritableNow says whether a small record written now would leave at once
// without waiting: the socket under the connection has room (a poll(2)
// that does not wait; false without a socket or off Unix). yamux's
// receive loop, which must never wait for a write, writes its window
// updates itself only then (third_party/yamux, patch 21); otherwise it
// hands them to another goroutine.
func (c *Conn) WritableNow() bool { return socketWritable(c.socket) }

// Write encrypts p into as many records as it needs and sends them in one
// system call.
func (c *Conn) Write(p []byte) (int, error) {
	c.raw.hold()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// WritePair encrypts a and then b, each into records of its own, and
// sends all of them in one system call: a frame's header and a large body
// leave together without first being copied into one buffer.
func (c *Conn) WritePair(a, b []byte) (int, error) {
	c.raw.hold()
	n, err := c.Conn.Write(a)
	if err == nil {
		var m int
		m, err = c.Conn.Write(b)
		n += m
	}
	if ferr := c.raw.flush(); err == nil {
		err = ferr
	}
	return n, err
}

// batchingConn sits under tls.Conn. While held, writes collect in a buffer
// and go out together on flush. Every write takes mu and buffered bytes
// always leave before a direct write, so records stay in the order TLS
// sealed them even if another goroutine (a key update, a close alert)
// writes meanwhile.
type batchingConn struct {
	net.Conn

	mu      sync.Mutex
	holders int
	buf     []byte
}

func newBatchingConn(c net.Conn) *batchingConn {
	return &batchingConn{Conn: c}
}

func (b *batchingConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.holders > 0 {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	return b.Conn.Write(p)
}

func (b *batchingConn) hold() {
	b.mu.Lock()
	b.holders++
	b.mu.Unlock()
}

// maxKeptBuffer bounds the write buffer kept between flushes: a usual
// frame's records fit, an unusually large Write's buffer is dropped.
const maxKeptBuffer = 256 * 1024

func (b *batchingConn) flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holders--
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	if cap(b.buf) > maxKeptBuffer {
		b.buf = nil
	} else {
		b.buf = b.buf[:0]
	}
	return err
}
