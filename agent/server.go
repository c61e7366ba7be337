package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/handover"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/ratelog"
	"github.com/tunnelworks/tunnel/resume"
	"github.com/tunnelworks/tunnel/transport/sockopt"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Server is tunnel-server: it accepts clients, serves their streams, and
// carries its own forwards to connected clients.
type Server struct {
	log      hclog.Logger
	limited  *ratelog.Log
	metrics  *admin.Metrics
	started  time.Time
	lastErr  lastError
	tls      *ssl.Reloader
	state    atomic.Pointer[serverState]
	sessions sessionSet
	reloadMu sync.Mutex    // one reload at a time
	resume   *resume.Table // streams that outlive their session

	admin    adminHost
	handover handoverHost
	noLanes  bool // announce no lanes, as a server before them (tests only)
	// beforePut, if set, runs as a session that passed its handshake and
	// admission is about to be put in the set (tests only).
	beforePut func(class string, lane int)

	mu       sync.Mutex
	tunnel   net.Addr
	forwards *forwardSet
	ready    chan struct{}

	manageProcs bool // ManageGoProcs: Run sets the Go scheduler's Ps (procs.go)
}

// serverState is everything a reload replaces, published in one store.
type serverState struct {
	cfg    *config.Server
	lookup mux.Lookup
	admit  func(ssl.Identity) error
	offer  func(ssl.Identity) map[string]string
}

// NewServer checks what can never work (unreadable or mismatched key, bad
// CA bundle, bad CRL) before anything listens.
func NewServer(cfg *config.Server, log hclog.Logger) (*Server, error) {
	s := &Server{log: log, limited: ratelog.New(log, time.Minute), metrics: admin.NewMetrics("server"), started: time.Now(), ready: make(chan struct{})}
	st := newServerState(cfg)
	p, err := loadPolicy(serverPolicySpec(cfg, s.admit), x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	s.state.Store(st)
	s.tls = ssl.NewReloader(p)
	s.resume = newResumeTable(cfg.Settings, log, s.metrics, "", s.resumeBound)
	s.metrics.WatchReceiveBuffered(func() int { return s.sumSessions((*mux.Session).ReceiveBuffered) })
	s.metrics.WatchWriteQueued(func() int { return s.sumSessions((*mux.Session).WriteQueued) })
	s.metrics.WatchKernelHeld(func() int { return s.sumSessions((*mux.Session).KernelHeld) })
	return s, nil
}

func serverPolicySpec(cfg *config.Server, admit func(ssl.Identity) error) ssl.PolicySpec {
	return ssl.PolicySpec{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA, CRLs: cfg.TLS.CRL, CRLStale: cfg.TLS.CRLStale, Admit: admit}
}

func newServerState(cfg *config.Server) *serverState {
	st := &serverState{cfg: cfg, lookup: services(cfg.Services, cfg.DialTimeout, false), offer: offered(cfg.Services, false)}
	var rules ssl.Rules
	for _, svc := range cfg.Services {
		rules = append(rules, svc.AllowRules...)
	}
	var clients []func(ssl.Identity) bool
	for _, f := range cfg.Forwards {
		clients = append(clients, clientMatcher(f.Client))
	}
	// A client may connect when some service allows it or some forward is
	// carried by it; anyone else is refused in the handshake, resumed or not.
	st.admit = func(id ssl.Identity) error {
		if _, ok := rules.Match(id); ok {
			return nil
		}
		for _, matches := range clients {
			if matches(id) {
				return nil
			}
		}
		return fmt.Errorf("%q is not allowed by any service's allow list nor named by any forward", id.Name())
	}
	return st
}

// admit consults the current state, so reloaded rules apply to the next handshake.
// sumSessions adds up f over the sessions held now, replaced ones still
// draining too (for the metrics read once per scrape).
func (s *Server) sumSessions(f func(*mux.Session) int) (n int) {
	for _, sess := range s.sessions.held() {
		n += f(sess)
	}
	return n
}

func (s *Server) admit(id ssl.Identity) error { return s.state.Load().admit(id) }

func (s *Server) cfg() *config.Server { return s.state.Load().cfg }

func (s *Server) settings() sessionSettings {
	cfg := s.cfg()
	st := settingsOf(cfg.Settings, cfg.HandshakeTimeout, s.metrics, s.limited, s.resume, &s.handover.pipes)
	st.onPathRTT = s.sessions.notePathRTT
	return st
}

// Ready is closed once every listener is open.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the bound address of the tunnel listener ("tunnel") or of a
// forward (by name), once Ready.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "tunnel" {
		return s.tunnel
	}
	if name == "admin" {
		return s.admin.addr()
	}
	if s.forwards == nil {
		return nil
	}
	return s.forwards.addr(name)
}

// ManageGoProcs lets Run set the Go scheduler's Ps for the whole process:
// one while the agent carries one-way transfers only (procs.go). Only the
// process's owner calls it, before Run.
func (s *Server) ManageGoProcs() { s.manageProcs = true }

// Run serves until ctx is cancelled, then stops gracefully: listeners close,
// each client is told to open no more streams, streams in flight get up to
// the drain timeout to finish, and Run returns nil.
func (s *Server) Run(ctx context.Context) error {
	cfg := s.cfg()
	logSetupWarnings(s.log, cfg.TLS.Key, cfg.Admin, cfg.AdminPublic)
	// Streams and sessions live on streamCtx, which outlives ctx by the drain.
	streamCtx, killStreams := context.WithCancel(context.WithoutCancel(ctx))
	defer killStreams()
	defer startGoProcs(streamCtx, s.manageProcs, s.log, s.metrics)()
	acceptCtx, stopAccepting := context.WithCancel(ctx)
	defer stopAccepting()

	tunnelLn, err := s.handover.listen(ctx, cfg.Listen)
	if err != nil {
		return err
	}
	var conns sync.WaitGroup // every session and stream goroutine
	fs := newForwardSet(s.log, s.metrics, &conns, s.handover.listen, s.serveForward)
	if err := fs.start(acceptCtx, streamCtx, cfg.Forwards, origin{cfg.Path, cfg.ForwardLines}); err != nil {
		fs.stop()
		tunnelLn.Close()
		return err
	}
	s.mu.Lock()
	s.tunnel, s.forwards = tunnelLn.Addr(), fs
	s.mu.Unlock()

	tunnelErr := make(chan error, 1)
	var loops sync.WaitGroup
	loops.Go(func() { warnExpiries(acceptCtx, cfg.ExpiryWarning, s.tls.Policy, s.log, s.metrics) })
	// Unhealthy once stopping; not after a handover, whose successor
	// serves the admin port while this process finishes its streams.
	s.admin.srv = &admin.Server{Metrics: s.metrics, Healthy: func() bool { return ctx.Err() == nil }, Status: s.status, Log: s.log}
	s.admin.listen = s.handover.listen
	err = s.admin.start(acceptCtx, s.cfg().Admin)
	var handed []restored
	if err == nil {
		// The previous process's streams before the first session: a
		// client's resume must find them here.
		handed, err = s.handover.restore(s.resume, cfg.Forwards, cfg.Services, s.log)
	}
	if err == nil {
		for _, r := range handed {
			conns.Go(func() {
				pipeAndLog(streamCtx, endLog{s.log.With("peer", r.peer), s.limited, r.peer}, s.metrics, r.kind, r.name, r.idle, r.stream, r.stream.Local(r.local), &s.handover.pipes)
			})
		}
		loops.Go(func() { tunnelErr <- s.serveTunnel(acceptCtx, streamCtx, tunnelLn, &conns) })
		err = s.handover.ready(s.log)
	}
	if err != nil {
		stopAccepting()
		fs.stop()
		s.admin.stop()
		tunnelLn.Close()
		loops.Wait()
		killStreams()
		conns.Wait()
		return err
	}
	if every := cfg.ReloadInterval; every > 0 {
		loops.Go(func() { watchFiles(acceptCtx, every, s.watchedFiles, s.Reload, s.log) })
	}
	s.log.Info("listening", "addr", tunnelLn.Addr().String(), "services", len(cfg.Services), "forwards", len(cfg.Forwards))
	close(s.ready)

	var first error
	select {
	case <-ctx.Done():
	case first = <-tunnelErr:
	case <-s.handover.handedOver():
		s.log.Info("stopping: the new process serves the listeners now; draining this one's streams")
	}
	stopAccepting()
	fs.stop()
	s.admin.stop()
	loops.Wait()
	s.drain(s.cfg().DrainTimeout)
	killStreams()
	conns.Wait()
	s.resume.Close()
	s.log.Info("stopped")
	return first
}

// UseHandover makes Run open its listeners through h, so that a
// successor started by HandOver inherits them, and tell h when they are
// open (h.Ready). Call it before Run; with h nil (handovers unavailable)
// Run still tells systemd when it is ready.
func (s *Server) UseHandover(h *handover.Handover) {
	s.resume = s.handover.use(h, s.resume, func(inst string) *resume.Table {
		return newResumeTable(s.cfg().Settings, s.log, s.metrics, inst, s.resumeBound)
	}, s.log)
}

// HandOver starts the binary on disk as a successor that takes over the
// listeners, and waits until it is ready; Run then stops accepting and
// drains its sessions as for a stop. On error nothing changed and Run
// carries on. No reload runs meanwhile.
func (s *Server) HandOver(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	return s.handover.upgrade(ctx, s.resume, s.log)
}

// drain tells every client to open no more streams and waits up to limit
// for the streams in flight.
func (s *Server) drain(limit time.Duration) { drainSessions(s.log, s.sessions.drainAll(), limit) }

func (s *Server) serveTunnel(acceptCtx, streamCtx context.Context, ln net.Listener, conns *sync.WaitGroup) error {
	// Bound concurrent handshakes: when all slots are busy the accept loop
	// waits and new connections queue in the kernel backlog, so a flood of
	// stalled handshakes costs at most MaxHandshakes goroutines, each for at
	// most HandshakeTimeout.
	slots := make(chan struct{}, s.cfg().MaxHandshakes)
	// One source address gets at most a quarter of the slots, so a flood
	// from one host cannot keep every other client out until it times out.
	perSource := s.cfg().MaxHandshakesPerSource
	var (
		mu       sync.Mutex
		inFlight = map[string]int{} // handshakes in progress per source address
	)
	return forward.Serve(acceptCtx, ln, s.log, func(conn net.Conn) {
		host := hostOf(conn.RemoteAddr())
		mu.Lock()
		if inFlight[host] >= perSource {
			mu.Unlock()
			s.limited.Warn("handshakes-per-source:"+host, "client refused: too many handshakes in progress from its address", "remote", host, "limit", perSource)
			s.metrics.HandshakeFailures.WithLabelValues("busy").Inc()
			forward.Reset(conn)
			return
		}
		inFlight[host]++
		mu.Unlock()
		releaseSource := func() {
			mu.Lock()
			if inFlight[host]--; inFlight[host] == 0 {
				delete(inFlight, host)
			}
			mu.Unlock()
		}
		select {
		case slots <- struct{}{}:
		case <-acceptCtx.Done():
			releaseSource()
			conn.Close()
			return
		}
		release := func() { <-slots; releaseSource() }
		conns.Go(func() { s.serveConn(acceptCtx, streamCtx, conn, release, conns) })
	})
}

// hostOf is the IP address of addr, for per-source limits.
func hostOf(addr net.Addr) string {
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	return host
}

func (s *Server) serveConn(acceptCtx, streamCtx context.Context, conn net.Conn, release func(), conns *sync.WaitGroup) {
	remote := conn.RemoteAddr().String()
	cfg := s.cfg()
	st := s.settings()
	if err := sockopt.Apply(conn, tunnelSockopts(st, "", false)); err != nil {
		s.log.Warn("cannot set socket options on a tunnel connection", "remote", remote, "error", err)
	}
	// Refusals by our rules complete the handshake, so the client can be
	// told why in words; it is served nothing (see establish).
	var deferred atomic.Pointer[ssl.PolicyError]
	policy := s.tls.Policy() // the handshake's, or an older one
	tconn := ssl.Server(conn, s.tls.DeferringServerConfig(&deferred))
	sess, err := establish(acceptCtx, tconn, mux.RoleServer, "", 0, st, hello{
		services: func(id ssl.Identity) map[string]string { return s.state.Load().offer(id) },
		deferred: &deferred,
		admit: func(id ssl.Identity, h mux.Hello) error {
			if err := s.sessions.admit(id, h.Class, h.Lane, cfg.MaxSessions, cfg.MaxSessionsPerIdentity); err != nil {
				return &mux.RefusedError{Code: mux.RefusalLimit, Msg: err.Error()}
			}
			return nil
		},
		noLanes: s.noLanes,
	}, s.log)
	release()
	if errors.Is(err, mux.ErrProbed) {
		s.limited.Log(hclog.Info, "probe:"+hostOf(conn.RemoteAddr()), "answered a probe (validate -online); no session started", "remote", remote)
		conn.Close()
		return
	}
	if err != nil {
		if acceptCtx.Err() == nil {
			// One line per source address and kind of failure per minute:
			// a flood of garbage must not become a flood of log lines.
			// The key is the kind from a fixed set, never text the peer
			// chose (a hello's class, a certificate's name).
			host, _, _ := net.SplitHostPort(remote)
			kind := failureReason(err)
			// Counted first: whoever reads the line finds it counted.
			s.metrics.HandshakeFailures.WithLabelValues(kind).Inc()
			s.limited.Warn("refused:"+host+":"+kind, "client refused", "remote", remote, "error", err)
			s.lastErr.set(err)
		}
		conn.Close()
		return
	}
	// Sessions are keyed by the certificate (its SPKI pin), shown by name:
	// names are not unique (a shared CN, URI-only certificates).
	peer, key := sess.Peer.Name(), sess.Peer.Key()
	// A client's sessions of one class are its lanes (0 from a client or
	// server before lanes): each is a session of its own, limits included.
	class, lane := sess.PeerHello.Class, sess.PeerHello.Lane
	log := s.log.With("peer", peer, "remote", remote)
	if class == classControl {
		// Its class is known only now, from the hello.
		if err := sockopt.Apply(conn, tunnelSockopts(st, class, false)); err != nil {
			log.Warn("cannot set socket options on a tunnel connection", "error", err)
		}
	}
	// Checked in the hello already; again here, as another session of
	// the same client may have come up meanwhile.
	if err := s.sessions.admit(sess.Peer, class, lane, cfg.MaxSessions, cfg.MaxSessionsPerIdentity); err != nil {
		s.limited.Warn("limit:"+key, "client refused", "peer", peer, "key", key, "remote", remote, "error", err)
		s.metrics.HandshakeFailures.WithLabelValues(mux.RefusalLimit.String()).Inc()
		sess.EndWithRefusal(mux.RefusalLimit, err.Error(), tellWait, err)
		return
	}
	// A client that reconnects replaces its old session of the same class
	// and lane at once: new streams use the new one, so its forwards never
	// see a stale "already connected"; the old one drains in the
	// background (a rotation) or is already dead (a reconnect).
	if s.beforePut != nil {
		s.beforePut(class, lane)
	}
	old, ended, stopping := s.sessions.put(sess.Peer, class, lane, sess, conn, cfg.MaxSessionsPerIdentity)
	s.endOverDrained(ended, peer, cfg.MaxSessionsPerIdentity, conns)
	if stopping {
		// Its handshake began before the listener closed and ended after
		// the drain began: drained now, so the client takes its new
		// connections to wherever the listener went (a restarted or
		// handed-over server) instead of to this stopping one.
		// Once per interval: a flood of handshakes finishing as the
		// server stops (at most max_handshakes) is one line.
		s.limited.Log(hclog.Info, "stopping-session", "session came up while stopping; draining it", append([]any{"peer", peer, "remote", remote, "class", class}, laneFields(lane)...)...)
		conns.Go(func() {
			ctx, cancel := context.WithTimeout(streamCtx, cfg.DrainTimeout)
			defer cancel()
			_ = sess.Drain(ctx)
		})
	}
	if first := s.sessions.firstOfLanes(key, class); first != nil {
		// Lane 0 of a client with lanes carries its messages and the
		// start of every stream (see laneZeroLowat); known once a
		// second lane is up.
		if err := sockopt.Apply(first, tunnelSockopts(st, class, true)); err != nil {
			log.Warn("cannot set socket options on a tunnel connection", "error", err)
		}
	}
	if old != nil {
		s.limited.LogBurst(log, hclog.Info, "session-replaced:"+key, sessionLineBurst, "client reconnected; draining its previous session", append([]any{"class", class, "key", key}, laneFields(lane)...)...)
		conns.Go(func() {
			// Told first, so a client that did not open the new session
			// (another host with the same key) backs off, not reconnects.
			old.NotifyReplaced()
			ctx, cancel := context.WithTimeout(streamCtx, cfg.DrainTimeout)
			defer cancel()
			_ = old.Drain(ctx)
			old.CloseWithReason(errors.New("replaced by a new session from the same client"))
		})
	}
	// A reload between our handshake and the put above did not see this
	// session: check it against the policy now current.
	if p := s.tls.Policy(); p != policy {
		if err := p.Recheck(sess.Peer, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
			log.Warn("closing session: its client no longer passes", "reason", err)
			s.sessions.remove(sess.Peer, class, lane, sess)
			endRefused(map[*mux.Session]error{sess: err})
			return
		}
	}
	s.limited.LogBurst(log, hclog.Info, "session-up:"+key, sessionLineBurst, "session up", append([]any{"class", class, "agent", sess.PeerHello.Agent, "key", key}, laneFields(lane)...)...)
	s.resume.SessionUp(sess, laneKey(class, lane)) // our suspended streams to this client move here
	defer s.resume.SessionDown(sess, laneKey(class, lane))
	conns.Go(func() { watchPeer(s.tls, sess, x509.ExtKeyUsageClientAuth, log) })
	s.metrics.Sessions.WithLabelValues(class).Inc()
	s.metrics.SessionsUp.WithLabelValues(class).Inc()
	defer s.metrics.Sessions.WithLabelValues(class).Dec()
	err = sess.Serve(streamCtx, s.lookup, func(ctx context.Context, service string, stream *mux.Stream, target net.Conn) {
		serveAccepted(ctx, conns, log, s.settings(), s.metrics, s.cfg().Services, class, lane, service, stream, target)
	})
	s.sessions.remove(sess.Peer, class, lane, sess)
	sess.Close()
	if streamCtx.Err() == nil {
		s.limited.LogBurst(log, hclog.Info, "session-ended:"+key, sessionLineBurst, "session ended", append([]any{"class", class, "reason", reasonText(err)}, laneFields(lane)...)...)
		s.metrics.SessionsEnded.WithLabelValues(class, endReason(err)).Inc()
	}
}

// sessionLineBurst is how many of each of a certificate's session lines
// (up, replaced, ended) are logged a minute: a client's classes and lanes
// coming up together, and a few reconnects, each get theirs; a
// certificate's holder that connects in a loop gets this many a minute,
// not hundreds a second. tunnel_sessions_established_total and
// tunnel_sessions_ended_total count every one.
const sessionLineBurst = 16

// endOverDrained ends at once the replaced sessions of peer that put
// took out of the draining ones: their streams are reset, not drained.
// Counted as ended for drain_limit; one line per certificate and interval.
func (s *Server) endOverDrained(ended []heldSession, peer string, perIdentity int, conns *sync.WaitGroup) {
	for _, d := range ended {
		s.limited.Warn("drain-limit:"+d.key, "client replaces its sessions faster than they drain; ending a replaced one at once, its streams reset",
			append([]any{"peer", peer, "key", d.key, "class", d.class, "streams", d.s.NumStreams(), "max_sessions_per_identity", perIdentity}, laneFields(d.lane)...)...)
		conns.Go(func() { d.s.CloseWithReason(&drainLimitError{limit: perIdentity}) })
	}
}

// peerServices are the classes sess's client gives its services (nil
// when there is no session).
func peerServices(sess *mux.Session) map[string]string {
	if sess == nil {
		return nil
	}
	return sess.PeerHello.Services
}

// lookup reads the current services, so a reload applies to the next stream.
func (s *Server) lookup(name string) (mux.Service, bool) { return s.state.Load().lookup(name) }

func (s *Server) serveForward(ctx context.Context, f config.Forward, local net.Conn) {
	matches := clientMatcher(f.Client)
	sess, certs := s.sessions.find(matches, f.Class)
	if class, from := forwardClass(f, peerServices(sess)); from == classFromService && class != f.Class {
		// The client owns the service and gave it another class.
		if other, _ := s.sessions.find(matches, class); other != nil {
			sess = other
		}
	}
	if certs > 1 {
		// Several certificates answer to this name (a shared CN, a URI
		// pattern): the newest session is most likely the live host.
		s.limited.Warn("ambiguous-client:"+f.Name, "forward's client matches sessions of several certificates; using the most recent one (name the client by sha256: pin to choose)",
			"forward", f.Name, "client", f.Client, "certificates", certs, "chosen", sess.Peer.Key())
	}
	if sess == nil {
		s.metrics.LocalRefused(f.Name, admin.RefusedNoSession)
		s.limited.Warn("no-client:"+f.Name, "connection refused: client not connected", "forward", f.Name, "client", f.Client, "local", local.RemoteAddr().String())
		forward.Reset(local)
		return
	}
	st := s.settings()
	if class := sess.PeerHello.Class; s.movable(f, sess) {
		// As the client's own: a stream starts on lane 0, the lane of
		// the messages, and moves to another once heavy (moveHeavy).
		if first := s.sessions.leastBusy(sess.Peer.Key(), class, 0, 1); first != nil {
			sess = first
		}
		st.onHeavy = s.moveHeavy(sess.Peer.Key(), class)
	}
	stream, err := openStream(ctx, st, sess, f, sess.PeerHello.Class, sess.PeerHello.Lane, local)
	if err != nil {
		// Once per interval per forward and cause, as "client not
		// connected": a client whose session stays up but takes no
		// streams (draining, at its bound of resumable streams) would
		// otherwise give every local connection a line.
		s.metrics.LocalRefused(f.Name, admin.RefusedOpenFailed)
		s.limited.Warn("open-failed:"+f.Name+":"+failureReason(err), "connection refused: cannot open stream", "forward", f.Name, "client", f.Client, "local", local.RemoteAddr().String(), "error", err)
		forward.Reset(local)
		return
	}
	pipeAndLog(ctx, endLog{s.log.With("peer", sess.Peer.Name()), s.limited, sess.Peer.Key()}, s.metrics, "forward", f.Name, f.IdleTimeout, stream, localFor(stream, local), &s.handover.pipes)
}

// movable says whether the streams of forward f on sess open on lane 0
// and move to another lane once heavy: its class has lanes, and the
// streams resume (a move is a resume).
func (s *Server) movable(f config.Forward, sess *mux.Session) bool {
	return slices.Contains(laneClasses, sess.PeerHello.Class) && sess.PeerResumes() && f.ResumeWindowOr(s.cfg().ResumeWindow) > 0
}

// moveHeavy is the hook of a stream we opened on lane 0 of class to the
// client with certificate key: once heavy it moves to the least busy of
// the client's other lanes of class; with none up (a client with one
// lane, or its others down) it stays, and moves once one is up and it is
// still heavy.
func (s *Server) moveHeavy(key, class string) func(*resume.Stream) {
	var hook func(*resume.Stream)
	hook = func(rs *resume.Stream) {
		if _, lane := splitLaneKey(rs.Class()); lane != 0 {
			return
		}
		to := s.sessions.leastBusy(key, class, 1, mux.MaxLanes)
		if to == nil {
			rs.WatchHeavy(hook)
			return
		}
		lane := to.PeerHello.Lane
		if err := rs.Move(to, laneKey(class, lane)); err != nil && !errors.Is(err, resume.ErrNotMoved) {
			s.limited.Warn("move:"+key+":"+class, "could not move a heavy stream to another lane of its client; it carries on where it was",
				"peer", to.Peer.Name(), "class", class, "lane", lane, "error", err)
		}
	}
	return hook
}

// Reload re-reads the config file and its TLS files. It builds everything
// off to the side and publishes it in one step; on any error the running
// configuration stays and the error says why. Sessions whose client no
// longer passes (CA removed, revoked, no longer allowed) are closed.
func (s *Server) Reload() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	old := s.cfg()
	cfg, err := config.LoadServer(old.Path)
	if err != nil {
		return err
	}
	if cfg.Listen != old.Listen {
		return fmt.Errorf("listen changed from %s to %s: that needs a restart (nothing was reloaded)", old.Listen, cfg.Listen)
	}
	st := newServerState(cfg)
	p, err := loadPolicy(serverPolicySpec(cfg, st.admit), x509.ExtKeyUsageServerAuth)
	if err != nil {
		return err
	}
	changes := describeChanges(s.tls.Policy(), p, old.Services, cfg.Services, old.Forwards, cfg.Forwards)
	s.tls.Store(p)
	s.state.Store(st)
	s.mu.Lock()
	fs := s.forwards
	s.mu.Unlock()
	var ferr, aerr error
	if fs != nil {
		// Forward listeners use the agent's own contexts, kept by apply.
		ferr = fs.apply(cfg.Forwards, origin{cfg.Path, cfg.ForwardLines})
	}
	var moved string
	if moved, aerr = s.admin.apply(cfg.Admin); moved != "" {
		changes = append(changes, moved)
	}
	var more []string
	if old.MaxHandshakes != cfg.MaxHandshakes {
		more = append(more, "max_handshakes")
	}
	if old.MaxHandshakesPerSource != cfg.MaxHandshakesPerSource {
		more = append(more, "max_handshakes_per_source")
	}
	if r := restartKeys(old.Settings, cfg.Settings, [2]string{old.LogLevel, old.LogFormat}, [2]string{cfg.LogLevel, cfg.LogFormat}, more...); r != "" {
		changes = append(changes, r)
	}
	// Warnings first, so that whoever sees the reloaded line has seen them.
	logSetupWarnings(s.log, cfg.TLS.Key, cfg.Admin, cfg.AdminPublic)
	reloadErr := logReloaded(s.log, changes, ferr, aerr)
	ends := map[*mux.Session]error{}
	for _, sess := range s.sessions.held() {
		if err := p.Recheck(sess.Peer, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
			s.log.Warn("closing session: its client no longer passes", "peer", sess.Peer.Name(), "reason", err)
			ends[sess] = err
		}
	}
	endRefused(ends)
	return s.lastErr.note(reloadErr)
}

func (s *Server) watchedFiles() []string {
	cfg := s.cfg()
	return append([]string{cfg.Path, cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA}, cfg.TLS.CRL...)
}

// status is what the admin listener's /status shows.
func (s *Server) status() admin.Status {
	cfg := s.cfg()
	st := admin.Status{Agent: "server", Version: Version, Started: s.started, Uptime: time.Since(s.started).Round(time.Second).String(), Healthy: true}
	st.LastError = s.lastErr.get()
	for k, sess := range s.sessions.snapshot() {
		st.Sessions = append(st.Sessions, sessionStatus(sess, k.key, k.class, k.lane))
	}
	for _, d := range s.sessions.drainingNow() {
		st.Draining = append(st.Draining, sessionStatus(d.s, d.key, d.class, d.lane))
	}
	s.mu.Lock()
	fs := s.forwards
	s.mu.Unlock()
	for _, f := range cfg.Forwards {
		sess, _ := s.sessions.find(clientMatcher(f.Client), f.Class)
		class, from := forwardClass(f, peerServices(sess))
		fst := forwardStatus(s.metrics, "forward", f.Name, addrString(s.Addr(f.Name)), "", class, from)
		fst.NotApplied = fs.problem(f.Name)
		st.Forwards = append(st.Forwards, fst)
	}
	for _, svc := range cfg.Services {
		st.Services = append(st.Services, forwardStatus(s.metrics, "service", svc.Name, "", svc.Target, svc.Class, serviceClassFrom(svc)))
	}
	st.Expiries = expiryStatus(s.tls.Policy())
	rs := resumeStats(s.resume)
	st.Resume = &rs
	return st
}

func reasonText(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// sessionSet holds the connected clients' sessions by certificate (the
// identity's Key, its SPKI pin), class and lane. A reconnect with the same
// key replaces its session of the same class and lane; two certificates
// with the same readable name are two clients.
type sessionSet struct {
	mu  sync.Mutex
	m   map[sessionKey]*mux.Session
	raw map[sessionKey]net.Conn // each session's TCP connection
	// draining are the sessions a reconnect replaced, oldest first, until
	// they end: they still hold their streams (up to drain_timeout), so
	// they count against max_sessions, and put bounds them per
	// certificate (a client reconnecting in a loop must not pile them up).
	draining []heldSession
	// stopping: the server drains its sessions to stop (drainAll). A
	// handshake accepted before the listener closed can end after that:
	// its session must be drained too, not serve new streams.
	stopping bool
}

type sessionKey struct {
	key, class string
	lane       int
}

// heldSession is a session with the place it had in the set.
type heldSession struct {
	sessionKey
	s *mux.Session
}

// drainLimitError ends a replaced session before its drain is over: its
// certificate had more replaced sessions draining than put allows.
type drainLimitError struct{ limit int }

func (e *drainLimitError) Error() string {
	return fmt.Sprintf("ended before its drain was over: its client replaces its sessions faster than they drain (one replaced session may drain per class and lane, %d per certificate: max_sessions_per_identity)", e.limit)
}

// admit checks the session limits for a new session of id. A session that
// would replace one of the same class and lane does not count against
// them (put bounds what a replacement leaves draining); every lane counts
// as a session, and so does every replaced session still draining
// against max_sessions. A further lane comes only after
// lane 0 of its class: admitted first, it could take the last session
// the limit allows the certificate, and lane 0, which carries the
// class's messages and the start of every stream, would be refused for
// as long as it lived.
func (ss *sessionSet) admit(id ssl.Identity, class string, lane, max, perIdentity int) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	key := id.Key()
	if _, replaces := ss.m[sessionKey{key, class, lane}]; replaces {
		return nil
	}
	if _, first := ss.m[sessionKey{key, class, 0}]; lane > 0 && !first {
		return fmt.Errorf("certificate of %q (%s) has no first session of class %s yet; lane %d comes after it", id.Name(), key, class, lane)
	}
	if n := len(ss.m) + len(ss.draining); n >= max {
		return fmt.Errorf("server has %d sessions (%d of them replaced and draining), its limit (max_sessions)", n, len(ss.draining))
	}
	n := 0
	for k := range ss.m {
		if k.key == key {
			n++
		}
	}
	if n >= perIdentity {
		return fmt.Errorf("certificate of %q (%s) already has %d sessions, the limit per client (max_sessions_per_identity)", id.Name(), key, n)
	}
	return nil
}

// put adds a session, returning the one it replaces, if any, which the
// caller drains; the draining sessions the caller ends at once (see
// retire); and whether the server is stopping (then the caller drains s).
func (ss *sessionSet) put(id ssl.Identity, class string, lane int, s *mux.Session, raw net.Conn, perIdentity int) (old *mux.Session, ended []heldSession, stopping bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m, ss.raw = map[sessionKey]*mux.Session{}, map[sessionKey]net.Conn{}
	}
	k := sessionKey{id.Key(), class, lane}
	old = ss.m[k]
	ss.m[k], ss.raw[k] = s, raw
	if old != nil {
		ended = ss.retire(heldSession{k, old}, perIdentity)
	}
	return old, ended, ss.stopping
}

// retire keeps old, just replaced, among the draining sessions, and
// takes out those that must end at once: a place keeps one draining
// predecessor (an older one served a connection the client has already
// replaced twice), and a certificate at most perIdentity in all, its
// oldest first. So a certificate holds at most twice its limit of
// sessions, however fast it reconnects, and a client that reconnects
// once still has its old session drain. Called with ss.mu held.
func (ss *sessionSet) retire(old heldSession, perIdentity int) (ended []heldSession) {
	n := 0 // old's certificate's draining sessions of other places, not yet ended
	for _, d := range ss.draining {
		if d.key == old.key && d.sessionKey != old.sessionKey {
			n++
		}
	}
	kept := ss.draining[:0]
	for _, d := range ss.draining {
		switch {
		case d.sessionKey == old.sessionKey:
			ended = append(ended, d)
		case d.key == old.key && n >= perIdentity:
			ended = append(ended, d)
			n--
		default:
			kept = append(kept, d)
		}
	}
	clear(ss.draining[len(kept):])
	ss.draining = append(kept, old)
	return ended
}

// firstOfLanes is the TCP connection of lane 0 of class of the client
// with certificate key, if the class has lanes and that client has
// another lane of it up too; else nil.
func (ss *sessionSet) firstOfLanes(key, class string) net.Conn {
	if !slices.Contains(laneClasses, class) {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for lane := 1; lane < mux.MaxLanes; lane++ {
		if ss.m[sessionKey{key, class, lane}] != nil {
			return ss.raw[sessionKey{key, class, 0}]
		}
	}
	return nil
}

func (ss *sessionSet) remove(id ssl.Identity, class string, lane int, s *mux.Session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	k := sessionKey{id.Key(), class, lane}
	if ss.m[k] == s {
		delete(ss.m, k)
		delete(ss.raw, k)
	}
	ss.draining = slices.DeleteFunc(ss.draining, func(d heldSession) bool { return d.s == s })
}

// notePathRTT tells a round trip measured by a session of the client
// with certificate key peerKey at remote to that client's sessions from
// the same host (see pathrtt.go).
func (ss *sessionSet) notePathRTT(peerKey, remote string, rtt time.Duration) {
	var same []*mux.Session
	ss.mu.Lock()
	for _, class := range classes {
		for lane := range mux.MaxLanes {
			if s := ss.m[sessionKey{peerKey, class, lane}]; s != nil {
				same = append(same, s)
			}
		}
	}
	ss.mu.Unlock()
	notePathRTT(same, peerKey, remote, rtt)
}

func (ss *sessionSet) snapshot() map[sessionKey]*mux.Session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return maps.Clone(ss.m)
}

// drainingNow are the sessions a reconnect replaced, still draining.
func (ss *sessionSet) drainingNow() []heldSession {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return slices.Clone(ss.draining)
}

// drainAll is every session, to drain as the server stops; a session
// put after it is told it is stopping.
func (ss *sessionSet) drainAll() []*mux.Session {
	ss.mu.Lock()
	ss.stopping = true
	ss.mu.Unlock()
	return ss.all()
}

func (ss *sessionSet) all() []*mux.Session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*mux.Session, 0, len(ss.m))
	for _, s := range ss.m {
		out = append(out, s)
	}
	return out
}

// held is every session, those up and those replaced and draining.
func (ss *sessionSet) held() []*mux.Session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]*mux.Session, 0, len(ss.m)+len(ss.draining))
	for _, s := range ss.m {
		out = append(out, s)
	}
	for _, d := range ss.draining {
		out = append(out, d.s)
	}
	return out
}

// leastBusy is the live session with the fewest open streams among the
// lanes [lo, hi) of class of the client with certificate key, the first
// lane on a tie; nil if none is up.
func (ss *sessionSet) leastBusy(key, class string, lo, hi int) *mux.Session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var (
		best  *mux.Session
		least int
	)
	for lane := lo; lane < min(hi, mux.MaxLanes); lane++ {
		s := ss.m[sessionKey{key, class, lane}]
		if s == nil || s.Closed() {
			continue
		}
		if n := s.NumStreams(); best == nil || n < least {
			best, least = s, n
		}
	}
	return best
}

// find returns the session for a forward: among the sessions whose peer
// matches, those of the given class if any, else of any class; of those
// the certificate of the most recently established; of its sessions of
// that class (its lanes) the one with the fewest open streams, the first
// lane on a tie. certs is how many distinct certificates matched: more
// than one means the forward's client is ambiguous.
func (ss *sessionSet) find(matches func(ssl.Identity) bool, class string) (sess *mux.Session, certs int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var (
		keys      = map[string]bool{}
		sameClass bool
		newest    sessionKey
	)
	for k, s := range ss.m {
		if !matches(s.Peer) {
			continue
		}
		keys[k.key] = true
		switch {
		case k.class == class && (!sameClass || s.Since().After(sess.Since())):
			sess, sameClass, newest = s, true, k
		case !sameClass && (sess == nil || s.Since().After(sess.Since())):
			sess, newest = s, k
		}
	}
	if sess == nil {
		return nil, 0
	}
	// Its lanes: the map's order is random, so ties go by lane.
	best, bestLane, bestStreams := sess, newest.lane, sess.NumStreams()
	for k, s := range ss.m {
		if k.key != newest.key || k.class != newest.class || s == sess {
			continue
		}
		if n := s.NumStreams(); n < bestStreams || n == bestStreams && k.lane < bestLane {
			best, bestLane, bestStreams = s, k.lane, n
		}
	}
	return best, len(keys)
}

// clientMatcher is how a forward's `client` names the client whose session
// carries it: any form of an allow rule (a name matches the CN or a DNS
// SAN; sha256:PIN one certificate; a URI pattern SPIFFE IDs). Text that is
// not a rule is matched as a plain name.
func clientMatcher(client string) func(ssl.Identity) bool {
	if r, err := ssl.ParseRule(client); err == nil {
		return r.Match
	}
	return func(id ssl.Identity) bool { return id.Is(client) }
}

// resumeBound bounds the resumable streams one client certificate may
// hold: its sessions are at most max_sessions_per_identity.
func (s *Server) resumeBound() int {
	c := s.cfg()
	return resumeBound(c.Settings.MaxStreamsPerSession, c.MaxSessionsPerIdentity)
}
