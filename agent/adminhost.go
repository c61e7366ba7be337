package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"

	"github.com/tunnelworks/tunnel/admin"
)

// adminHost owns the admin listener so that a reload can start, move or
// stop it. Its context is the agent's accept context: when Run stops
// accepting, the admin listener stops too.
type adminHost struct {
	srv    *admin.Server // set by Run before start
	listen listenFunc    // set by Run before start

	mu      sync.Mutex
	ctx     context.Context // nil until start
	conf    string          // the configured address ("" = off)
	ln      net.Listener
	cancel  context.CancelFunc
	done    chan struct{} // closed when the current Serve returns
	stopped bool
}

// start opens the configured listener (if any) for the agent's lifetime ctx.
func (h *adminHost) start(ctx context.Context, addr string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ctx = ctx
	if addr == "" {
		return nil
	}
	ln, err := h.listen(ctx, addr)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	h.serve(ln)
	h.conf = addr
	return nil
}

// serve runs the admin server on ln until stopped; h.mu is held.
func (h *adminHost) serve(ln net.Listener) {
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan struct{})
	h.ln, h.cancel, h.done = ln, cancel, done
	go func() {
		defer close(done)
		_ = h.srv.Serve(ctx, ln)
	}()
}

// close stops the current listener and waits until its port is closed and
// its requests are done (Serve's shutdown is bounded); h.mu is held.
func (h *adminHost) close() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
	}
	h.ln, h.cancel, h.done, h.conf = nil, nil, nil, ""
}

// apply moves the listener to addr ("" stops it) and says what it did, for
// the reload's log line. On failure the old listener keeps serving.
func (h *adminHost) apply(addr string) (change string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ctx == nil || h.stopped || addr == h.conf {
		return "", nil // not running yet (Run starts it from the new config), or unchanged
	}
	if addr == "" {
		old := h.ln.Addr().String()
		h.close()
		return "admin listener on " + old + " stopped", nil
	}
	ln, err := h.listen(h.ctx, addr)
	if err != nil && h.ln != nil && samePort(addr, h.ln.Addr()) {
		// The new address overlaps the old one (same port, another host):
		// free it and try once more, else reopen the old one.
		oldConf, old := h.conf, h.ln.Addr().String()
		h.close()
		if ln, err = h.listen(h.ctx, addr); err != nil {
			if back, berr := h.listen(h.ctx, old); berr == nil {
				h.serve(back)
				h.conf = oldConf
				return "", fmt.Errorf("admin: %w (still on %s)", err, old)
			}
			return "admin listener on " + old + " stopped", fmt.Errorf("admin: %w (and the old address %s could not be reopened)", err, old)
		}
		h.serve(ln)
		h.conf = addr
		return "admin listener moved from " + old + " to " + ln.Addr().String(), nil
	}
	if err != nil {
		if h.ln != nil {
			return "", fmt.Errorf("admin: %w (still on %s)", err, h.ln.Addr())
		}
		return "", fmt.Errorf("admin: %w", err)
	}
	if h.ln == nil {
		h.serve(ln)
		h.conf = addr
		return "admin listener started on " + ln.Addr().String(), nil
	}
	old := h.ln.Addr().String()
	h.close()
	h.serve(ln)
	h.conf = addr
	return "admin listener moved from " + old + " to " + ln.Addr().String(), nil
}

// addr is the bound address, or nil when off.
func (h *adminHost) addr() net.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ln == nil {
		return nil
	}
	return h.ln.Addr()
}

// stop closes the listener for good and waits for its Serve goroutine.
func (h *adminHost) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	h.close()
}

// samePort reports whether addr names the port ln is bound to.
func samePort(addr string, ln net.Addr) bool {
	_, port, err := net.SplitHostPort(addr)
	tcp, ok := ln.(*net.TCPAddr)
	return err == nil && ok && port == strconv.Itoa(tcp.Port)
}
