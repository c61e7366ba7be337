package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// Bytes both ways at once: the target sends its own 64 MiB while hashing
// what it receives; the local side does the same; both hashes must match.
func TestBulkBothWaysAtOnce(t *testing.T) {
	t.Parallel()
	checkBulkBothWays(t, 64<<20, serverBin, clientBin)
}

// checkBulkBothWays starts a tunnel of the two binaries with one "bulk"
// forward, sends size random bytes each way at once through it,
// half-closes each side after its data, and checks every byte (SHA-256)
// and the client's stream accounting.
func checkBulkBothWays(t *testing.T, size int64, server, client string) {
	t.Helper()
	const seedLocal, seedTarget = 1, 2
	type result struct {
		sent, got [32]byte
		n         int64
		err       error
	}
	atTarget := make(chan result, 1)
	target := startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
		var r result
		var wg sync.WaitGroup
		var sendErr error
		wg.Go(func() {
			r.sent, sendErr = sendRandom(c, seedTarget, size)
			if sendErr == nil {
				sendErr = c.(*net.TCPConn).CloseWrite()
			}
		})
		r.got, r.n, r.err = hashAll(c)
		wg.Wait()
		if r.err == nil {
			r.err = sendErr
		}
		select {
		case atTarget <- r:
		default:
		}
	})
	tn := startTunnel(t, tunnelSpec{
		serverBin: server,
		clientBin: client,
		services:  []svc{{name: "bulk", target: target, allow: []string{"client-a"}}},
		forwards:  []fwd{{name: "bulk", service: "bulk"}},
	})

	began := time.Now()
	c := dial(t, tn.client.forwards["bulk"], 2*time.Minute)
	var sent [32]byte
	var sendErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		sent, sendErr = sendRandom(c, seedLocal, size)
		if sendErr == nil {
			sendErr = c.CloseWrite()
		}
	})
	got, n, err := hashAll(c)
	wg.Wait()
	if err != nil || sendErr != nil {
		t.Fatalf("local side: read %d bytes, read error %v, send error %v", n, err, sendErr)
	}
	var r result
	select {
	case r = <-atTarget:
	case <-time.After(waitLimit):
		t.Fatal("target did not finish")
	}
	if r.err != nil {
		t.Fatalf("target side: read %d bytes: %v", r.n, r.err)
	}
	if n != size || got != r.sent {
		t.Errorf("target → local: got %d bytes sha256 %x, target sent %d bytes sha256 %x", n, got, size, r.sent)
	}
	if r.n != size || r.got != sent {
		t.Errorf("local → target: target got %d bytes sha256 %x, local sent %d bytes sha256 %x", r.n, r.got, size, sent)
	}
	el := time.Since(began)
	t.Logf("%d MiB each way in %s (%.1f MiB/s each way)", size>>20, el.Round(time.Millisecond), float64(size>>20)/el.Seconds())
	tn.client.waitLine(t, "stream closed", "forward=bulk", fmt.Sprintf("bytes_to_peer=%d", size), fmt.Sprintf("bytes_from_peer=%d", size))
}

// Half-close with a delayed reply: the request ends with a FIN, the target
// answers 500 ms after reading EOF, and the whole reply arrives, then EOF.
func TestHalfCloseDelayedReply(t *testing.T) {
	t.Parallel()
	request := bytes.Repeat([]byte("request "), 10000)
	reply := bytes.Repeat([]byte("the reply "), 20000)
	gotReq := make(chan []byte, 1)
	target := startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(waitLimit))
		b, err := io.ReadAll(c)
		if err != nil {
			return
		}
		select {
		case gotReq <- b:
		default:
		}
		time.Sleep(500 * time.Millisecond)
		_, _ = c.Write(reply)
	})
	tn := startTunnel(t, tunnelSpec{
		services: []svc{{name: "slow", target: target, allow: []string{"client-a"}}},
		forwards: []fwd{{name: "slow", service: "slow"}},
	})

	c := dial(t, tn.client.forwards["slow"], waitLimit)
	start := time.Now()
	if _, err := c.Write(request); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c) // nil error means a clean EOF
	if err != nil {
		t.Fatalf("read reply: %v after %d bytes", err, len(got))
	}
	if el := time.Since(start); el < 500*time.Millisecond {
		t.Errorf("reply came after %s, before the target's 500 ms delay", el)
	}
	if !bytes.Equal(got, reply) {
		t.Errorf("reply: got %d bytes, want %d", len(got), len(reply))
	}
	select {
	case b := <-gotReq:
		if !bytes.Equal(b, request) {
			t.Errorf("target got %d bytes of request, want %d", len(b), len(request))
		}
	case <-time.After(waitLimit):
		t.Error("target never read the request")
	}
}

// Reverse forward: the server listens, the stream goes to the client's service.
func TestReverseForward(t *testing.T) {
	t.Parallel()
	back := startEcho(t)
	tn := startTunnel(t, tunnelSpec{
		serverForwards: []fwd{{name: "back", client: "client-a", service: "echo-back"}},
		clientServices: []svc{{name: "echo-back", target: back}},
	})
	addr := tn.server.forwards["back"]
	if addr == "" {
		t.Fatal("server logged no listen address for forward back")
	}
	for i := range 3 {
		msg := bytes.Repeat([]byte(fmt.Sprintf("reverse %d ", i)), 5000)
		c := dial(t, addr, waitLimit)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("stream %d: got %d bytes (err %v), want %d bytes back", i, len(got), err, len(msg))
		}
		c.Close()
	}
	tn.server.waitLine(t, "stream closed", "forward=back", "peer=client-a")
	tn.client.waitLine(t, "stream closed", "service=echo-back")
}

// Many concurrent streams, each with its own data, all verified.
func TestManyConcurrentStreams(t *testing.T) {
	t.Parallel()
	const streams = 500
	// More than a bulk session holds by default (256 x 1 MiB windows in
	// max_session_buffer = 256MiB): raise the budget for this many.
	limits := "max_session_buffer = \"1GiB\"\n"
	tn := startTunnel(t, tunnelSpec{
		serverExtra: limits,
		clientExtra: limits,
		services:    []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "echo", service: "echo"}},
	})
	addr := tn.client.forwards["echo"]

	start := time.Now()
	errs := make(chan error, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() { errs <- oneStream(addr, i) })
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			if failed <= 10 {
				t.Error(err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d streams failed", failed, streams)
	}
	t.Logf("%d concurrent streams in %s", streams, time.Since(start).Round(time.Millisecond))
}

// oneStream sends data unique to i through addr and checks it comes back.
func oneStream(addr string, i int) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return fmt.Errorf("stream %d: %w", i, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	rng := rand.New(rand.NewPCG(uint64(i), 42))
	msg := make([]byte, 1024+rng.IntN(16*1024))
	for j := range msg {
		msg[j] = byte(rng.Uint32())
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if e := <-werr; e != nil {
		return fmt.Errorf("stream %d: write: %w", i, e)
	}
	if err != nil {
		return fmt.Errorf("stream %d: read after %d bytes: %w", i, len(got), err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("stream %d: got %d bytes back, want %d (equal length: %v)", i, len(got), len(msg), len(got) == len(msg))
	}
	return nil
}

// Graceful stop: SIGTERM ends both agents with exit code 0, also while a
// stream is open through them.
func TestGracefulStop(t *testing.T) {
	t.Parallel()
	tn := startTunnel(t, tunnelSpec{
		services: []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}},
		forwards: []fwd{{name: "echo", service: "echo"}},
	})
	c := dial(t, tn.client.forwards["echo"], waitLimit)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	// The stream stays open while both agents stop.
	tn.server.stop(t)
	tn.client.stop(t)
	tn.server.waitLine(t, "stopped")
	tn.client.waitLine(t, "stopped")
	if _, err := io.ReadAll(c); err != nil && !isReset(err) {
		t.Errorf("local connection after stop: %v, want EOF or reset", err)
	}
}
