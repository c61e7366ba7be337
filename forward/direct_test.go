//go:build unix

package forward

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// fakeDeliverer is a source whose session would deliver directly: the
// test calls the function it was given.
type fakeDeliverer struct {
	net.Conn
	f func(p []byte) int
}

func (d *fakeDeliverer) SetDeliver(f func(p []byte) int) bool { d.f = f; return true }

// Direct delivery writes to the socket without waiting and counts what it
// wrote; a full socket takes nothing.
func TestDirectDeliveryWritesWithoutWaiting(t *testing.T) {
	dst, app := tcpPair(t)
	_ = dst.SetWriteBuffer(4096)
	src := &fakeDeliverer{}
	var counted int
	dd := newDirectDelivery(dst, src, func(n int) { counted += n })
	if dd == nil || !dd.start() || src.f == nil {
		t.Fatal("no direct delivery to a TCP connection")
	}
	if n := src.f([]byte("hello")); n != 5 {
		t.Fatalf("took %d of 5 bytes", n)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(app, got); err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
	// Nobody reads app: the socket fills, and a write takes 0 at once.
	block := bytes.Repeat([]byte{'x'}, 64<<10)
	total := 5
	for {
		n := src.f(block)
		total += n
		if n == 0 {
			break
		}
	}
	moved, err := dd.stop()
	if err != nil || moved != int64(total) || counted != total {
		t.Fatalf("stop: %d moved, %d counted, %v; want %d, nil", moved, counted, err, total)
	}
	if src.f != nil {
		t.Fatal("stop left the function set")
	}
}

// A write that meets a reset reports it to the pipe (which would see only
// a broken pipe on its own write), and delivery stops.
func TestDirectDeliveryReportsReset(t *testing.T) {
	dst, app := tcpPair(t)
	src := &fakeDeliverer{}
	dd := newDirectDelivery(dst, src, func(int) {})
	dd.start()
	_ = app.SetLinger(0)
	app.Close() // RST
	deadline := time.Now().Add(10 * time.Second)
	for dd.err == nil {
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset connection kept succeeding")
		}
		src.f([]byte("x"))
		time.Sleep(time.Millisecond)
	}
	if n := src.f([]byte("x")); n != 0 {
		t.Fatalf("took %d bytes after a failed write", n)
	}
	_, err := dd.stop()
	if c := Classify(&WriteError{Err: err}); c != "reset" && c != "broken pipe" {
		t.Fatalf("error %v classified %q", err, c)
	}
}
