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
func TestWritePairOneSystemCall(t *testing.T) {
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
	counted := &writeCounter{Conn: raw}
	c := Client(counted, ClientConfig(cli, "localhost"))
	defer c.Close()
	if err := Handshake(context.Background(), c.Conn, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	a := <-acc
	if a.err != nil {
		t.Fatal(a.err)
	}
	defer a.c.Close()

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
	_ = a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(a.c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, append(append([]byte(nil), hdr...), body...)) {
		t.Fatal("peer read other bytes than the pair written")
	}
}
