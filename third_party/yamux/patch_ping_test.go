package yamux

// Tests for the tunnelworks patch "a ping's round trip counts from before
// its send" (see PATCHED.md, patch 17).

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// lingeringWriteConn is a net.Conn whose writes, once hold is set, pass
// the bytes on at once and only then take hold to return: the peer has
// the frame (and may answer it) while the writer is still away, as on a
// host too busy to run the writing goroutine again at once.
type lingeringWriteConn struct {
	net.Conn
	hold atomic.Int64 // nanoseconds
}

func (c *lingeringWriteConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if d := time.Duration(c.hold.Load()); d > 0 {
		time.Sleep(d)
	}
	return n, err
}

// The peer answers the ping while our write of it has not yet returned:
// the round trip reported still covers the whole wait for the answer, not
// the few microseconds between the write's return and the answer already
// there (upstream started the clock after the send).
func TestSession_PingCountsFromBeforeTheSend(t *testing.T) {
	c, s := tcpPair(t)
	cconn := &lingeringWriteConn{Conn: c}
	client, err := Client(cconn, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	if _, err := client.Ping(); err != nil { // both ends up
		t.Fatalf("first ping: %v", err)
	}
	const hold = 100 * time.Millisecond
	cconn.hold.Store(int64(hold))
	rtt, err := client.Ping()
	cconn.hold.Store(0)
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	if rtt < hold {
		t.Fatalf("round trip %v, shorter than the %v the ping's own send took", rtt, hold)
	}
}
