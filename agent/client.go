package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Reconnect backoff: doubles from backoffMin to backoffMax with jitter, and
// starts over once a session has stayed up for stableAfter.
const (
	backoffMin  = 250 * time.Millisecond
	backoffMax  = 30 * time.Second
	stableAfter = 30 * time.Second
	// How long a new local connection waits for the session while it is down.
	sessionWait = 10 * time.Second
)

// Client is tunnel-client: it keeps one session to a server up and carries
// its forwards over it, and serves the server's streams to its services.
type Client struct {
	cfg     *config.Client
	log     hclog.Logger
	tlsConf *tls.Config
	lookup  mux.Lookup
	current sessionHolder

	mu    sync.Mutex
	addrs map[string]net.Addr
	ready chan struct{}
}

// NewClient checks what can never work before anything starts.
func NewClient(cfg *config.Client, log hclog.Logger) (*Client, error) {
	m, err := ssl.LoadMaterial(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &Client{
		cfg:     cfg,
		log:     log,
		tlsConf: ssl.ClientConfig(m, cfg.TLS.ServerName),
		lookup:  services(cfg.Services, cfg.DialTimeout, true),
		current: newSessionHolder(),
		addrs:   map[string]net.Addr{},
		ready:   make(chan struct{}),
	}, nil
}

// Ready is closed once every forward listener is open.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Addr is the bound address of a forward, once Ready.
func (c *Client) Addr(name string) net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.addrs[name]
}

// Session is the current session, or nil while disconnected.
func (c *Client) Session() *mux.Session { return c.current.get() }

// Run keeps the session up and serves forwards until ctx is cancelled.
func (c *Client) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Listeners open before the first session and stay open while it is
	// down, so local applications see a stable port.
	var listeners []net.Listener
	for _, f := range c.cfg.Forwards {
		ln, err := forward.Listen(ctx, f.Listen)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("forward %q: %w", f.Name, err)
		}
		listeners = append(listeners, ln)
		c.mu.Lock()
		c.addrs[f.Name] = ln.Addr()
		c.mu.Unlock()
	}

	var wg sync.WaitGroup
	errs := make(chan error, len(listeners))
	for i, f := range c.cfg.Forwards {
		ln := listeners[i]
		c.log.Info("forward listening", "forward", f.Name, "listen", ln.Addr().String(), "service", f.Service)
		wg.Go(func() { errs <- c.serveForward(ctx, f, ln, &wg) })
	}
	close(c.ready)
	wg.Go(func() { c.keepSession(ctx, &wg) })

	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
	}
	cancel()
	wg.Wait()
	c.log.Info("stopped")
	return first
}

// keepSession connects, serves the session until it ends, and reconnects
// with capped exponential backoff and jitter, trying servers in order.
func (c *Client) keepSession(ctx context.Context, wg *sync.WaitGroup) {
	delay := backoffMin
	for attempt := 0; ctx.Err() == nil; attempt++ {
		addr := c.cfg.Servers[attempt%len(c.cfg.Servers)]
		sess, err := c.connect(ctx, addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := delay/2 + rand.N(delay/2+1)
			c.log.Warn("cannot reach server; retrying", "server", addr, "error", err, "retry_in", wait.Round(time.Millisecond))
			delay = min(2*delay, backoffMax)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		up := time.Now()
		log := c.log.With("server", addr, "peer", sess.Peer.Name())
		log.Info("session up", "agent", sess.PeerHello.Agent)
		c.current.set(sess)
		err = sess.Serve(ctx, c.lookup, func(ctx context.Context, service string, stream *mux.Stream, target net.Conn) {
			pipeAndLog(ctx, log, "", stream, target)
		})
		c.current.clear(sess)
		sess.Close()
		if ctx.Err() != nil {
			return
		}
		log.Warn("session ended; reconnecting", "reason", reasonText(err), "uptime", time.Since(up).Round(time.Second))
		if time.Since(up) >= stableAfter {
			delay = backoffMin
		}
		attempt-- // the same server first: it was working
		if !sleep(ctx, delay/2+rand.N(delay/2+1)) {
			return
		}
		delay = min(2*delay, backoffMax)
	}
}

func (c *Client) connect(ctx context.Context, addr string) (*mux.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	sess, err := establish(ctx, tls.Client(raw, c.tlsConf), mux.RoleClient, c.cfg.HandshakeTimeout, c.log)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return sess, nil
}

func (c *Client) serveForward(ctx context.Context, f config.Forward, ln net.Listener, wg *sync.WaitGroup) error {
	return forward.Serve(ctx, ln, c.log, func(local net.Conn) {
		wg.Go(func() {
			sess, err := c.current.wait(ctx, sessionWait)
			if err != nil {
				c.log.Warn("connection refused: no session to the server", "forward", f.Name, "local", local.RemoteAddr().String(), "error", err)
				local.Close()
				return
			}
			stream, err := sess.Open(ctx, f.Service)
			if err != nil {
				c.log.Warn("connection refused: cannot open stream", "forward", f.Name, "error", err)
				local.Close()
				return
			}
			pipeAndLog(ctx, c.log.With("peer", sess.Peer.Name()), f.Name, stream, local)
		})
	})
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// sessionHolder is the client's current session, with a way to wait for one.
type sessionHolder struct {
	mu      sync.Mutex
	s       *mux.Session
	changed chan struct{} // closed and replaced on every change
}

func newSessionHolder() sessionHolder { return sessionHolder{changed: make(chan struct{})} }

func (h *sessionHolder) get() *mux.Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s
}

func (h *sessionHolder) set(s *mux.Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s = s
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *sessionHolder) clear(s *mux.Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.s == s {
		h.s = nil
	}
}

var errNoSession = errors.New("session to the server is down")

// wait returns the current session, waiting up to limit for one.
func (h *sessionHolder) wait(ctx context.Context, limit time.Duration) (*mux.Session, error) {
	t := time.NewTimer(limit)
	defer t.Stop()
	for {
		h.mu.Lock()
		s, changed := h.s, h.changed
		h.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, fmt.Errorf("%w (waited %s)", errNoSession, limit)
		case <-changed:
		}
	}
}
