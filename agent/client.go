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
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Client is tunnel-client: it keeps one session to a server up and carries
// its forwards over it, and serves the server's streams to its services.
type Client struct {
	log      hclog.Logger
	limited  *ratelog.Log
	metrics  *admin.Metrics
	started  time.Time
	lastErr  lastError
	tls      *ssl.Reloader
	state    atomic.Pointer[clientState]
	reloadMu sync.Mutex
	resume   *resume.Table // streams that outlive their session
	heavy    heavyStreams  // our streams that turned heavy (spread.go)

	// keepers keep the sessions of each traffic class in use, by class and
	// lane: those of the config at start, and any class the server gives a
	// service that a forward uses (learned from its hello), started then.
	keepersMu  sync.Mutex
	keepers    map[string][]*keeper
	lanes      int                               // bulk_connections at start: the bulk class's lanes
	keeperRun  func(*keeper)                     // starts a keeper once Run runs; nil before and after
	serverSays atomic.Pointer[map[string]string] // the classes of the server's services, from the last hello

	admin    adminHost
	handover handoverHost

	mu       sync.Mutex
	forwards *forwardSet
	ready    chan struct{}

	manageProcs bool // ManageGoProcs: Run sets the Go scheduler's Ps (procs.go)
}

type clientState struct {
	cfg    *config.Client
	lookup mux.Lookup
	offer  func(ssl.Identity) map[string]string
}

// NewClient checks what can never work before anything starts.
func NewClient(cfg *config.Client, log hclog.Logger) (*Client, error) {
	p, err := loadPolicy(clientPolicySpec(cfg), x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	c := &Client{log: log, limited: ratelog.New(log, time.Minute), metrics: admin.NewMetrics("client"), started: time.Now(), tls: ssl.NewReloader(p), ready: make(chan struct{}),
		keepers: map[string][]*keeper{}, lanes: max(cfg.BulkConnections, 1)}
	c.state.Store(newClientState(cfg))
	c.resume = newResumeTable(cfg.Settings, log, c.metrics, "", c.resumeBound)
	c.metrics.WatchReceiveBuffered(func() int { return c.sumSessions((*mux.Session).ReceiveBuffered) })
	c.metrics.WatchWriteQueued(func() int { return c.sumSessions((*mux.Session).WriteQueued) })
	c.metrics.WatchKernelHeld(func() int { return c.sumSessions((*mux.Session).KernelHeld) })
	// One session per traffic class in use, so control messages never
	// queue behind bulk data, and bulk_connections of them for bulk (its
	// lanes); the server may open streams of either class.
	// A forward without a class key starts with its port's default; the
	// server's hello may name another, whose session starts then.
	for _, class := range classesOf(cfg) {
		c.keepers[class] = c.newLanes(class)
	}
	if len(c.keepers) == 0 {
		c.keepers[classBulk] = c.newLanes(classBulk)
	}
	return c, nil
}

// newLanes are the keepers of a class, lane 0 first: bulk_connections
// of them for the bulk class, one for any other.
func (c *Client) newLanes(class string) []*keeper {
	n := 1
	if slices.Contains(laneClasses, class) {
		n = c.lanes
	}
	first := newKeeper(c, class, 0, nil)
	ks := []*keeper{first}
	for lane := 1; lane < n; lane++ {
		ks = append(ks, newKeeper(c, class, lane, first))
	}
	return ks
}

func newClientState(cfg *config.Client) *clientState {
	return &clientState{cfg: cfg, lookup: services(cfg.Services, cfg.DialTimeout, true), offer: offered(cfg.Services, true)}
}

// classesOf are the classes cfg's forwards and services use, as far as
// the config alone says.
func classesOf(cfg *config.Client) []string {
	var out []string
	for _, f := range cfg.Forwards {
		out = append(out, f.Class)
	}
	for _, svc := range cfg.Services {
		out = append(out, svc.Class)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// keeperFor is the keeper of a class's first lane, its lanes started now
// if that class has none yet (a class the server gave a service, or a
// reload added).
func (c *Client) keeperFor(class string) *keeper {
	c.keepersMu.Lock()
	defer c.keepersMu.Unlock()
	if ks, ok := c.keepers[class]; ok {
		return ks[0]
	}
	ks := c.newLanes(class)
	c.keepers[class] = ks
	if c.keeperRun != nil {
		for _, k := range ks {
			c.keeperRun(k)
		}
	}
	return ks[0]
}

// keeperList is every keeper, by class, each class's lanes in order.
func (c *Client) keeperList() map[string][]*keeper {
	c.keepersMu.Lock()
	defer c.keepersMu.Unlock()
	return maps.Clone(c.keepers)
}

// keepLanes keeps, until the next start, as many lanes as the previous
// process's streams ride: each resumes on its own lane only, and a
// lowered bulk_connections would leave some without one until their
// resume window passed. keys are the streams' lane keys (laneKey).
func (c *Client) keepLanes(keys []string) {
	c.keepersMu.Lock()
	defer c.keepersMu.Unlock()
	n := c.lanes
	for _, key := range keys {
		if class, lane := splitLaneKey(key); slices.Contains(laneClasses, class) && lane < mux.MaxLanes {
			n = max(n, lane+1)
		}
	}
	if n > c.lanes {
		c.log.Info("keeping lanes that bulk_connections leaves out until the next start: the previous process's streams ride them", "lanes", n, "bulk_connections", c.cfg().BulkConnections)
		c.lanes = n
	}
	for class, ks := range c.keepers {
		if !slices.Contains(laneClasses, class) {
			continue
		}
		for lane := len(ks); lane < c.lanes; lane++ {
			k := newKeeper(c, class, lane, ks[0])
			ks = append(ks, k)
			if c.keeperRun != nil {
				c.keeperRun(k)
			}
		}
		c.keepers[class] = ks
	}
}

// pick is where a new stream of class goes: the live session of its
// lanes with the fewest open streams, the first lane on a tie (one TLS
// connection is one core of crypto: spread, the lanes' cores add up).
// nil while none is up.
//
// A stream that can move (movable) goes to lane 0 while it is up: the
// lane of every stream's start and of the streams that stay light, whose
// small messages then never wait behind a transfer's bytes in the same
// TCP connection. One that turns heavy moves to the other lanes
// (moveHeavy).
func (c *Client) pick(class string, movable bool) (*mux.Session, *keeper) {
	if movable {
		if sess, k := c.pickLanes(class, 0, 1); sess != nil {
			return sess, k
		}
	}
	return c.pickLanes(class, 0, mux.MaxLanes)
}

// movable says whether the streams of forward f, of class, open on lane
// 0 and move to another lane once heavy: the class has several lanes,
// and the streams resume (a move is a resume).
func (c *Client) movable(f config.Forward, class string) bool {
	return c.lanes > 1 && slices.Contains(laneClasses, class) && f.ResumeWindowOr(c.cfg().ResumeWindow) > 0
}

// moveHeavy takes a stream that turned heavy off lane 0 to the least busy
// of its class's other lanes; with none up, it stays, and moves once one
// is up and it is still heavy.
func (c *Client) moveHeavy(s *resume.Stream) {
	class, lane := splitLaneKey(s.Class())
	if lane != 0 {
		return
	}
	if c.cfg().BulkSpread {
		c.heavy.add(s)
		if c.onlyHeavy() {
			// Nobody waits behind the bulk: it may use lane 0 too
			// (spread.go).
			c.balanceHeavy(class)
			return
		}
	}
	sess, k := c.pickLanes(class, 1, mux.MaxLanes)
	if sess == nil {
		s.WatchHeavy(c.moveHeavy)
		return
	}
	if err := s.Move(sess, k.key()); err != nil && !errors.Is(err, resume.ErrNotMoved) {
		c.limited.Warn("move:"+class, "could not move a heavy stream to another lane of its class; it carries on where it was", "class", class, "lane", k.lane, "error", err)
	}
}

// pickLanes is pick among the lanes [lo, hi) of class.
func (c *Client) pickLanes(class string, lo, hi int) (*mux.Session, *keeper) {
	c.keepersMu.Lock()
	ks := c.keepers[class]
	c.keepersMu.Unlock()
	var (
		best  *mux.Session
		owner *keeper
		least int
	)
	for _, k := range ks[min(lo, len(ks)):min(hi, len(ks))] {
		s := k.current.get()
		if s == nil || s.Closed() {
			continue
		}
		if n := s.NumStreams(); best == nil || n < least {
			best, owner, least = s, k, n
		}
	}
	return best, owner
}

// forwardClass is the class a forward's streams ride (see forwardClass).
func (c *Client) forwardClass(f config.Forward) (class, from string) {
	var says map[string]string
	if p := c.serverSays.Load(); p != nil {
		says = *p
	}
	return forwardClass(f, says)
}

// learn takes the classes the server gives its services, from a new
// session's hello, and starts the session of any class a forward now
// needs, so that it is up before the forward's first connection.
func (c *Client) learn(services map[string]string) {
	c.serverSays.Store(&services)
	for _, f := range c.cfg().Forwards {
		class, _ := c.forwardClass(f)
		c.keeperFor(class)
	}
}

func (c *Client) settings() sessionSettings {
	cfg := c.cfg()
	st := settingsOf(cfg.Settings, cfg.HandshakeTimeout, c.metrics, c.limited, c.resume, &c.handover.pipes)
	st.onPathRTT = c.notePathRTT
	if c.lanes > 1 {
		st.onHeavy = c.moveHeavy
	}
	return st
}

// notePathRTT tells a round trip measured by one of our sessions to our
// other sessions on the same path (see pathrtt.go).
func (c *Client) notePathRTT(peerKey, remote string, rtt time.Duration) {
	var sessions []*mux.Session
	for _, ks := range c.keeperList() {
		for _, k := range ks {
			if sess := k.current.get(); sess != nil {
				sessions = append(sessions, sess)
			}
		}
	}
	notePathRTT(sessions, peerKey, remote, rtt)
}

func clientPolicySpec(cfg *config.Client) ssl.PolicySpec {
	spec := ssl.PolicySpec{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA, CRLs: cfg.TLS.CRL, CRLStale: cfg.TLS.CRLStale}
	spec.Admit = cfg.TLS.AdmitServer()
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
	if name == "admin" {
		return c.admin.addr()
	}
	if c.forwards == nil {
		return nil
	}
	return c.forwards.addr(name)
}

// Session is the current session of the bulk class (or the only class),
// its first lane, or nil while disconnected.
func (c *Client) Session() *mux.Session {
	ks := c.keeperList()
	lanes, ok := ks[classBulk]
	if !ok {
		lanes = ks[classControl]
	}
	if len(lanes) == 0 {
		return nil
	}
	return lanes[0].current.get()
}

// sumSessions adds up f over the current session of every lane of every
// class (for the metrics read once per scrape).
func (c *Client) sumSessions(f func(*mux.Session) int) (n int) {
	for _, ks := range c.keeperList() {
		for _, k := range ks {
			if sess := k.current.get(); sess != nil {
				n += f(sess)
			}
		}
	}
	return n
}

// Lanes are the current sessions of a class by lane, nil where a lane
// is down.
func (c *Client) Lanes(class string) []*mux.Session {
	var out []*mux.Session
	for _, k := range c.keeperList()[class] {
		out = append(out, k.current.get())
	}
	return out
}

// ManageGoProcs lets Run set the Go scheduler's Ps for the whole process:
// one while the agent carries one-way transfers only (procs.go). Only the
// process's owner calls it, before Run.
func (c *Client) ManageGoProcs() { c.manageProcs = true }

// Run keeps the session up and serves forwards until ctx is cancelled, then
// stops gracefully like Server.Run.
func (c *Client) Run(ctx context.Context) error {
	start := c.cfg()
	logSetupWarnings(c.log, start.TLS.Key, start.Admin, start.AdminPublic)
	streamCtx, killStreams := context.WithCancel(context.WithoutCancel(ctx))
	defer killStreams()
	defer startGoProcs(streamCtx, c.manageProcs, c.log, c.metrics)()
	acceptCtx, stopAccepting := context.WithCancel(ctx)
	defer stopAccepting()

	// Listeners open before the first session and stay open while it is
	// down, so local applications see a stable port.
	var conns sync.WaitGroup
	fs := newForwardSet(c.log, c.metrics, &conns, c.handover.listen, c.serveForward)
	if err := fs.start(acceptCtx, streamCtx, c.cfg().Forwards, origin{c.cfg().Path, c.cfg().ForwardLines}); err != nil {
		fs.stop()
		return err
	}
	c.mu.Lock()
	c.forwards = fs
	c.mu.Unlock()
	close(c.ready)

	var loops sync.WaitGroup
	startKeepers := func() {
		c.keepersMu.Lock()
		c.keeperRun = func(k *keeper) { loops.Go(func() { k.run(acceptCtx, streamCtx) }) }
		for _, ks := range c.keepers {
			for _, k := range ks {
				c.keeperRun(k)
			}
		}
		c.keepersMu.Unlock()
	}
	// A successor connects once it is ready, when the previous process
	// stops: two processes with one certificate would replace each
	// other's sessions on the server meanwhile. Its forwards' first
	// connections wait for the session (session_wait).
	takingOver := c.handover.hasParent()
	if !takingOver {
		startKeepers()
	}
	// No keeper starts once Run is stopping: loops.Wait needs them all.
	stopKeepers := func() {
		c.keepersMu.Lock()
		c.keeperRun = nil
		c.keepersMu.Unlock()
	}
	defer stopKeepers()
	loops.Go(func() { warnExpiries(acceptCtx, c.cfg().ExpiryWarning, c.tls.Policy, c.log, c.metrics) })
	c.admin.srv = &admin.Server{Metrics: c.metrics, Healthy: c.healthy, Status: c.status, Log: c.log}
	c.admin.listen = c.handover.listen
	err := c.admin.start(acceptCtx, c.cfg().Admin)
	var handed []restored
	if err == nil {
		// The previous process's streams: suspended, they move to our
		// sessions as they come up.
		handed, err = c.handover.restore(c.resume, c.cfg().Forwards, c.cfg().Services, c.log)
	}
	if err == nil {
		for _, r := range handed {
			conns.Go(func() {
				pipeAndLog(streamCtx, endLog{c.log.With("peer", r.peer), c.limited, r.peer}, c.metrics, r.kind, r.name, r.idle, r.stream, r.stream.Local(r.local), &c.handover.pipes)
				c.heavy.forget(r.stream)
			})
		}
		err = c.handover.ready(c.log)
	}
	if err == nil && takingOver {
		var keys []string
		for _, r := range handed {
			keys = append(keys, r.stream.Class())
		}
		c.keepLanes(keys)
		startKeepers()
	}
	if err != nil {
		stopAccepting()
		stopKeepers()
		fs.stop()
		c.admin.stop()
		loops.Wait()
		killStreams()
		conns.Wait()
		return err
	}
	if every := c.cfg().ReloadInterval; every > 0 {
		loops.Go(func() {
			watchFiles(acceptCtx, every, func() []string {
				cfg := c.cfg()
				return append([]string{cfg.Path, cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA}, cfg.TLS.CRL...)
			}, c.Reload, c.log)
		})
	}
	select {
	case <-ctx.Done():
	case <-c.handover.handedOver():
		c.log.Info("stopping: the new process serves the forwards now; draining this one's streams")
	}
	stopAccepting() // and stop reconnecting: the new process holds the sessions now
	stopKeepers()
	fs.stop()
	c.admin.stop()
	c.drain(c.cfg().DrainTimeout)
	killStreams()
	loops.Wait()
	conns.Wait()
	c.resume.Close()
	c.log.Info("stopped")
	return nil
}

// UseHandover makes Run open its listeners through h (see
// Server.UseHandover). Call it before Run.
func (c *Client) UseHandover(h *handover.Handover) {
	c.resume = c.handover.use(h, c.resume, func(inst string) *resume.Table {
		return newResumeTable(c.cfg().Settings, c.log, c.metrics, inst, c.resumeBound)
	}, c.log)
}

// HandOver starts the binary on disk as a successor that takes over the
// forward and admin listeners, and waits until it is ready; Run then stops
// accepting and drains as for a stop. On error nothing changed.
func (c *Client) HandOver(ctx context.Context) error {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	return c.handover.upgrade(ctx, c.resume, c.log)
}

// healthy: every class has its session up (its first lane: the others
// only add speed).
func (c *Client) healthy() bool {
	for _, ks := range c.keeperList() {
		if ks[0].current.get() == nil {
			return false
		}
	}
	return true
}

// status is what the admin listener's /status shows.
func (c *Client) status() admin.Status {
	cfg := c.cfg()
	st := admin.Status{Agent: "client", Version: Version, Started: c.started, Uptime: time.Since(c.started).Round(time.Second).String(), Healthy: c.healthy()}
	st.LastError = c.lastErr.get()
	for class, ks := range c.keeperList() {
		for _, k := range ks {
			if sess := k.current.get(); sess != nil {
				st.Sessions = append(st.Sessions, sessionStatus(sess, sess.Peer.Key(), class, k.lane))
			}
		}
	}
	c.mu.Lock()
	fs := c.forwards
	c.mu.Unlock()
	for _, f := range cfg.Forwards {
		class, from := c.forwardClass(f)
		fst := forwardStatus(c.metrics, "forward", f.Name, addrString(c.Addr(f.Name)), "", class, from)
		fst.NotApplied = fs.problem(f.Name)
		st.Forwards = append(st.Forwards, fst)
	}
	for _, svc := range cfg.Services {
		st.Services = append(st.Services, forwardStatus(c.metrics, "service", svc.Name, "", svc.Target, svc.Class, serviceClassFrom(svc)))
	}
	st.Expiries = expiryStatus(c.tls.Policy())
	rs := resumeStats(c.resume)
	st.Resume = &rs
	return st
}

// drain tells the server to open no more streams and waits up to limit for
// the streams in flight, on every class's session at once.
func (c *Client) drain(limit time.Duration) {
	var sessions []*mux.Session
	for _, ks := range c.keeperList() {
		for _, k := range ks {
			if s := k.current.get(); s != nil {
				sessions = append(sessions, s)
			}
		}
	}
	drainSessions(c.log, sessions, limit)
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
	p, err := loadPolicy(clientPolicySpec(cfg), x509.ExtKeyUsageClientAuth)
	if err != nil {
		return err
	}
	changes := describeChanges(c.tls.Policy(), p, old.Services, cfg.Services, old.Forwards, cfg.Forwards)
	if !slices.Equal(old.Servers, cfg.Servers) || old.TLS.ServerName != cfg.TLS.ServerName {
		changes = append(changes, "servers used from the next connection")
	}
	if old.BulkSpread != cfg.BulkSpread {
		changes = append(changes, fmt.Sprintf("bulk_spread = %v from the next heavy stream", cfg.BulkSpread))
	}
	c.tls.Store(p)
	c.state.Store(newClientState(cfg))
	c.mu.Lock()
	fs := c.forwards
	c.mu.Unlock()
	var ferr, aerr error
	if fs != nil {
		ferr = fs.apply(cfg.Forwards, origin{cfg.Path, cfg.ForwardLines})
	}
	var moved string
	if moved, aerr = c.admin.apply(cfg.Admin); moved != "" {
		changes = append(changes, moved)
	}
	// A class new to this config gets its session now.
	for _, class := range classesOf(cfg) {
		c.keeperFor(class)
	}
	c.learn(c.serverSaid())
	var more []string
	if cfg.BulkConnections != old.BulkConnections {
		// Lanes are keepers started with the agent: a live change would
		// stop some mid-stream.
		more = append(more, "bulk_connections")
	}
	if r := restartKeys(old.Settings, cfg.Settings, [2]string{old.LogLevel, old.LogFormat}, [2]string{cfg.LogLevel, cfg.LogFormat}, more...); r != "" {
		changes = append(changes, r)
	}
	// Warnings first, so that whoever sees the reloaded line has seen them.
	logSetupWarnings(c.log, cfg.TLS.Key, cfg.Admin, cfg.AdminPublic)
	reloadErr := logReloaded(c.log, changes, ferr, aerr)
	for _, ks := range c.keeperList() {
		for _, k := range ks {
			sess := k.current.get()
			if sess == nil {
				continue
			}
			if err := p.Recheck(sess.Peer, x509.ExtKeyUsageServerAuth, time.Now()); err != nil {
				c.log.Warn("closing session: the server no longer passes", "peer", sess.Peer.Name(), "reason", err)
				sess.CloseWithReason(fmt.Errorf("closed by reload: %w", err))
			}
		}
	}
	return c.lastErr.note(reloadErr)
}

// serverSaid is the classes of the server's services from its last hello.
func (c *Client) serverSaid() map[string]string {
	if p := c.serverSays.Load(); p != nil {
		return *p
	}
	return nil
}

// maxClassSwitches bounds how often one connection follows a change of
// its service's class (servers that disagree, reconnecting in turn).
const maxClassSwitches = 2

func (c *Client) serveForward(ctx context.Context, f config.Forward, local net.Conn) {
	class, _ := c.forwardClass(f)
	k := c.keeperFor(class)
	deadline := time.Now().Add(c.cfg().SessionWait)
	var (
		sess     *mux.Session
		owner    *keeper // sess's
		stream   tunnelStream
		err      error
		switches int
	)
	for {
		// The class's least busy lane; while none is up, its first lane
		// is awaited. A refusal that retrying cannot change (revoked,
		// not allowed) refuses at once: holding the connection for
		// session_wait only delays the same answer.
		sess, owner = c.pick(class, c.movable(f, class))
		if sess == nil {
			sess, err = k.current.wait(ctx, max(time.Until(deadline), time.Millisecond))
			if err != nil {
				// Keyed by cause too, so a new cause is logged at once.
				c.metrics.LocalRefused(f.Name, admin.RefusedNoSession)
				c.limited.Warn("no-session:"+f.Name+":"+failureReason(err), "connection refused: no session to the server", "forward", f.Name, "local", local.RemoteAddr().String(), "error", err)
				forward.Reset(local)
				return
			}
			owner = k
		}
		// The server's hello may give the service another class than
		// the port's default we started with: ride that class's session.
		if now, _ := c.forwardClass(f); now != class && switches < maxClassSwitches {
			class, k = now, c.keeperFor(now)
			switches++
			continue
		}
		if sess.Opened() >= rotateAfter {
			owner.rotate()
		}
		stream, err = openStream(ctx, c.settings(), sess, f, class, owner.lane, local)
		if !errors.Is(err, mux.ErrDraining) {
			break
		}
		// The server drains this session: wait for its keeper's next
		// one (nothing was sent yet, so the connection loses nothing).
		owner.current.clear(sess)
	}
	if err != nil {
		// Once per interval per forward and cause, as "no session": a
		// session that takes no more streams (our bound of resumable
		// streams reached, a wedged server) would otherwise give every
		// local connection a line.
		c.metrics.LocalRefused(f.Name, admin.RefusedOpenFailed)
		c.limited.Warn("open-failed:"+f.Name+":"+failureReason(err), "connection refused: cannot open stream", "forward", f.Name, "local", local.RemoteAddr().String(), "error", err)
		forward.Reset(local)
		return
	}
	c.lightArrived()
	pipeAndLog(ctx, endLog{c.log.With("peer", sess.Peer.Name()), c.limited, sess.Peer.Key()}, c.metrics, "forward", f.Name, f.IdleTimeout, stream, localFor(stream, local), &c.handover.pipes)
	c.heavy.forget(stream)
}

// resumeBound bounds the resumable streams the server may hold here: a
// session per class and lane at most.
func (c *Client) resumeBound() int {
	return resumeBound(c.cfg().Settings.MaxStreamsPerSession, len(laneClasses)+1) * mux.MaxLanes
}
