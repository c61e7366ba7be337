package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Server is tunnel-server: it accepts clients, serves their streams, and
// carries its own forwards to connected clients.
type Server struct {
	cfg      *config.Server
	log      hclog.Logger
	tlsConf  *tls.Config
	lookup   mux.Lookup
	sessions sessionSet

	mu    sync.Mutex
	addrs map[string]net.Addr // listen addresses, by "tunnel" or forward name
	ready chan struct{}
}

// NewServer checks what can never work (unreadable or mismatched key, bad
// CA bundle) before anything listens.
func NewServer(cfg *config.Server, log hclog.Logger) (*Server, error) {
	m, err := ssl.LoadMaterial(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA)
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return &Server{
		cfg:     cfg,
		log:     log,
		tlsConf: ssl.ServerConfig(m),
		lookup:  services(cfg.Services, cfg.DialTimeout, false),
		addrs:   map[string]net.Addr{},
		ready:   make(chan struct{}),
	}, nil
}

// Ready is closed once every listener is open.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the bound address of the tunnel listener ("tunnel") or of a
// forward (by name), once Ready.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Run serves until ctx is cancelled (returns nil) or a listener fails.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	tunnelLn, err := forward.Listen(ctx, s.cfg.Listen)
	if err != nil {
		return err
	}
	listeners := []net.Listener{tunnelLn}
	for _, f := range s.cfg.Forwards {
		ln, err := forward.Listen(ctx, f.Listen)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("forward %q: %w", f.Name, err)
		}
		listeners = append(listeners, ln)
	}
	s.mu.Lock()
	s.addrs["tunnel"] = tunnelLn.Addr()
	for i, f := range s.cfg.Forwards {
		s.addrs[f.Name] = listeners[i+1].Addr()
	}
	s.mu.Unlock()

	var wg sync.WaitGroup
	errs := make(chan error, len(listeners))
	wg.Go(func() { errs <- s.serveTunnel(ctx, tunnelLn, &wg) })
	for i, f := range s.cfg.Forwards {
		ln := listeners[i+1]
		s.log.Info("forward listening", "forward", f.Name, "listen", ln.Addr().String(), "client", f.Client, "service", f.Service)
		wg.Go(func() { errs <- s.serveForward(ctx, f, ln, &wg) })
	}
	s.log.Info("listening", "addr", tunnelLn.Addr().String(), "services", len(s.cfg.Services), "forwards", len(s.cfg.Forwards))
	close(s.ready)

	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
	}
	cancel()
	wg.Wait()
	s.log.Info("stopped")
	return first
}

func (s *Server) serveTunnel(ctx context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	// Bound concurrent handshakes: when all slots are busy the accept loop
	// waits and new connections queue in the kernel backlog, so a flood of
	// stalled handshakes costs at most MaxHandshakes goroutines, each for at
	// most HandshakeTimeout.
	slots := make(chan struct{}, s.cfg.MaxHandshakes)
	return forward.Serve(ctx, ln, s.log, func(conn net.Conn) {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			conn.Close()
			return
		}
		wg.Go(func() { s.serveConn(ctx, conn, slots) })
	})
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn, slots chan struct{}) {
	remote := conn.RemoteAddr().String()
	tconn := tls.Server(conn, s.tlsConf)
	sess, err := establish(ctx, tconn, mux.RoleServer, s.cfg.HandshakeTimeout, s.log)
	<-slots
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("client refused", "remote", remote, "error", err)
		}
		conn.Close()
		return
	}
	peer := sess.Peer.Name()
	log := s.log.With("peer", peer, "remote", remote)
	// A client that reconnects replaces its old session at once, so its
	// forwards never see a stale "already connected".
	if old := s.sessions.put(peer, sess); old != nil {
		log.Info("client reconnected; closing its previous session")
		old.CloseWithReason(errors.New("replaced by a new session from the same client"))
	}
	log.Info("session up", "agent", sess.PeerHello.Agent)
	err = sess.Serve(ctx, s.lookup, func(ctx context.Context, service string, stream *mux.Stream, target net.Conn) {
		pipeAndLog(ctx, log, "", stream, target)
	})
	s.sessions.remove(peer, sess)
	sess.Close()
	if ctx.Err() == nil {
		log.Info("session ended", "reason", reasonText(err))
	}
}

func (s *Server) serveForward(ctx context.Context, f config.Forward, ln net.Listener, wg *sync.WaitGroup) error {
	return forward.Serve(ctx, ln, s.log, func(local net.Conn) {
		wg.Go(func() {
			sess := s.sessions.find(f.Client)
			if sess == nil {
				s.log.Warn("connection refused: client not connected", "forward", f.Name, "client", f.Client, "local", local.RemoteAddr().String())
				local.Close()
				return
			}
			stream, err := sess.Open(ctx, f.Service)
			if err != nil {
				s.log.Warn("connection refused: cannot open stream", "forward", f.Name, "client", f.Client, "error", err)
				local.Close()
				return
			}
			pipeAndLog(ctx, s.log.With("peer", sess.Peer.Name()), f.Name, stream, local)
		})
	})
}

func reasonText(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// sessionSet holds the connected clients' sessions by identity name.
type sessionSet struct {
	mu sync.Mutex
	m  map[string]*mux.Session
}

func (ss *sessionSet) put(name string, s *mux.Session) (old *mux.Session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[string]*mux.Session{}
	}
	old = ss.m[name]
	ss.m[name] = s
	return old
}

func (ss *sessionSet) remove(name string, s *mux.Session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m[name] == s {
		delete(ss.m, name)
	}
}

// find returns a session whose peer answers to identity (CN or DNS SAN).
func (ss *sessionSet) find(identity string) *mux.Session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if s, ok := ss.m[identity]; ok {
		return s
	}
	for _, s := range ss.m {
		if s.Peer.Is(identity) {
			return s
		}
	}
	return nil
}

var _ = time.Second
