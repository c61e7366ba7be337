// Package sockopt sets the socket options the tunnel relies on: TCP
// keepalive and TCP_USER_TIMEOUT on the tunnel's own connection (a dead
// peer is noticed even while our writes sit unacknowledged), IP TTL and
// minimum TTL for GTSM (RFC 5082), DSCP marking, TCP_NOTSENT_LOWAT (unsent
// data does not pile up in the kernel behind which small messages would
// wait), and TCP_NODELAY; and it reads the kernel's recent least round
// trip of a connection (MinRTT).
package sockopt

import (
	"fmt"
	"net"
	"syscall"
	"time"
)

// Options for one socket. Zero values leave the system default, except
// DSCP, where -1 leaves it (0 is a valid code point).
type Options struct {
	KeepAlive    time.Duration // idle time before the first probe; probes then every KeepAlive/3, 3 of them
	UserTimeout  time.Duration // TCP_USER_TIMEOUT: unacknowledged data older than this kills the connection (Linux)
	TTL          int           // IP TTL / IPv6 hop limit of packets we send, 1..255
	MinTTL       int           // IP_MINTTL: drop packets arriving with a lower TTL (Linux, IPv4 and IPv6)
	DSCP         int           // DiffServ code point, 0..63; -1 leaves it
	NotSentLowat int           // TCP_NOTSENT_LOWAT in bytes (Linux, macOS)
}

// Unset is an Options that changes nothing.
var Unset = Options{DSCP: -1}

// RawSocket is c's socket, to ask the kernel about it or to call on it
// directly; nil when c has none (a pipe, a wrapped connection).
func RawSocket(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// Apply sets o on an established TCP connection.
func Apply(c net.Conn, o Options) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	if err := tc.SetNoDelay(true); err != nil {
		return fmt.Errorf("set TCP_NODELAY: %w", err)
	}
	if o.KeepAlive > 0 {
		if err := tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: o.KeepAlive, Interval: max(o.KeepAlive/3, time.Second), Count: 3}); err != nil {
			return fmt.Errorf("set TCP keepalive: %w", err)
		}
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	return Control(o)("tcp", c.RemoteAddr().String(), raw)
}

// Control returns a function for net.Dialer.Control or
// net.ListenConfig.Control, so options such as TTL apply from the very
// first packet (the SYN).
func Control(o Options) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = setAll(fd, isIPv6(address), o) })
		if err != nil {
			return err
		}
		return serr
	}
}

func isIPv6(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		host = address
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.To4() == nil
}
