package linkemu

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sinkServer counts and hashes what each connection sends, then answers
// with the sha256 of it once the sender half-closes.
func sinkServer(t *testing.T) (addr string, counts func() []int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		n  []*int64
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cnt := new(int64)
			mu.Lock()
			n = append(n, cnt)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				h := sha256.New()
				buf := make([]byte, 32*1024)
				for {
					k, err := c.Read(buf)
					h.Write(buf[:k])
					mu.Lock()
					*cnt += int64(k)
					mu.Unlock()
					if err != nil {
						break
					}
				}
				c.Write(h.Sum(nil))
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String(), func() []int64 {
		mu.Lock()
		defer mu.Unlock()
		out := make([]int64, len(n))
		for i, p := range n {
			out[i] = *p
		}
		return out
	}
}

func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); io.Copy(c, c) })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// push sends random data to addr for d, half-closes and checks the
// sink's hash of it. It returns the bytes sent.
func push(t *testing.T, addr string, d time.Duration) int64 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Error(err)
		return 0
	}
	defer c.Close()
	// A small send buffer: what is still in it when the push ends must
	// drain at the link rate before the sink's answer arrives.
	_ = c.(*net.TCPConn).SetWriteBuffer(64 * 1024)
	buf := make([]byte, 16*1024)
	r := rand.NewChaCha8([32]byte{1})
	h := sha256.New()
	var n int64
	_ = c.SetWriteDeadline(time.Now().Add(d))
	for {
		r.Read(buf)
		k, err := c.Write(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err != nil {
			break
		}
	}
	_ = c.SetWriteDeadline(time.Time{})
	c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Errorf("reading the sink's hash: %v", err)
		return n
	}
	if !bytes.Equal(got, h.Sum(nil)) {
		t.Errorf("data corrupted across the link (%d bytes sent)", n)
	}
	return n
}

// rateOver samples the sink's byte counts between from and to after start.
func rateOver(counts func() []int64, from, to time.Duration, start time.Time) []float64 {
	time.Sleep(time.Until(start.Add(from)))
	a := counts()
	time.Sleep(time.Until(start.Add(to)))
	b := counts()
	out := make([]float64, len(b))
	for i := range b {
		var prev int64
		if i < len(a) {
			prev = a[i]
		}
		out[i] = float64(b[i]-prev) * 8 / (to - from).Seconds()
	}
	return out
}

func TestSingleStreamGetsTheRate(t *testing.T) {
	const rate = 8e6
	em := New(Config{RateBitsPerSec: rate, OneWayDelay: 10 * time.Millisecond})
	defer em.Close()
	sink, counts := sinkServer(t)
	addr, err := em.Relay(sink)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { push(t, addr, 2*time.Second) })
	got := rateOver(counts, 500*time.Millisecond, 1800*time.Millisecond, start)
	wg.Wait()
	if len(got) != 1 {
		t.Fatalf("%d connections at the sink, want 1", len(got))
	}
	t.Logf("one stream: %.2f Mbit/s on an %.0f Mbit/s link", got[0]/1e6, rate/1e6)
	if got[0] < 0.8*rate || got[0] > 1.2*rate {
		t.Errorf("one stream moved %.2f Mbit/s, want %.0f ±20%%", got[0]/1e6, rate/1e6)
	}
}

func TestStreamsShareTheRate(t *testing.T) {
	const rate = 8e6
	em := New(Config{RateBitsPerSec: rate, OneWayDelay: 10 * time.Millisecond})
	defer em.Close()
	sink, counts := sinkServer(t)
	// Two relays on one emulator still share one link.
	a1, err := em.Relay(sink)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := em.Relay(sink)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { push(t, a1, 2500*time.Millisecond) })
	wg.Go(func() { push(t, a2, 2500*time.Millisecond) })
	got := rateOver(counts, 700*time.Millisecond, 2300*time.Millisecond, start)
	wg.Wait()
	if len(got) != 2 {
		t.Fatalf("%d connections at the sink, want 2", len(got))
	}
	sum := got[0] + got[1]
	t.Logf("two streams: %.2f + %.2f Mbit/s on an %.0f Mbit/s link", got[0]/1e6, got[1]/1e6, rate/1e6)
	if sum < 0.8*rate || sum > 1.2*rate {
		t.Errorf("together %.2f Mbit/s, want %.0f ±20%%", sum/1e6, rate/1e6)
	}
	for i, r := range got {
		if r < 0.25*rate {
			t.Errorf("stream %d got %.2f Mbit/s: not a share of the link", i, r/1e6)
		}
	}
}

func TestDelayAddsRoundTrip(t *testing.T) {
	const oneWay = 25 * time.Millisecond
	em := New(Config{RateBitsPerSec: 100e6, OneWayDelay: oneWay})
	defer em.Close()
	addr, err := em.Relay(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64)
	got := make([]byte, 64)
	var worst, best time.Duration = 0, time.Hour
	for i := range 10 {
		msg[0] = byte(i)
		t0 := time.Now()
		c.Write(msg)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		rtt := time.Since(t0)
		if !bytes.Equal(got, msg) {
			t.Fatal("echo differs")
		}
		worst, best = max(worst, rtt), min(best, rtt)
	}
	t.Logf("ping-pong rtt: best %v, worst %v (2 × %v one way)", best, worst, oneWay)
	// The fastest round trip shows the delay: never below it, and well
	// short of the delay applied twice over. The slowest is left to the
	// scheduler (a loaded CI machine under -race adds tens of ms).
	if best < 2*oneWay || best > 3*oneWay {
		t.Errorf("fastest rtt %v, want %v..%v", best, 2*oneWay, 3*oneWay)
	}
}

func TestHalfCloseAndBackPressure(t *testing.T) {
	// A tiny queue: the sender must be held back, not dropped.
	em := New(Config{RateBitsPerSec: 20e6, OneWayDelay: 2 * time.Millisecond, QueueBytes: 3000})
	defer em.Close()
	sink, _ := sinkServer(t)
	addr, err := em.Relay(sink)
	if err != nil {
		t.Fatal(err)
	}
	if n := push(t, addr, 300*time.Millisecond); n == 0 {
		t.Fatal("nothing sent")
	}
}

func TestCloseStopsEverything(t *testing.T) {
	em := New(Config{RateBitsPerSec: 1e6, OneWayDelay: 50 * time.Millisecond})
	sink, _ := sinkServer(t)
	addr, err := em.Relay(sink)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64*1024)
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	t0 := time.Now()
	em.Close()
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the sender was not released by Close")
	}
	if _, err := em.Relay(sink); err == nil {
		t.Error("Relay after Close succeeded")
	}
}
