package ssl

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// writeCounter is a real socket that counts its Write calls.
type writeCounter struct {
	net.Conn
	writes atomic.Int64
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes.Add(1)
	return w.Conn.Write(p)
}

// TestWritePairOneSystemCall: a header and a 32 KiB body written as a
// pair leave in one write to the socket (their records sealed apart, no
// joining copy), and the peer reads them back in order, byte for byte.
// tlsPair is a client and server Conn over loopback TCP after their
// handshake; wrap, if not nil, wraps the client's socket.
func tlsPair(t *testing.T, wrap func(net.Conn) net.Conn) (client, server *Conn) {
	t.Helper()
	p := newPKI(t)
	srv := p.material(t, "server", issueServer(t, p.ca, pki.Options{}), p.caFile)
	cli := p.material(t, "client", issueClient(t, p.ca, pki.Options{}), p.caFile)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   *Conn
		err error
	}
	acc := make(chan accepted, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			acc <- accepted{nil, err}
			return
		}
		c := Server(raw, ServerConfig(srv))
		acc <- accepted{c, Handshake(context.Background(), c.Conn, 5*time.Second)}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		raw = wrap(raw)
	}
	c := Client(raw, ClientConfig(cli, "localhost"))
	t.Cleanup(func() { c.Close() })
	if err := Handshake(context.Background(), c.Conn, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	t.Cleanup(func() { a.c.Close() })
	return c, a.c
}

// TestWritableNow: a connection whose socket has room says so; once the
// peer stops reading and the socket's send queue is full it says no, and
// yes again once the peer has read. A connection without a socket under
// it never says yes.
func TestWritableNow(t *testing.T) {
	c, peer := tlsPair(t, nil)
	if !c.WritableNow() {
		t.Fatal("WritableNow false on a fresh connection")
	}
	_ = c.Raw().(*net.TCPConn).SetWriteBuffer(64 << 10)
	chunk := make([]byte, 64<<10)
	_ = c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
	full := false
	for range 4096 { // at most 256 MiB: the kernel's buffers hold far less
		if _, err := c.Write(chunk); err != nil {
			full = true
			break
		}
	}
	if !full {
		t.Fatal("256 MiB written without the peer reading")
	}
	if c.WritableNow() {
		t.Fatal("WritableNow true with the send queue full")
	}
	// The peer reads what was sealed whole; the last record may be cut.
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	deadline := time.Now().Add(10 * time.Second)
	for !c.WritableNow() {
		if time.Now().After(deadline) {
			t.Fatal("WritableNow still false 10 s after the peer started reading")
		}
		time.Sleep(time.Millisecond)
	}

	wrapped, _ := tlsPair(t, func(raw net.Conn) net.Conn { return &writeCounter{Conn: raw} })
	if wrapped.WritableNow() {
		t.Fatal("WritableNow true without a socket to ask")
	}
}

func TestWritePairOneSystemCall(t *testing.T) {
	var counted *writeCounter
	c, peer := tlsPair(t, func(raw net.Conn) net.Conn {
		counted = &writeCounter{Conn: raw}
		return counted
	})
	hdr := []byte("twelve bytes")
	body := make([]byte, 32<<10)
	for i := range body {
		body[i] = byte(i * 7)
	}
	before := counted.writes.Load()
	n, err := c.WritePair(hdr, body)
	if err != nil || n != len(hdr)+len(body) {
		t.Fatalf("WritePair: %d, %v", n, err)
	}
	if w := counted.writes.Load() - before; w != 1 {
		t.Fatalf("%d writes to the socket, want 1", w)
	}
	got := make([]byte, len(hdr)+len(body))
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(append([]byte(nil), hdr...), body...)) {
		t.Fatal("peer read other bytes than the pair written")
	}
}
