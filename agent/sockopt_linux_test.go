package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func getInt(t *testing.T, c net.Conn, level, opt int) int {
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

// A service's dial carries the router-side socket control: source address
// (seen by the target), TTL for GTSM, DSCP, and a PROXY v2 header with the
// original client and the peer identity.
func TestServiceDialSocketControl(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	lookup := services([]config.Service{{
		Name: "bgp", Target: ln.Addr().String(), Source: "127.0.0.2", TTL: 255, DSCP: 48, ProxyProtocol: true,
	}}, 5*time.Second, true)
	svc, ok := lookup("bgp")
	if !ok {
		t.Fatal("no service")
	}
	peer := ssl.Identity{Leaf: &x509.Certificate{}}
	peer.Leaf.Subject.CommonName = "edge-1"
	conn, err := svc.Dial(context.Background(), mux.Request{Service: "bgp", Source: "192.0.2.9:40000", Peer: peer})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got := getInt(t, conn, unix.IPPROTO_IP, unix.IP_TTL); got != 255 {
		t.Errorf("IP_TTL = %d, want 255", got)
	}
	if got := getInt(t, conn, unix.IPPROTO_IP, unix.IP_TOS); got != 48<<2 {
		t.Errorf("IP_TOS = %d, want CS6", got)
	}
	target := <-accepted
	defer target.Close()
	if host, _, _ := net.SplitHostPort(target.RemoteAddr().String()); host != "127.0.0.2" {
		t.Errorf("target sees the dial from %s, want the configured source 127.0.0.2", host)
	}
	// The target reads the PROXY v2 header first.
	r := bufio.NewReader(target)
	head := make([]byte, 16)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(head, []byte("\r\n\r\n\x00\r\nQUIT\n")) || head[13] != 0x11 {
		t.Fatalf("not a PROXY v2 TCP4 header: % x", head)
	}
	body := make([]byte, binary.BigEndian.Uint16(head[14:]))
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body[:4], []byte{192, 0, 2, 9}) || binary.BigEndian.Uint16(body[8:]) != 40000 {
		t.Errorf("original source in header: % x", body[:12])
	}
	if string(body[15:]) != "edge-1" {
		t.Errorf("identity TLV %q", body[12:])
	}
	conn.Write([]byte("after"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(r, got); err != nil || string(got) != "after" {
		t.Fatalf("data after header: %q %v", got, err)
	}
}

// The tunnel's connections as the server holds them: lane 0 of a client
// with two bulk lanes and the control session keep a short unsent queue
// in the kernel (TCP_NOTSENT_LOWAT), the transfers' lane does not, nor
// the one lane of a client that holds one.
func TestTunnelConnectionsNotSentLowat(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge", "solo"`})
	f.startClient(t, pki.Options{CommonName: "edge"}, `bulk_connections = 2
forward "echo" {
  listen = "127.0.0.1:0"
}
forward "ctl" {
  listen  = "127.0.0.1:0"
  service = "echo"
  class   = "control"
}
`)
	f.startClient(t, pki.Options{CommonName: "solo"}, "bulk_connections = 1\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	lowat := func(name, class string, lane int) int {
		t.Helper()
		var conn net.Conn
		waitFor(t, name+"'s "+class+" lane "+strconv.Itoa(lane), func() bool {
			f.srv.sessions.mu.Lock()
			defer f.srv.sessions.mu.Unlock()
			for k, s := range f.srv.sessions.m {
				if s.Peer.Name() == name && k.class == class && k.lane == lane {
					conn = f.srv.sessions.raw[k]
				}
			}
			return conn != nil
		})
		return getInt(t, conn, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	}
	const unbounded = -1 // not set: the kernel's default, UINT_MAX
	for _, c := range []struct {
		name, class string
		lane, want  int
	}{
		{"edge", classBulk, 1, unbounded},
		{"edge", classBulk, 0, laneZeroLowat},
		{"edge", classControl, 0, 16 << 10},
		{"solo", classBulk, 0, unbounded},
	} {
		// Set a moment after the session is listed (lane 0's once lane 1
		// is up): the last value read within a few seconds.
		got := lowat(c.name, c.class, c.lane)
		for deadline := time.Now().Add(5 * time.Second); got != c.want && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			got = lowat(c.name, c.class, c.lane)
		}
		if got != c.want {
			t.Errorf("%s's %s lane %d: TCP_NOTSENT_LOWAT %d, want %d", c.name, c.class, c.lane, got, c.want)
		}
	}
}
