package yamux

// Tests for the tunnelworks patch "a read does not fail on the window
// update of a dying connection" (see PATCHED.md).

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// failWriteConn is a net.Conn whose writes fail once broken is set, while
// reads go on: the peer has gone, and the write notices first.
type failWriteConn struct {
	net.Conn
	broken atomic.Bool
}

func (c *failWriteConn) Write(b []byte) (int, error) {
	if c.broken.Load() {
		return 0, errors.New("write: connection reset by peer")
	}
	return c.Conn.Write(b)
}

// The peer writes a window of data, closes the stream and goes away. Our
// read of that data triggers a window update whose connection write fails:
// the read still returns the data without an error, then io.EOF (the FIN
// had arrived).
func TestStream_ReadDataWhenWindowUpdateFails(t *testing.T) {
	c, s := tcpPair(t)
	sconn := &failWriteConn{Conn: s}
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(sconn, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	cs, ss := openPair(t, client, server)
	data := pattern(int(initialStreamWindow)) // reading it all sends a window update
	if _, err := cs.Write(data); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := cs.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitFor(t, "server holds the data and the FIN", func() bool {
		return stateOf(ss) == streamRemoteClose && buffered(ss) == len(data)
	})
	sconn.broken.Store(true)

	got := make([]byte, len(data))
	n, err := ss.Read(got)
	if err != nil || n != len(data) {
		t.Fatalf("read: %d bytes, %v; want %d, nil", n, err, len(data))
	}
	ss.SetReadDeadline(time.Now().Add(patchBound))
	if n, err := ss.Read(got); err != io.EOF {
		t.Fatalf("read after the data: %d bytes, %v; want io.EOF", n, err)
	}
}
