//go:build unix

package forward

import (
	"errors"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestSocketWaiterReadsOnWake: the waiter blocks until data arrives, then
// returns it in a buffer from the pool (read in the same call), io.EOF at
// the peer's FIN, and the connection reset when the peer aborts.
func TestSocketWaiterReadsOnWake(t *testing.T) {
	pool := &sync.Pool{New: func() any { b := make([]byte, 16); return &b }}

	a, b := tcpPair(t)
	w := newSocketWaiter(b)
	if w == nil {
		t.Fatal("no waiter for a TCP connection")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(50 * time.Millisecond) // the waiter is parked by now, most runs
		_, _ = a.Write([]byte("hello"))
	}()
	bp, n, err := w.read(pool)
	<-done
	if err != nil || bp == nil || string((*bp)[:n]) != "hello" {
		t.Fatalf("read: %v, %d bytes %q; want hello", err, n, bufString(bp, n))
	}
	pool.Put(bp)
	if err := a.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if bp, _, err := w.read(pool); err != io.EOF || bp != nil {
		t.Fatalf("after the peer's FIN: %v (buffer %v), want io.EOF and no buffer", err, bp != nil)
	}

	c, d := tcpPair(t)
	w = newSocketWaiter(d)
	_ = c.SetLinger(0)
	_ = c.Close()
	if _, _, err := w.read(pool); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after the peer's reset: %v, want connection reset", err)
	}
}

func bufString(bp *[]byte, n int) string {
	if bp == nil {
		return ""
	}
	return string((*bp)[:n])
}
