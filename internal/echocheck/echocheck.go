// Package echocheck drives a connection through an echo in tests across a
// handover: a paced pseudo-random stream, every byte of the echo checked.
package echocheck

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// Stream writes a paced pseudo-random stream until Finish and checks
// every byte of its echo.
type Stream struct {
	c       *net.TCPConn
	wait    time.Duration
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	written int64
	burst   int64 // bytes to write without pacing (Burst)
	echoed  int64
	err     error
}

// Start dials addr (an echo, or a forward to one); wait bounds the dial,
// each read, and each Advance.
func Start(t testing.TB, addr string, wait time.Duration) *Stream {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatal(err)
	}
	s := &Stream{c: c.(*net.TCPConn), wait: wait, stop: make(chan struct{})}
	t.Cleanup(func() { s.c.Close() })
	s.wg.Go(func() {
		src := rand.New(rand.NewChaCha8([32]byte{3}))
		buf := make([]byte, 2048)
		for {
			select {
			case <-s.stop:
				s.fail(s.c.CloseWrite())
				return
			default:
			}
			for i := range buf {
				buf[i] = byte(src.Uint32())
			}
			if _, err := s.c.Write(buf); err != nil {
				s.fail(fmt.Errorf("write: %w", err))
				return
			}
			s.mu.Lock()
			s.written += int64(len(buf))
			burst := s.burst > 0
			s.burst -= min(s.burst, int64(len(buf)))
			s.mu.Unlock()
			if !burst {
				time.Sleep(2 * time.Millisecond) // pacing, not a measurement
			}
		}
	})
	s.wg.Go(func() {
		want := rand.New(rand.NewChaCha8([32]byte{3}))
		buf := make([]byte, 32<<10)
		for {
			_ = s.c.SetReadDeadline(time.Now().Add(wait))
			n, err := s.c.Read(buf)
			for i := range n {
				if w := byte(want.Uint32()); buf[i] != w {
					s.fail(fmt.Errorf("echo byte %d is %#x, want %#x", s.Echoed()+int64(i), buf[i], w))
					return
				}
			}
			s.mu.Lock()
			s.echoed += int64(n)
			s.mu.Unlock()
			if err == io.EOF {
				return
			}
			if err != nil {
				s.fail(fmt.Errorf("read after %d bytes: %w", s.Echoed(), err))
				return
			}
		}
	})
	return s
}

func (s *Stream) fail(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// Echoed is how many bytes have come back.
func (s *Stream) Echoed() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.echoed
}

// Burst writes about n more bytes (rounded up to the writer's 2 KiB
// buffers) as fast as the connection takes them, then goes back to pacing.
func (s *Stream) Burst(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.burst += n
}

// Advance waits until n more bytes have come back.
func (s *Stream) Advance(t testing.TB, n int64) {
	t.Helper()
	target := s.Echoed() + n
	deadline := time.Now().Add(s.wait)
	for s.Echoed() < target {
		s.mu.Lock()
		err := s.err
		s.mu.Unlock()
		if err != nil {
			t.Fatalf("checked stream: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("checked stream: echo stuck at %d bytes", s.Echoed())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Finish half-closes, waits for the echo to end and compares lengths.
func (s *Stream) Finish(t testing.TB) {
	t.Helper()
	close(s.stop)
	s.wg.Wait()
	if s.err != nil {
		t.Fatalf("checked stream: %v", s.err)
	}
	if s.echoed != s.written {
		t.Fatalf("checked stream: %d bytes written, %d echoed", s.written, s.echoed)
	}
	t.Logf("checked stream: %d bytes echoed across the handovers, every one checked", s.echoed)
}
