// Package mux carries many TCP streams over one authenticated connection:
// a versioned hello in each direction, then one yamux session in which every
// stream starts with a header naming the service it wants.
package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/yamux"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Config tunes a session. Zero values take the defaults below.
type Config struct {
	Agent        string        // our version, sent in the hello
	Class        string        // traffic class of the session, sent in the hello (client side)
	HelloTimeout time.Duration // bound on the hello exchange; default 10s
	// Liveness: when nothing has been received for PingAfter we ping; when
	// nothing at all has been received for DeadAfter the peer is declared
	// dead. Any byte counts, so a bulk transfer that delays a ping reply
	// never kills a healthy session (yamux's own keepalive would).
	PingAfter time.Duration // default 10s
	DeadAfter time.Duration // default 30s
	// OpenTimeout bounds how long a stream waits for the peer's reply to
	// its header (the peer dials the target meanwhile); default 30s.
	OpenTimeout time.Duration
	// OnPing, if set, is told the round trip time of every answered ping.
	OnPing func(time.Duration)
	// MaxStreams bounds the streams open at once on this session; the
	// peer's opens beyond it are refused as busy. Default 4096.
	MaxStreams int
	// Window is the per-stream receive window; both ends must use the same
	// (a frame beyond it kills the session). Default 256 KiB, yamux's minimum.
	Window uint32
	// WindowFor, if set, picks the window from the session's traffic class
	// (ours on the client, the hello's on the server), so both ends agree.
	WindowFor func(class string) uint32
	Logger    hclog.Logger
}

func (c Config) withDefaults() Config {
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 10 * time.Second
	}
	if c.PingAfter <= 0 {
		c.PingAfter = 10 * time.Second
	}
	if c.DeadAfter <= 0 {
		c.DeadAfter = 30 * time.Second
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = 30 * time.Second
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = 4096
	}
	if c.Window < 256*1024 {
		c.Window = 256 * 1024 // yamux's minimum
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}

// yamuxConfig is the same on both sides: the receive window must agree
// (a frame beyond it kills the whole session) and so should the backlog.
func yamuxConfig(log hclog.Logger, window uint32) *yamux.Config {
	return &yamux.Config{
		// Both sides alike; our accept loop never blocks (each stream is
		// handled on its own goroutine), so the backlog only absorbs bursts.
		AcceptBacklog: 256,
		// Off: yamux declares the peer dead when one ping reply waits behind
		// bulk data for ConnectionWriteTimeout. Session.watch does liveness
		// on any received byte instead.
		EnableKeepAlive:   false,
		KeepAliveInterval: 30 * time.Second, // unused, but VerifyConfig wants it > 0
		// How long a stream write may wait for its turn on the connection
		// before failing. Generous: on a slow link a burst can legitimately
		// queue.
		ConnectionWriteTimeout: 30 * time.Second,
		// 256 KiB per stream: enough for loopback and LAN line rate; larger
		// windows make small messages queue longer behind bulk (PITFALLS.md).
		MaxStreamWindowSize: window,
		// Off: a timer here resets a half-closed stream whose reply runs
		// long and the reader sees a clean EOF — silent truncation. A
		// half-closed stream lives until its peer finishes.
		StreamCloseTimeout: 0,
		// An unanswered open closes the session; the peer acks on accept,
		// which never waits, so this only fires on a wedged peer.
		StreamOpenTimeout: 75 * time.Second,
		Logger:            yamuxLogger{log.Named("yamux")},
	}
}

// Session is one authenticated connection to a peer agent.
type Session struct {
	Peer      ssl.Identity
	PeerHello Hello

	y      *yamux.Session
	conn   *countingConn
	cfg    Config
	log    hclog.Logger
	closed chan struct{}

	wg        sync.WaitGroup // every goroutine the session starts
	spawnMu   sync.Mutex
	spawnDone bool // Close is waiting for wg: start nothing more
	closeOnce sync.Once
	reason    atomic.Pointer[error]

	since    time.Time
	opened   atomic.Uint64
	draining atomic.Bool

	// peerDraining is closed when the peer says it is draining (its
	// notice on the control stream, or yamux's GoAway on an open): the
	// peer's owner should move new streams to a new session at once.
	peerDraining     chan struct{}
	peerDrainingOnce sync.Once

	ctlMu   sync.Mutex
	ctl     *yamux.Stream // ours: we write the IDs of streams we abort
	live    sync.Mutex
	streams map[uint32]*Stream // open streams, for aborts from the peer
}

// Client and Server name which end of the yamux session we are: the agent
// that dialed the TCP connection is the client.
const (
	RoleClient = "client"
	RoleServer = "server"
)

// Establish exchanges hellos on conn (already authenticated by TLS) and starts
// the yamux session. role is RoleClient or RoleServer.
func Establish(ctx context.Context, conn net.Conn, role string, peer ssl.Identity, cfg Config) (*Session, error) {
	cfg = cfg.withDefaults()
	hello, err := exchangeHello(ctx, conn, Hello{Role: role, Agent: cfg.Agent, Class: cfg.Class}, cfg.HelloTimeout)
	if err != nil {
		return nil, err
	}
	if hello.Role == role {
		return nil, fmt.Errorf("peer is also a %s agent (connect a tunnel-client to a tunnel-server)", role)
	}
	cc := &countingConn{Conn: conn}
	cc.touch()
	var y *yamux.Session
	if cfg.WindowFor != nil {
		class := cfg.Class
		if role == RoleServer {
			class = hello.Class
		}
		cfg.Window = max(cfg.WindowFor(class), cfg.Window)
	}
	joined := newFrameJoiner(cc)
	if role == RoleClient {
		y, err = yamux.Client(joined, yamuxConfig(cfg.Logger, cfg.Window))
	} else {
		y, err = yamux.Server(joined, yamuxConfig(cfg.Logger, cfg.Window))
	}
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	s := &Session{Peer: peer, PeerHello: hello, y: y, conn: cc, cfg: cfg, log: cfg.Logger, closed: make(chan struct{}), peerDraining: make(chan struct{}), streams: map[uint32]*Stream{}, since: time.Now()}
	if s.ctl, err = y.OpenStream(); err == nil {
		_, err = s.ctl.Write([]byte{headerControl, 0})
	}
	if err != nil {
		y.Close()
		return nil, fmt.Errorf("open control stream: %w", err)
	}
	s.wg.Go(s.watch)
	return s, nil
}

func exchangeHello(ctx context.Context, conn net.Conn, ours Hello, timeout time.Duration) (Hello, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	defer conn.SetDeadline(time.Time{})
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	msg, err := encodeHello(ours)
	if err != nil {
		return Hello{}, err
	}
	// Both sides write first, then read: a hello is far smaller than any
	// socket buffer, so this cannot deadlock, and each side learns the
	// other's version even when they differ.
	if _, err := conn.Write(msg); err != nil {
		return Hello{}, fmt.Errorf("send hello: %w", err)
	}
	theirs, err := readHello(conn)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return Hello{}, fmt.Errorf("peer sent no hello within %s", timeout)
		}
		return Hello{}, err
	}
	if theirs.Version != ProtocolVersion {
		return Hello{}, fmt.Errorf("peer speaks tunnel protocol version %d, we speak %d: run the same agent version on both ends", theirs.Version, ProtocolVersion)
	}
	return theirs, nil
}

// watch pings the peer every PingAfter (its round trip time is a useful
// metric) and declares it dead after DeadAfter without a single byte from
// it. Only silence kills: a ping reply late behind bulk data does not.
func (s *Session) watch() {
	tick := time.NewTicker(s.cfg.PingAfter / 4)
	defer tick.Stop()
	var (
		outstanding atomic.Int32
		lastPing    time.Time
	)
	for {
		select {
		case <-s.y.CloseChan():
			s.finish(nil)
			return
		case <-tick.C:
		}
		if quiet := s.conn.quietFor(); quiet >= s.cfg.DeadAfter {
			s.finish(fmt.Errorf("peer silent for %s (dead after %s)", quiet.Round(time.Second), s.cfg.DeadAfter))
			return
		}
		// A ping goes out every PingAfter whether or not the last one was
		// answered: while we receive a bulk upload our pings are the only
		// bytes the peer gets from us, and its replies may sit behind that
		// upload for longer than dead_after. Each Ping blocks until its
		// reply or ConnectionWriteTimeout, so a few may be in flight.
		if time.Since(lastPing) < s.cfg.PingAfter || outstanding.Load() >= maxOutstandingPings {
			continue
		}
		lastPing = time.Now()
		outstanding.Add(1)
		if !s.spawn(func() {
			defer outstanding.Add(-1)
			if rtt, err := s.y.Ping(); err == nil && s.cfg.OnPing != nil {
				s.cfg.OnPing(rtt)
			}
		}) {
			return
		}
	}
}

// maxOutstandingPings bounds the pings awaiting a reply (each holds a
// goroutine for at most ConnectionWriteTimeout).
const maxOutstandingPings = 4

// finish closes the session once, remembering why.
func (s *Session) finish(reason error) {
	s.closeOnce.Do(func() {
		if reason != nil {
			s.reason.Store(&reason)
		}
		_ = s.y.Close()
		close(s.closed)
	})
}

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.closed }

// Err says why the session ended: nil while it runs or after our own Close.
func (s *Session) Err() error {
	if p := s.reason.Load(); p != nil {
		return *p
	}
	select {
	case <-s.closed:
		return errors.New("connection closed")
	default:
		return nil
	}
}

// Close ends the session and every stream on it, and waits for the
// session's own goroutines.
func (s *Session) Close() error {
	s.CloseWithReason(nil)
	return nil
}

// CloseWithReason ends the session, recording why (for logs).
func (s *Session) CloseWithReason(reason error) {
	s.finish(reason)
	s.spawnMu.Lock()
	s.spawnDone = true
	s.spawnMu.Unlock()
	s.wg.Wait()
}

// spawn runs f on a goroutine the session waits for, unless the session
// is already being waited for (then it reports false).
func (s *Session) spawn(f func()) bool {
	s.spawnMu.Lock()
	defer s.spawnMu.Unlock()
	if s.spawnDone {
		return false
	}
	s.wg.Go(f)
	return true
}

// RemoteAddr is the peer's address of the tunnel connection.
func (s *Session) RemoteAddr() string { return s.conn.RemoteAddr().String() }

// Since is when the session was established.
func (s *Session) Since() time.Time { return s.since }

// NumStreams is the number of tunnelled streams open on the session.
func (s *Session) NumStreams() int {
	s.live.Lock()
	defer s.live.Unlock()
	return len(s.streams)
}

// Opened is how many streams this side has opened on the session. yamux
// stream IDs run out after about 2^31 opens: rotate the session long before.
func (s *Session) Opened() uint64 { return s.opened.Load() }

// Drain tells the peer to open no more streams (GoAway) and waits until
// every stream has ended or ctx is done. It does not close the session.
func (s *Session) Drain(ctx context.Context) error {
	if !s.draining.Swap(true) {
		// The notice first: yamux's GoAway is silent until the peer
		// tries to open a stream, and a peer that hears nothing keeps
		// sending its new connections here to be refused.
		s.sendControl(drainNotice)
	}
	_ = s.y.GoAway()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for s.NumStreams() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("drain: %d streams still open: %w", s.NumStreams(), ctx.Err())
		case <-s.closed:
			return nil
		case <-tick.C:
		}
	}
	return nil
}

// Open opens a stream to the peer's service. It does not wait for the peer's
// answer: the first Read returns it (an *OpenError if refused), so the
// opening side may send data at once and saves a round trip per stream.
//
// source, the local application's address, is passed to the peer for its
// logs and for a PROXY protocol header to the target; it may be "".
func (s *Session) Open(ctx context.Context, service, source string) (*Stream, error) {
	hdr, err := encodeHeader(service, source)
	if err != nil {
		return nil, err
	}
	if s.draining.Load() {
		return nil, ErrDraining
	}
	select {
	case <-s.peerDraining:
		return nil, ErrDraining
	default:
	}
	s.opened.Add(1)
	y, err := s.y.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", s.explain(err))
	}
	_ = y.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	if _, err := y.Write(hdr); err != nil {
		_ = y.Close()
		return nil, fmt.Errorf("open stream: write header: %w", s.explain(err))
	}
	_ = y.SetWriteDeadline(time.Time{})
	_ = y.SetReadDeadline(time.Now().Add(s.cfg.OpenTimeout))
	return s.track(&Stream{y: y, sess: s, service: service, awaitReply: true}), nil
}

func (s *Session) track(st *Stream) *Stream {
	s.live.Lock()
	s.streams[st.y.StreamID()] = st
	s.live.Unlock()
	return st
}

func (s *Session) untrack(st *Stream) {
	s.live.Lock()
	if s.streams[st.y.StreamID()] == st {
		delete(s.streams, st.y.StreamID())
	}
	s.live.Unlock()
}

// PeerDraining is closed once the peer has said it is draining: it accepts
// no new streams here, and the ones open are finishing.
func (s *Session) PeerDraining() <-chan struct{} { return s.peerDraining }

func (s *Session) markPeerDraining() {
	s.peerDrainingOnce.Do(func() { close(s.peerDraining) })
}

// drainNotice is the control message "I am draining". yamux never uses
// stream ID 0, so an older peer that reads it as an abort finds no stream
// and ignores it.
const drainNotice = 0

// sendAbort tells the peer to reset its end of stream id.
func (s *Session) sendAbort(id uint32) { s.sendControl(id) }

// sendControl writes one control message: a stream ID to abort, or
// drainNotice.
func (s *Session) sendControl(id uint32) {
	var msg [4]byte
	binary.BigEndian.PutUint32(msg[:], id)
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	if _, err := s.ctl.Write(msg[:]); err != nil {
		s.log.Debug("cannot send control message", "stream", id, "error", err)
	}
}

// readAborts serves the peer's control stream until the session ends.
func (s *Session) readAborts(ctl *yamux.Stream) {
	var msg [4]byte
	for {
		if _, err := io.ReadFull(ctl, msg[:]); err != nil {
			return
		}
		id := binary.BigEndian.Uint32(msg[:])
		if id == drainNotice {
			s.markPeerDraining()
			continue
		}
		s.live.Lock()
		st := s.streams[id]
		s.live.Unlock()
		if st != nil {
			st.abortedByPeer()
		}
	}
}

// explain replaces yamux's generic shutdown error with why the session ended.
func (s *Session) explain(err error) error {
	if errors.Is(err, yamux.ErrRemoteGoAway) {
		s.markPeerDraining()
		return ErrDraining
	}
	if errors.Is(err, yamux.ErrSessionShutdown) {
		if r := s.Err(); r != nil {
			return fmt.Errorf("session closed: %w", r)
		}
	}
	return err
}

// Service is what the accepting side offers under a name.
type Service struct {
	// Allowed decides whether the session's peer may open it. It is asked on
	// every stream open, so a changed rule applies to the very next stream.
	Allowed func(ssl.Identity) bool
	// Dial connects to the target for a request.
	Dial func(ctx context.Context, req Request) (net.Conn, error)
}

// Request is one stream open, as the accepting side sees it.
type Request struct {
	Service string
	Source  string // the opening side's local application, "ip:port", or ""
	Peer    ssl.Identity
}

// Lookup finds a service by name for the accept loop.
type Lookup func(name string) (Service, bool)

// Accepted is called, on its own goroutine, for every stream whose service
// was allowed and whose target answered. It owns both connections.
type Accepted func(ctx context.Context, service string, stream *Stream, target net.Conn)

// Serve accepts streams until the session ends or ctx is cancelled, and
// returns why the session ended (nil if by ctx or our own Close).
func (s *Session) Serve(ctx context.Context, lookup Lookup, accepted Accepted) error {
	stop := context.AfterFunc(ctx, func() { s.finish(nil) })
	defer stop()
	var streams sync.WaitGroup
	defer streams.Wait()
	for {
		y, err := s.y.AcceptStream()
		if err != nil {
			s.finish(nil)
			if ctx.Err() != nil {
				return nil
			}
			return s.Err()
		}
		streams.Go(func() { s.handle(ctx, y, lookup, accepted) })
	}
}

func (s *Session) handle(ctx context.Context, y *yamux.Stream, lookup Lookup, accepted Accepted) {
	_ = y.SetReadDeadline(time.Now().Add(s.cfg.OpenTimeout))
	h, err := readHeader(y)
	name := h.service
	if h.control {
		_ = y.SetReadDeadline(time.Time{})
		s.readAborts(y)
		return
	}
	if err != nil {
		s.log.Warn("stream refused: bad header", "peer", s.Peer.Name(), "error", err)
		s.refuse(y, CodeBadHeader, err.Error())
		return
	}
	_ = y.SetReadDeadline(time.Time{})
	if s.NumStreams() >= s.cfg.MaxStreams {
		s.log.Warn("stream refused: session at its stream limit", "peer", s.Peer.Name(), "service", name, "max_streams_per_session", s.cfg.MaxStreams)
		s.refuse(y, CodeBusy, fmt.Sprintf("the peer has %d streams open on this session, its limit", s.cfg.MaxStreams))
		return
	}
	svc, ok := lookup(name)
	if !ok {
		s.log.Warn("stream refused: unknown service", "peer", s.Peer.Name(), "service", name)
		s.refuse(y, CodeUnknownService, fmt.Sprintf("no service %q here", name))
		return
	}
	if svc.Allowed == nil || !svc.Allowed(s.Peer) {
		s.log.Warn("stream refused: denied", "peer", s.Peer.Name(), "service", name)
		s.refuse(y, CodeDenied, fmt.Sprintf("%q may not open service %q", s.Peer.Name(), name))
		return
	}
	target, err := svc.Dial(ctx, Request{Service: name, Source: h.source, Peer: s.Peer})
	if err != nil {
		s.log.Warn("stream refused: dial failed", "peer", s.Peer.Name(), "service", name, "error", err)
		s.refuse(y, CodeDialFailed, err.Error())
		return
	}
	if _, err := y.Write(encodeReply(CodeOK, "")); err != nil {
		s.log.Debug("stream lost before reply", "peer", s.Peer.Name(), "service", name, "error", err)
		_ = y.Close()
		_ = target.Close()
		return
	}
	accepted(ctx, name, s.track(&Stream{y: y, sess: s, service: name}), target)
}

func (s *Session) refuse(y *yamux.Stream, code Code, msg string) {
	_ = y.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	_, _ = y.Write(encodeReply(code, msg))
	_ = y.Close()
}

// ErrDraining is returned by Open on a session that is being drained.
var ErrDraining = errors.New("session is draining")

// countingConn remembers when the peer last sent anything.
type countingConn struct {
	net.Conn
	last atomic.Int64 // unix nanoseconds
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *countingConn) touch() { c.last.Store(time.Now().UnixNano()) }

func (c *countingConn) quietFor() time.Duration {
	return time.Since(time.Unix(0, c.last.Load()))
}
