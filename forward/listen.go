package forward

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// Serve accepts connections on ln and hands each to handle, on the calling
// goroutine: handle must not block for long (start a goroutine), or may
// block on purpose to apply back-pressure. Temporary accept errors (out of
// file descriptors, aborted connections) back off instead of spinning.
// Serve closes ln and returns nil when ctx is cancelled.
func Serve(ctx context.Context, ln net.Listener, log hclog.Logger, handle func(net.Conn)) error {
	// ln is closed when Serve returns, whoever closes it: a Close while
	// another is in progress returns at once, before the socket is closed,
	// so when ctx's Close has begun Serve waits for it to end. Callers
	// count on the port being free (a removed forward refusing
	// connections, a moved one taking the address) once Serve returns.
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(closed)
		_ = ln.Close()
	})
	defer func() {
		if stop() {
			_ = ln.Close()
		} else {
			<-closed
		}
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err == nil {
			delay = 0
			handle(conn)
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if !temporary(err) {
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		if delay == 0 {
			// Once per burst: a process out of file descriptors would
			// otherwise log hundreds of lines a second.
			log.Warn("accept failing; backing off until it recovers", "listen", ln.Addr().String(), "error", err)
		}
		delay = min(max(2*delay, 5*time.Millisecond), time.Second)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Listen opens a TCP listener; the error names the address and a likely fix.
// opts apply to the listening socket and so to every accepted connection
// (a minimum TTL drops packets from farther than allowed before accept).
func Listen(ctx context.Context, addr string, opts ...sockopt.Options) (net.Listener, error) {
	var lc net.ListenConfig
	if len(opts) > 0 {
		lc.Control = sockopt.Control(opts[0])
	}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("listen on %s: address already in use (another process, or another forward, holds it)", addr)
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("listen on %s: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)", addr)
		}
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln, nil
}

// DialOptions shape the connection to a target.
type DialOptions struct {
	Timeout time.Duration
	// Source is the local IP to dial from ("" = the system's choice): BGP
	// peers accept only their configured neighbour address.
	Source string
	// Socket options applied before connect, so TTL and DSCP hold from the SYN.
	Sock sockopt.Options
}

// Dial connects to a target. TCP_NODELAY is on (Go's default): the tunnel
// must not add Nagle delay to small control messages.
func Dial(ctx context.Context, addr string, o DialOptions) (net.Conn, error) {
	d := net.Dialer{Timeout: o.Timeout, KeepAlive: 15 * time.Second, Control: sockopt.Control(o.Sock)}
	if o.Source != "" {
		ip := net.ParseIP(o.Source)
		if ip == nil {
			return nil, fmt.Errorf("dial %s: source %q is not an IP address", addr, o.Source)
		}
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			return nil, fmt.Errorf("dial %s: %s", addr, unwrapSyscall(oe.Err))
		}
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}

// unwrapSyscall shortens "connect: connection refused" to "connection refused".
func unwrapSyscall(err error) string {
	var se *net.DNSError
	if errors.As(err, &se) {
		return se.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
