package forward

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/tunnelworks/tunnel/transport/sockopt"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns both ends of a real loopback TCP connection.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// pipeline is app <-> [a  Pipe  b] <-> target, all real TCP.
type pipeline struct {
	app, target *net.TCPConn
	done        chan Result
}

func startPipe(t *testing.T, ctx context.Context) *pipeline { return startPipeIdle(t, ctx, 0) }

func startPipeIdle(t *testing.T, ctx context.Context, idle time.Duration) *pipeline {
	app, a := tcpPair(t)
	b, target := tcpPair(t)
	p := &pipeline{app: app, target: target, done: make(chan Result, 1)}
	go func() { p.done <- Pipe(ctx, a, b, nil, idle) }()
	return p
}

func (p *pipeline) result(t *testing.T) Result {
	t.Helper()
	select {
	case r := <-p.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("pipe did not end")
		return Result{}
	}
}

func TestPipeHalfCloseWithDelayedReply(t *testing.T) {
	p := startPipe(t, context.Background())
	request := []byte("GET / HTTP/1.0\r\n\r\n")
	if _, err := p.app.Write(request); err != nil {
		t.Fatal(err)
	}
	if err := p.app.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(p.target) // EOF only if the half-close crossed
	if err != nil || !bytes.Equal(got, request) {
		t.Fatalf("target read %q, %v", got, err)
	}
	time.Sleep(300 * time.Millisecond) // the reply comes after the request side closed
	reply := bytes.Repeat([]byte("reply "), 100_000)
	if _, err := p.target.Write(reply); err != nil {
		t.Fatal(err)
	}
	p.target.Close()
	back, err := io.ReadAll(p.app)
	if err != nil || !bytes.Equal(back, reply) {
		t.Fatalf("app read %d bytes (want %d), %v", len(back), len(reply), err)
	}
	r := p.result(t)
	if r.Err != nil || r.AToB != int64(len(request)) || r.BToA != int64(len(reply)) {
		t.Fatalf("result %+v", r)
	}
}

func TestPipeBothWaysAtOnceChecksummed(t *testing.T) {
	p := startPipe(t, context.Background())
	const size = 32 << 20
	send := func(c *net.TCPConn, seed uint64) [32]byte { return sendRandom(t, c, size, byte(seed)) }
	recv := func(c *net.TCPConn) ([32]byte, int64) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		return [32]byte(h.Sum(nil)), n
	}
	sums := make(chan [32]byte, 2)
	go func() { sums <- send(p.app, 1) }()
	go func() { sums <- send(p.target, 2) }()
	type got struct {
		sum [32]byte
		n   int64
	}
	atTarget := make(chan got, 1)
	go func() { s, n := recv(p.target); atTarget <- got{s, n} }()
	atApp, nApp := recv(p.app)
	gotTarget := <-atTarget
	s1, s2 := <-sums, <-sums
	if nApp != size || gotTarget.n != size {
		t.Fatalf("moved %d and %d bytes, want %d each", gotTarget.n, nApp, size)
	}
	if !(atApp == s1 || atApp == s2) || !(gotTarget.sum == s1 || gotTarget.sum == s2) || atApp == gotTarget.sum {
		t.Fatal("checksum mismatch")
	}
	if r := p.result(t); r.Err != nil {
		t.Fatal(r.Err)
	}
}

func TestPipeResetByTargetAbortsApp(t *testing.T) {
	p := startPipe(t, context.Background())
	if _, err := p.app.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(p.target, buf); err != nil {
		t.Fatal(err)
	}
	p.target.SetLinger(0)
	p.target.Close() // RST
	r := p.result(t)
	if r.Err == nil {
		t.Fatal("pipe reported a clean end after a reset")
	}
	// The app must see an abortive close, not a clean EOF.
	p.app.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := p.app.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("app read after target reset: %v, want connection reset", err)
	}
}

func TestPipeCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	p := startPipe(t, ctx)
	if _, err := p.app.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	cancel()
	r := p.result(t)
	if !errors.Is(r.Err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", r.Err)
	}
	if Classify(r.Err) != "cancelled" {
		t.Fatalf("classify = %q", Classify(r.Err))
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "closed"},
		{&ReadError{Err: syscall.ECONNRESET}, "reset"},
		{&WriteError{Err: syscall.EPIPE}, "broken pipe"},
		{&ReadError{Err: net.ErrClosed}, "closed locally"},
		{context.Canceled, "cancelled"},
		{errors.New("odd"), "error"},
	} {
		if got := Classify(tc.err); got != tc.want {
			t.Errorf("Classify(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// flakyListener fails Accept with EMFILE a few times, as a process out of
// file descriptors does, then behaves.
type flakyListener struct {
	net.Listener
	failures int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures > 0 {
		l.failures--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestServeBacksOffOnTemporaryErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fl := &flakyListener{Listener: ln, failures: 5}
	got := make(chan net.Conn, 1)
	served := make(chan error, 1)
	start := time.Now()
	go func() { served <- Serve(ctx, fl, hclog.NewNullLogger(), func(c net.Conn) { got <- c }) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case s := <-got:
		s.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not recover from EMFILE")
	}
	// 5 failures back off 5+10+20+40+80 ms: it waited rather than spun.
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("recovered after %s: no backoff", waited)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
}

func TestDialRefusedSaysSo(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(context.Background(), addr, DialOptions{Timeout: time.Second, Sock: sockopt.Unset})
	if err == nil || err.Error() != "dial "+addr+": connection refused" {
		t.Fatalf("err = %v", err)
	}
}

func TestListenInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Listen(context.Background(), ln.Addr().String())
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("already in use")) {
		t.Fatalf("err = %v", err)
	}
}

func TestPipeIdleTimeout(t *testing.T) {
	// A second's timeout and a byte every 100 ms for 1.5 s: a stall of
	// most of a second on a loaded machine still leaves the pipe busy.
	p := startPipeIdle(t, context.Background(), time.Second)
	// Traffic keeps it alive past the timeout...
	for i := 0; i < 15; i++ {
		p.app.Write([]byte("x"))
		io.ReadFull(p.target, make([]byte, 1))
		time.Sleep(100 * time.Millisecond)
	}
	select {
	case r := <-p.done:
		t.Fatalf("pipe ended while busy: %v", r.Err)
	default:
	}
	// ...silence ends it.
	start := time.Now()
	r := p.result(t)
	if !errors.Is(r.Err, ErrIdle) || Classify(r.Err) != "idle timeout" {
		t.Fatalf("err = %v", r.Err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Fatalf("idle pipe ended after %s", waited)
	}
}

// sendRandom writes size random bytes (from seed) to c in 64 KiB writes,
// half-closes it and returns the bytes' SHA-256.
func sendRandom(t *testing.T, c *net.TCPConn, size int, seed byte) [32]byte {
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{seed})
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		_, _ = rng.Read(buf)
		h.Write(buf)
		if _, err := c.Write(buf); err != nil {
			t.Error(err)
			break
		}
	}
	c.CloseWrite()
	return [32]byte(h.Sum(nil))
}

// lendingConn is a TCP connection that lends the pipe its buffers, as a
// resumable tunnel stream does, and counts them.
type lendingConn struct {
	*net.TCPConn
	lent, takenBack, bytes atomic.Int64
}

func (c *lendingConn) LendBuffer() []byte {
	c.lent.Add(1)
	return make([]byte, bufSize)
}

func (c *lendingConn) WriteLent(b []byte) (int, error) {
	c.takenBack.Add(1)
	c.bytes.Add(int64(len(b)))
	return c.TCPConn.Write(b)
}

// Bulk data toward a destination that lends buffers is read into them,
// every byte arrives, and every lent buffer is taken back (the last one
// empty, at the end of the data).
func TestPipeReadsIntoLentBuffers(t *testing.T) {
	app, a := tcpPair(t)
	b, target := tcpPair(t)
	dst := &lendingConn{TCPConn: b}
	done := make(chan Result, 1)
	go func() { done <- Pipe(context.Background(), a, dst, nil, 0) }()
	const size = 8 << 20
	want := make(chan [32]byte, 1)
	go func() { want <- sendRandom(t, app, size, 7) }()
	h := sha256.New()
	n, err := io.Copy(h, target)
	if err != nil || n != size {
		t.Fatalf("target got %d bytes (%v), want %d", n, err, size)
	}
	if [32]byte(h.Sum(nil)) != <-want {
		t.Fatal("checksum mismatch")
	}
	target.Close()
	app.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("pipe did not end")
	}
	if lent, back := dst.lent.Load(), dst.takenBack.Load(); lent == 0 || lent != back {
		t.Fatalf("%d buffers lent, %d taken back: want some, all taken back", lent, back)
	}
	// All but the first reads (into the pipe's small buffer, until bulk
	// shows) go into lent buffers.
	if moved := dst.bytes.Load(); moved < size/2 {
		t.Fatalf("%d of %d bytes written from lent buffers", moved, size)
	}
}
