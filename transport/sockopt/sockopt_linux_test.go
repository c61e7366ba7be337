package sockopt

import (
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func get(t *testing.T, c net.Conn, level, opt int) int {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), level, opt) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

func pair(t *testing.T, network, addr string, o Options) (dialed, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	defer ln.Close()
	// The minimum TTL is set after connecting: loopback's SYN-ACK arrives
	// with TTL 64 and would be dropped.
	dialOpts := o
	dialOpts.MinTTL = 0
	d := net.Dialer{Timeout: 5 * time.Second, Control: Control(dialOpts)}
	c, err := d.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// Options are read back with getsockopt on real sockets.
func TestOptionsAreSet(t *testing.T) {
	o := Options{KeepAlive: 15 * time.Second, UserTimeout: 20 * time.Second, TTL: 255, MinTTL: 254, DSCP: 48, NotSentLowat: 16384}
	c, _ := pair(t, "tcp4", "127.0.0.1:0", o)
	if err := Apply(c, o); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"IP_TTL", unix.IPPROTO_IP, unix.IP_TTL, 255},
		{"IP_MINTTL", unix.IPPROTO_IP, unix.IP_MINTTL, 254},
		{"IP_TOS (CS6)", unix.IPPROTO_IP, unix.IP_TOS, 48 << 2},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 20000},
		{"TCP_NOTSENT_LOWAT", unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, 16384},
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 15},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3},
	} {
		if got := get(t, c, tc.level, tc.opt); got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestOptionsIPv6(t *testing.T) {
	o := Options{TTL: 255, DSCP: 46, MinTTL: 250}
	c, _ := pair(t, "tcp6", "[::1]:0", o)
	if err := Apply(c, o); err != nil {
		t.Fatal(err)
	}
	if got := get(t, c, unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS); got != 255 {
		t.Errorf("hop limit %d", got)
	}
	if got := get(t, c, unix.IPPROTO_IPV6, unix.IPV6_TCLASS); got != 46<<2 {
		t.Errorf("tclass %d", got)
	}
	if got := get(t, c, unix.IPPROTO_IPV6, unix.IPV6_MINHOPCOUNT); got != 250 {
		t.Errorf("min hop count %d", got)
	}
}

// A minimum TTL above what arrives drops the connection attempt: loopback
// packets leave with TTL 64, so IP_MINTTL 255 on the listener refuses them.
func TestMinTTLRefusesLowTTL(t *testing.T) {
	lc := net.ListenConfig{Control: Control(Options{MinTTL: 255, DSCP: -1})}
	ln, err := lc.Listen(t.Context(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Timeout: 500 * time.Millisecond, Control: Control(Options{TTL: 64, DSCP: -1})}
	if c, err := d.Dial("tcp4", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("connection with TTL 64 passed a minimum TTL of 255")
	}
	d = net.Dialer{Timeout: 2 * time.Second, Control: Control(Options{TTL: 255, DSCP: -1})}
	c, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatalf("TTL 255 refused: %v", err)
	}
	c.Close()
}

// MinRTT reads the kernel's least round trip of a real connection: over
// loopback, more than nothing and far less than a second. Anything but a
// TCP connection has none.
func TestMinRTTOfLoopbackConnection(t *testing.T) {
	c, s := pair(t, "tcp4", "127.0.0.1:0", Unset)
	msg := make([]byte, 4096)
	for range 20 { // acknowledged round trips, samples for the kernel
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(msg[:1]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, msg[:1]); err != nil {
			t.Fatal(err)
		}
	}
	for _, conn := range []net.Conn{c, s} {
		if d := MinRTT(conn); d <= 0 || d >= time.Second {
			t.Errorf("%s: MinRTT %s, want within (0, 1s)", conn.LocalAddr(), d)
		}
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if d := MinRTT(a); d != 0 {
		t.Errorf("MinRTT of a pipe: %s, want 0", d)
	}
}

// waitQueues reads c's queues until ok says they are as expected, for at
// most 10 s (loopback delivers at once; the bound is for a loaded host).
func waitQueues(t *testing.T, c net.Conn, what string, ok func(Queues) bool) Queues {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, read := ReadQueues(c)
		if !read {
			t.Fatalf("ReadQueues of a loopback TCP connection: not read")
		}
		if ok(q) {
			return q
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: queues %+v", what, q)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestQueuesOfLoopbackConnection(t *testing.T) {
	dialed, accepted := pair(t, "tcp4", "127.0.0.1:0", Unset)
	defer dialed.Close()
	defer accepted.Close()

	// Unread bytes wait in the receiver's queue, exactly as many as sent.
	msg := make([]byte, 10000)
	if _, err := dialed.Write(msg); err != nil {
		t.Fatal(err)
	}
	q := waitQueues(t, accepted, "10000 bytes unread", func(q Queues) bool { return q.Unread == len(msg) })
	if q.ReceiveBuffer <= 0 || q.SendBuffer <= 0 {
		t.Fatalf("buffer sizes not read: %+v", q)
	}

	// A reader that stops: the sender's writes block once both buffers
	// are full, and what it wrote waits in its send queue.
	written := len(msg)
	chunk := make([]byte, 64<<10)
	for {
		dialed.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := dialed.Write(chunk)
		written += n
		if err != nil {
			break
		}
	}
	dialed.SetWriteDeadline(time.Time{})
	sq, ok := ReadQueues(dialed)
	if !ok || sq.SendQueue <= 0 {
		t.Fatalf("sender blocked by a reader that stopped: queues %+v (read %v)", sq, ok)
	}
	rq, _ := ReadQueues(accepted)
	if rq.Unread <= len(msg) {
		t.Fatalf("receiver of a blocked sender: queues %+v", rq)
	}

	// Reading all of it empties both queues.
	if _, err := io.ReadFull(accepted, make([]byte, written)); err != nil {
		t.Fatal(err)
	}
	waitQueues(t, accepted, "receiver drained", func(q Queues) bool { return q.Unread == 0 })
	waitQueues(t, dialed, "sender acknowledged", func(q Queues) bool { return q.SendQueue == 0 })
}

func TestQueuesOnlyOfTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if q, ok := ReadQueues(a); ok {
		t.Fatalf("a pipe has no kernel queues, read %+v", q)
	}
	dialed, accepted := pair(t, "tcp4", "127.0.0.1:0", Unset)
	accepted.Close()
	dialed.Close()
	if q, ok := ReadQueues(dialed); ok {
		t.Fatalf("a closed connection: read %+v", q)
	}
}
