package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
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
	log      hclog.Logger
	tls      *ssl.Reloader
	state    atomic.Pointer[clientState]
	current  sessionHolder
	reloadMu sync.Mutex

	mu       sync.Mutex
	forwards *forwardSet
	ready    chan struct{}
}

type clientState struct {
	cfg    *config.Client
	lookup mux.Lookup
}

// NewClient checks what can never work before anything starts.
func NewClient(cfg *config.Client, log hclog.Logger) (*Client, error) {
	p, err := ssl.LoadPolicy(clientPolicySpec(cfg))
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	c := &Client{log: log, tls: ssl.NewReloader(p), current: newSessionHolder(), ready: make(chan struct{})}
	c.state.Store(&clientState{cfg: cfg, lookup: services(cfg.Services, cfg.DialTimeout, true)})
	return c, nil
}

func clientPolicySpec(cfg *config.Client) ssl.PolicySpec {
	spec := ssl.PolicySpec{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA, CRLs: crlFiles(cfg.TLS), CRLStale: crlStale(cfg.TLS)}
	if verify := verifyRules(cfg.TLS); len(verify) > 0 {
		rules, _ := ssl.ParseRules(verify) // validated with the config
		spec.Admit = func(id ssl.Identity) error {
			if _, ok := rules.Match(id); ok {
				return nil
			}
			return fmt.Errorf("server %q matches none of tls.verify %v", id.Name(), verify)
		}
	}
	return spec
}

func (c *Client) cfg() *config.Client { return c.state.Load().cfg }

func (c *Client) lookup(name string) (mux.Service, bool) { return c.state.Load().lookup(name) }

// Ready is closed once every forward listener is open.
func (c *Client) Ready() <-chan struct{} { return c.ready }

// Addr is the bound address of a forward, once Ready.
func (c *Client) Addr(name string) net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forwards == nil {
		return nil
	}
	return c.forwards.addr(name)
}

// Session is the current session, or nil while disconnected.
func (c *Client) Session() *mux.Session { return c.current.get() }

// Run keeps the session up and serves forwards until ctx is cancelled, then
// stops gracefully like Server.Run.
func (c *Client) Run(ctx context.Context) error {
	streamCtx, killStreams := context.WithCancel(context.WithoutCancel(ctx))
	defer killStreams()
	acceptCtx, stopAccepting := context.WithCancel(ctx)
	defer stopAccepting()

	// Listeners open before the first session and stay open while it is
	// down, so local applications see a stable port.
	var conns sync.WaitGroup
	fs := newForwardSet(c.log, &conns, c.serveForward)
	if err := fs.start(acceptCtx, streamCtx, c.cfg().Forwards); err != nil {
		fs.stop()
		return err
	}
	c.mu.Lock()
	c.forwards = fs
	c.mu.Unlock()
	close(c.ready)

	var keeper sync.WaitGroup
	keeper.Go(func() { c.keepSession(acceptCtx, streamCtx) })
	keeper.Go(func() { warnExpiries(acceptCtx, expiryWarning(c.cfg()), c.tls.Policy, c.log) })
	if every := reloadInterval(c.cfg()); every > 0 {
		keeper.Go(func() {
			watchFiles(acceptCtx, every, func() []string {
				cfg := c.cfg()
				return append([]string{cfg.Path, cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA}, crlFiles(cfg.TLS)...)
			}, c.Reload, c.log)
		})
	}
	<-ctx.Done()
	fs.stop()
	if sess := c.current.get(); sess != nil && sess.NumStreams() > 0 {
		limit := drainTimeout(c.cfg())
		c.log.Info("stopping: draining streams", "streams", sess.NumStreams(), "drain_timeout", limit)
		dctx, cancel := context.WithTimeout(context.Background(), limit)
		if err := sess.Drain(dctx); err != nil {
			c.log.Warn("drain cut short", "error", err)
		}
		cancel()
	}
	killStreams()
	keeper.Wait()
	conns.Wait()
	c.log.Info("stopped")
	return nil
}

// Reload re-reads the config file and its TLS files; see Server.Reload. The
// session is closed (and reconnects) if the server no longer passes.
func (c *Client) Reload() error {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	old := c.cfg()
	cfg, err := config.LoadClient(old.Path)
	if err != nil {
		return err
	}
	p, err := ssl.LoadPolicy(clientPolicySpec(cfg))
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	changes := describeChanges(c.tls.Policy(), p, old.Services, cfg.Services, old.Forwards, cfg.Forwards)
	if !slices.Equal(old.Servers, cfg.Servers) || old.TLS.ServerName != cfg.TLS.ServerName {
		changes += "; servers (used from the next connection)"
	}
	c.tls.Store(p)
	c.state.Store(&clientState{cfg: cfg, lookup: services(cfg.Services, cfg.DialTimeout, true)})
	c.mu.Lock()
	fs := c.forwards
	c.mu.Unlock()
	var ferr error
	if fs != nil {
		ferr = fs.apply(cfg.Forwards)
	}
	c.log.Info("reloaded", "changes", changes)
	if sess := c.current.get(); sess != nil {
		if err := p.Recheck(sess.Peer, x509.ExtKeyUsageServerAuth, time.Now()); err != nil {
			c.log.Warn("closing session: the server no longer passes", "peer", sess.Peer.Name(), "reason", err)
			sess.CloseWithReason(fmt.Errorf("closed by reload: %w", err))
		}
	}
	return ferr
}

// keepSession connects, serves the session until it ends, and reconnects
// with capped exponential backoff and jitter, trying servers in order.
func (c *Client) keepSession(ctx, streamCtx context.Context) {
	delay := backoffMin
	for attempt := 0; ctx.Err() == nil; attempt++ {
		servers := c.cfg().Servers
		addr := servers[attempt%len(servers)]
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
		err = sess.Serve(streamCtx, c.lookup, func(ctx context.Context, service string, stream *mux.Stream, target net.Conn) {
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
	cfg := c.cfg()
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	sess, err := establish(ctx, tls.Client(raw, c.tls.ClientConfig(cfg.TLS.ServerName)), mux.RoleClient, cfg.HandshakeTimeout, c.log)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return sess, nil
}

func (c *Client) serveForward(ctx context.Context, f config.Forward, local net.Conn) {
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
