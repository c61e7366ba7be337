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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/yamux"

	"github.com/tunnelworks/tunnel/ratelog"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Config tunes a session. Zero values take the defaults below.
type Config struct {
	Agent        string        // our version, sent in the hello
	Class        string        // traffic class of the session, sent in the hello (client side)
	Lane         int           // which of the class's sessions this is, sent in the hello (client side; see Hello.Lane)
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
	// MaxStreams bounds the tunnelled streams the session holds at once,
	// both directions, each counted from the moment yamux accepts it
	// (before its header has arrived). The two control streams come on
	// top. The peer's opens beyond it are reset. Default 1024.
	MaxStreams int
	// MaxBuffer bounds the receive buffer the peer can make us hold on
	// this session: each stream may buffer up to Window, so the session
	// also holds at most MaxBuffer/Window streams, control streams
	// included. Default 256 MiB.
	MaxBuffer int64
	// HeaderTimeout bounds how long an accepted stream may take to send
	// its header; a stream still silent then is reset. Default 10s.
	HeaderTimeout time.Duration
	// Classes are the traffic classes a client may name in its hello and
	// either side may give a service in its hello's Services (checked on
	// receipt; a class outside the set refuses the session). Empty: only
	// "" (no class), and no services.
	Classes []string
	// LaneClasses are the traffic classes whose sessions may be one of
	// several lanes (Hello.Lane above 0); any announces CapLanes in our
	// hello. On the server, a hello whose lane is out of range or above 0
	// on another class is refused; with none, the server reads every
	// hello as lane 0, as a server before lanes did.
	LaneClasses []string
	// Services are the classes of the services we offer the peer, by name,
	// sent in our hello (see Hello.Services): at most maxHelloServices,
	// each class one of Classes.
	Services map[string]string
	// Refusal, on the server, refuses this client whatever its hello says:
	// the server reads the hello, sends the refusal in place of its own
	// and Establish returns it. For refusals by policy that TLS cannot
	// word (revoked, not allowed): the handshake completed, the client is
	// authenticated, and nothing is ever served on the connection.
	Refusal *RefusedError
	// Admit, on the server, decides on a client whose hello passed, before
	// the server answers: an error refuses it (a *RefusedError gives the
	// code and the words the client gets; any other error is sent as
	// RefusalOther with its text).
	Admit func(Hello) error
	// OnRefuse, if set, is told of every stream the peer opened that we
	// refused: kind is one of the Refused* constants, service the name the
	// peer asked for ("" when unknown yet), n how many (more than one only
	// for yamux's own counts). It runs on the stream's goroutine or the
	// session's watcher and must not block. mux logs them only at debug.
	OnRefuse func(kind, service string, err error, n int)
	// OnHeaderWait, if set, is told +1 when an accepted stream starts
	// waiting for its header and -1 when the wait ends.
	OnHeaderWait func(delta int)
	// Window is the per-stream receive window; both ends must use the same
	// (a frame beyond it kills the session). Default 256 KiB, yamux's minimum.
	Window uint32
	// WindowFor, if set, picks the window from the session's traffic class
	// (ours on the client, the hello's on the server), so both ends agree.
	WindowFor func(class string) uint32
	Logger    hclog.Logger
	// Resumable announces CapResume in our hello: streams with a peer that
	// announces it too may be opened resumable (OpenResumable).
	Resumable bool
	// Instance is sent in our hello (see Hello.Instance).
	Instance string
	// Resume serves the peer's move of a resumable stream to this session
	// (Session.Resume on its side): it finds the stream named token, checks
	// that it is this peer's, and answers with st.AcceptResume; an error
	// refuses the move (a *ResumeRefusal says with what code and words).
	Resume func(st *Stream, token Token, delivered uint64) error
	// YamuxLog, if set, limits yamux's own log lines across every session
	// that shares it (the agent's); nil limits each session on its own.
	YamuxLog *ratelog.Log
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
		c.MaxStreams = 1024
	}
	if c.MaxBuffer <= 0 {
		c.MaxBuffer = 256 << 20
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = 10 * time.Second
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
func yamuxConfig(log hclog.Logger, limited *ratelog.Log, window uint32, maxStreams int) *yamux.Config {
	c := &yamux.Config{
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
		// windows make small messages queue longer behind bulk (bench/README.md).
		MaxStreamWindowSize: window,
		// Off: a timer here resets a half-closed stream whose reply runs
		// long and the reader sees a clean EOF — silent truncation. A
		// half-closed stream lives until its peer finishes.
		StreamCloseTimeout: 0,
		// An unanswered open closes the session; the peer acks on accept,
		// which never waits, so this only fires on a wedged peer.
		StreamOpenTimeout: 75 * time.Second,
		Logger:            newYamuxLogger(log.Named("yamux"), limited),
	}
	// The peer's opens beyond the session's cap are reset by yamux before
	// it allocates anything, and counted (refusedStreams).
	setMaxStreams(c, maxStreams)
	return c
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

	// peerReplaced is closed when the peer says a newer session from the
	// same certificate has replaced this one.
	peerReplaced     chan struct{}
	peerReplacedOnce sync.Once

	ctlMu   sync.Mutex
	ctl     *yamux.Stream // ours: we write control messages on it
	peerCtl atomic.Bool   // the peer's control stream has been accepted
	live    sync.Mutex
	streams map[uint32]*Stream // tunnelled streams open, for NumStreams and Drain
	// onDelivered are the resumable streams' handlers of the peer's
	// delivery notices, by stream ID.
	onDelivered map[uint32]func(uint64)

	// maxStreams is the cap on streams yamux holds for this session, both
	// directions, control streams included: Config.MaxStreams plus the two
	// control streams, and no more than Config.MaxBuffer/Window.
	maxStreams int
}

// Client and Server name which end of the yamux session we are: the agent
// that dialed the TCP connection is the client.
const (
	RoleClient = "client"
	RoleServer = "server"
	// RoleProbe is a client that only asks for the server's verdict
	// (`validate -online`): the server answers with its hello (the services
	// this certificate may open) or its refusal, and starts no session, so
	// a probe never replaces the running client's session.
	RoleProbe = "probe"
)

// ErrProbed is Establish's answer on the server to a probe: it has been
// told the verdict, and no session starts.
var ErrProbed = errors.New("the client only probed (validate -online); no session started")

// Establish exchanges hellos on conn (already authenticated by TLS) and starts
// the yamux session. role is RoleClient or RoleServer.
func Establish(ctx context.Context, conn net.Conn, role string, peer ssl.Identity, cfg Config) (*Session, error) {
	cfg = cfg.withDefaults()
	ours := Hello{Role: role, Agent: cfg.Agent, Class: cfg.Class, Lane: cfg.Lane, Services: cfg.Services, Instance: cfg.Instance}
	if cfg.Resumable {
		ours.Capabilities = append(ours.Capabilities, CapResume)
	}
	if len(cfg.LaneClasses) > 0 {
		ours.Capabilities = append(ours.Capabilities, CapLanes)
	}
	hello, err := exchangeHello(ctx, conn, role, ours, cfg)
	if err != nil {
		return nil, err
	}
	if hello.Role == RoleProbe {
		return nil, ErrProbed
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
	maxStreams := streamCap(cfg.MaxStreams, cfg.MaxBuffer, cfg.Window)
	joined := newFrameJoiner(cc)
	if role == RoleClient {
		y, err = yamux.Client(joined, yamuxConfig(cfg.Logger, cfg.YamuxLog, cfg.Window, maxStreams))
	} else {
		y, err = yamux.Server(joined, yamuxConfig(cfg.Logger, cfg.YamuxLog, cfg.Window, maxStreams))
	}
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	s := &Session{
		Peer: peer, PeerHello: hello, y: y, conn: cc, cfg: cfg, log: cfg.Logger,
		closed: make(chan struct{}), peerDraining: make(chan struct{}), peerReplaced: make(chan struct{}),
		streams: map[uint32]*Stream{}, since: time.Now(), maxStreams: maxStreams,
		onDelivered: map[uint32]func(uint64){},
	}
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

// controlStreams is how many control streams a session holds: ours and
// the peer's.
const controlStreams = 2

// streamCap is how many streams, control streams included, a session may
// hold: the configured tunnelled streams plus the control streams, and no
// more than the buffer budget allows at a full window each. Never below
// what the control streams and one tunnelled stream need.
func streamCap(maxStreams int, maxBuffer int64, window uint32) int {
	n := int64(maxStreams) + controlStreams
	if byBuffer := maxBuffer / int64(window); byBuffer < n {
		n = byBuffer
	}
	return int(max(n, controlStreams+1))
}

// MaxStreams is the cap on the streams this session holds at once, both
// directions, control streams included (see Config.MaxStreams and
// Config.MaxBuffer).
func (s *Session) MaxStreams() int { return s.maxStreams }

// checkHello validates what the peer said about itself: every string in it
// is the peer's, so only values from a fixed set pass, and errors quote at
// most a short prefix of anything else.
func checkHello(h Hello, ours string, classes, laneClasses []string) (Hello, error) {
	want := RoleServer
	if ours == RoleServer {
		want = RoleClient
	}
	switch h.Role {
	case want:
	case RoleProbe:
		if ours != RoleServer {
			return Hello{}, errors.New("a probe's hello reached a client (a probe connects to a tunnel-server)")
		}
		if h.Class != "" {
			return Hello{}, fmt.Errorf("probe's hello names traffic class %s; a probe names none", quoteShort(h.Class))
		}
		if h.Lane != 0 {
			return Hello{}, fmt.Errorf("probe's hello names lane %d; a probe names none", h.Lane)
		}
	case ours:
		return Hello{}, fmt.Errorf("peer is also a %s agent (connect a tunnel-client to a tunnel-server)", ours)
	default:
		return Hello{}, fmt.Errorf("peer's hello names role %s, not %q", quoteShort(h.Role), want)
	}
	if ours == RoleServer && h.Role != RoleProbe {
		if !slices.Contains(classes, h.Class) && (len(classes) > 0 || h.Class != "") {
			return Hello{}, fmt.Errorf("peer's hello names traffic class %s, not one of %q", quoteShort(h.Class), classes)
		}
		switch {
		case len(laneClasses) == 0:
			// As a server before lanes: one session per class.
			h.Lane = 0
		case h.Lane < 0 || h.Lane >= MaxLanes:
			return Hello{}, fmt.Errorf("peer's hello names lane %d, not 0 to %d", h.Lane, MaxLanes-1)
		case h.Lane > 0 && !slices.Contains(laneClasses, h.Class):
			return Hello{}, fmt.Errorf("peer's hello names lane %d of traffic class %q, which has one session (lane 0); only %q may have more", h.Lane, h.Class, laneClasses)
		}
	} else if h.Class != "" {
		return Hello{}, fmt.Errorf("server's hello names traffic class %s; a server names none", quoteShort(h.Class))
	} else if h.Lane != 0 {
		return Hello{}, fmt.Errorf("server's hello names lane %d; a server names none", h.Lane)
	}
	if len(h.Services) > maxHelloServices {
		return Hello{}, fmt.Errorf("peer's hello lists %d services, more than %d", len(h.Services), maxHelloServices)
	}
	for name, class := range h.Services {
		if err := checkName(name); err != nil {
			return Hello{}, fmt.Errorf("peer's hello lists a service named %s: %s", quoteShort(name), "not a service name")
		}
		if class == "" || !slices.Contains(classes, class) {
			return Hello{}, fmt.Errorf("peer's hello gives service %q traffic class %s, not one of %q", name, quoteShort(class), classes)
		}
	}
	// Logged only; keep it short and printable.
	h.Agent = strings.ToValidUTF8(clip(h.Agent, 64), "?")
	// Only capabilities we know are kept: the rest mean nothing here.
	if len(h.Capabilities) > maxCaps {
		return Hello{}, fmt.Errorf("peer's hello lists %d capabilities, more than %d", len(h.Capabilities), maxCaps)
	}
	h.Capabilities = slices.DeleteFunc(h.Capabilities, func(c string) bool { return c != CapResume && c != CapLanes })
	if len(h.Instance) > maxInstance || strings.IndexFunc(h.Instance, func(r rune) bool {
		return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f')
	}) >= 0 {
		return Hello{}, fmt.Errorf("peer's hello names instance %s, not up to %d hex digits", quoteShort(h.Instance), maxInstance)
	}
	return h, nil
}

// maxQuoted bounds how much of a peer's string an error or log line quotes.
const maxQuoted = 32

// quoteShort quotes at most maxQuoted bytes of s.
func quoteShort(s string) string {
	if len(s) <= maxQuoted {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:maxQuoted], len(s))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// exchangeHello sends our hello and reads the peer's. The client writes
// first; the server reads the client's hello first, so it can answer with
// a refusal in place of its own (cfg.Refusal, a hello that does not pass,
// cfg.Admit). Either way each side learns the other's version.
func exchangeHello(ctx context.Context, conn net.Conn, role string, ours Hello, cfg Config) (Hello, error) {
	timeout := cfg.HelloTimeout
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
	if role != RoleServer {
		// A hello is far smaller than any socket buffer: the write never
		// waits for the server's read.
		if _, err := conn.Write(msg); err != nil {
			return Hello{}, fmt.Errorf("send hello: %w", err)
		}
	}
	theirs, err := readHello(conn)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return Hello{}, fmt.Errorf("peer sent no hello within %s", timeout)
		}
		return Hello{}, err
	}
	var refusal *RefusedError
	if theirs.Version != ProtocolVersion {
		err = fmt.Errorf("peer speaks tunnel protocol version %d, we speak %d: run the same agent version on both ends", theirs.Version, ProtocolVersion)
		refusal = &RefusedError{Code: RefusalBadHello, Msg: fmt.Sprintf("the server speaks tunnel protocol version %d, the client %d: run the same agent version on both ends", ProtocolVersion, theirs.Version)}
	} else if theirs, err = checkHello(theirs, role, cfg.Classes, cfg.LaneClasses); err != nil {
		refusal = &RefusedError{Code: RefusalBadHello, Msg: err.Error()}
	}
	if role != RoleServer {
		return theirs, err
	}
	// The server: a refusal by policy comes first (it is the operator's
	// real answer), then a hello that does not pass, then admission.
	switch {
	case cfg.Refusal != nil:
		refusal = cfg.Refusal
	case refusal != nil:
	case cfg.Admit != nil && theirs.Role != RoleProbe: // a probe starts no session: no session limit applies
		if aerr := cfg.Admit(theirs); aerr != nil {
			if !errors.As(aerr, &refusal) {
				refusal = &RefusedError{Code: RefusalOther, Msg: aerr.Error()}
			}
		}
	}
	if refusal != nil {
		// Best effort: the client learns why, then the connection closes.
		_, _ = conn.Write(encodeRefusal(refusal.Code, refusal.Msg))
		if err != nil && cfg.Refusal == nil {
			return Hello{}, err // the hello's own fault, in our words
		}
		return Hello{}, &RefusedError{Code: refusal.Code, Msg: refusal.Msg}
	}
	if _, err := conn.Write(msg); err != nil {
		return Hello{}, fmt.Errorf("send hello: %w", err)
	}
	return theirs, nil
}

// Probe asks a server for its verdict on our certificate without starting
// a session (RoleProbe): its hello, whose Services are what we may open, or
// its refusal (a *RefusedError). conn is authenticated by TLS already.
func Probe(ctx context.Context, conn net.Conn, cfg Config) (Hello, error) {
	cfg = cfg.withDefaults()
	return exchangeHello(ctx, conn, RoleProbe, Hello{Role: RoleProbe, Agent: cfg.Agent}, cfg)
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
		refused     [2]uint64 // yamux's counts already reported
	)
	ping := func() bool {
		lastPing = time.Now()
		outstanding.Add(1)
		return s.spawn(func() {
			defer outstanding.Add(-1)
			rtt, err := s.y.Ping()
			if err != nil {
				return
			}
			notePathRTT(s.y, rtt) // sizes the window bulk streams share
			if s.cfg.OnPing != nil {
				s.cfg.OnPing(rtt)
			}
		})
	}
	// One ping at once, before streams load the connection: the least
	// round trip, which sizes the window bulk streams share beside small
	// messages, is best measured quiet.
	if !ping() {
		return
	}
	for {
		select {
		case <-s.y.CloseChan():
			s.pollRefused(&refused)
			s.finish(nil)
			return
		case <-tick.C:
		}
		s.pollRefused(&refused)
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
		if !ping() {
			return
		}
	}
}

// pollRefused reports the opens yamux reset on its own since the last
// poll: beyond the session's cap, or with its accept backlog full.
func (s *Session) pollRefused(last *[2]uint64) {
	overLimit, backlogFull := refusedStreams(s.y)
	if d := overLimit - last[0]; d > 0 {
		s.refused(RefusedStreamLimit, "", fmt.Errorf("the session holds its limit of %d streams", s.maxStreams), int(d))
	}
	if d := backlogFull - last[1]; d > 0 {
		s.refused(RefusedBacklogFull, "", errors.New("the accept backlog was full"), int(d))
	}
	last[0], last[1] = overLimit, backlogFull
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

// Closed says whether the session has ended or is ending (at once, where
// Done may close a moment later).
func (s *Session) Closed() bool { return s.y.IsClosed() }

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

// ReceiveBuffered is how many bytes the peer has sent on the session's
// streams that the local side has not read yet (0 built on upstream yamux).
func (s *Session) ReceiveBuffered() int { return receiveBuffered(s.y) }

// LeastRTT is the least round-trip time of the session's pings so far (0
// before the first answer, or built on upstream yamux). It sizes the
// window that bulk streams share beside small messages.
func (s *Session) LeastRTT() time.Duration { return pathRTT(s.y) }

// StreamWindow is the most a stream of the session may have in flight
// toward us now, in bytes: the class's window, or less while bulk streams
// share it beside a stream exchanging messages or are sized to the path's
// rate and round trip (0 built on upstream yamux).
func (s *Session) StreamWindow() int { return streamWindow(s.y) }

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
	// The last streams' final frames (their FIN) are written, but the
	// caller closes the session next, and a close with unread bytes from
	// the peer resets the connection: the peer would see its streams cut
	// instead of ended. A ping's answer comes back behind those frames.
	pong := make(chan struct{})
	if s.spawn(func() { _, _ = s.y.Ping(); close(pong) }) {
		select {
		case <-pong:
		case <-ctx.Done():
		case <-s.closed:
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
	return s.open(ctx, service, source, nil)
}

// OpenResumable opens a stream as Open does, named token so that it can
// be moved to a later session with Resume. Only to a peer that announced
// CapResume (see PeerResumes).
func (s *Session) OpenResumable(ctx context.Context, service, source string, token Token) (*Stream, error) {
	if !s.PeerResumes() {
		return nil, errors.New("open resumable stream: the peer does not resume streams")
	}
	return s.open(ctx, service, source, &token)
}

// PeerResumes says whether both sides announced CapResume.
func (s *Session) PeerResumes() bool { return s.cfg.Resumable && s.PeerHello.Has(CapResume) }

func (s *Session) open(ctx context.Context, service, source string, token *Token) (*Stream, error) {
	hdr, err := encodeHeader(service, source, token)
	if err != nil {
		return nil, err
	}
	y, err := s.openWith(hdr)
	if err != nil {
		return nil, fmt.Errorf("open stream: %w", err)
	}
	_ = y.SetReadDeadline(time.Now().Add(s.cfg.OpenTimeout))
	st := &Stream{y: y, sess: s, service: service, awaitReply: true}
	if token != nil {
		st.token, st.resumable = *token, true
	}
	return s.track(st), nil
}

// openWith opens a yamux stream and writes hdr on it.
func (s *Session) openWith(hdr []byte) (*yamux.Stream, error) {
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
		return nil, s.explain(err)
	}
	_ = y.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	if _, err := y.Write(hdr); err != nil {
		_ = y.Close()
		return nil, fmt.Errorf("write header: %w", s.explain(err))
	}
	_ = y.SetWriteDeadline(time.Time{})
	return y, nil
}

// Resume moves the resumable stream named token, which we opened on an
// earlier session, to this one. delivered is how many bytes of it we have
// delivered to our application; the answer is how many the peer has. It
// waits for the peer's answer (at most OpenTimeout, and ctx).
func (s *Session) Resume(ctx context.Context, token Token, delivered uint64) (*Stream, uint64, error) {
	if !s.PeerResumes() {
		return nil, 0, errors.New("resume stream: the peer does not resume streams")
	}
	y, err := s.openWith(encodeResumeHeader(token, delivered))
	if err != nil {
		return nil, 0, fmt.Errorf("resume stream: %w", err)
	}
	_ = y.SetReadDeadline(time.Now().Add(s.cfg.OpenTimeout))
	stop := context.AfterFunc(ctx, func() { _ = y.SetReadDeadline(time.Unix(1, 0)) })
	code, msg, err := readReply(y)
	stop()
	_ = y.SetReadDeadline(time.Time{})
	switch {
	case err != nil:
		_ = resetStream(y)
		return nil, 0, fmt.Errorf("resume stream: waiting for the peer's answer: %w", s.explain(err))
	case code != CodeOK:
		_ = resetStream(y)
		return nil, 0, &ResumeRefusal{Code: code, Msg: cleanText(msg, 255)}
	case len(msg) != 8:
		_ = resetStream(y)
		return nil, 0, fmt.Errorf("resume stream: %w: the peer's answer holds %d bytes, not 8", ErrNotTunnel, len(msg))
	}
	st := &Stream{y: y, sess: s, token: token, resumable: true}
	st.answered.Store(true)
	return s.track(st), binary.BigEndian.Uint64([]byte(msg)), nil
}

// ResumeRefusal is a peer's refusal to move a resumable stream.
type ResumeRefusal struct {
	Code Code
	Msg  string
}

func (e *ResumeRefusal) Error() string {
	return fmt.Sprintf("peer refused to resume the stream: %s: %s", e.Code, e.Msg)
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

// setOnDelivered registers (f not nil) or removes the handler of the
// peer's delivery notices for stream id.
func (s *Session) setOnDelivered(id uint32, f func(uint64)) {
	s.live.Lock()
	if f == nil {
		delete(s.onDelivered, id)
	} else {
		s.onDelivered[id] = f
	}
	s.live.Unlock()
}

// sendDelivered tells the peer how much of stream id we have delivered.
func (s *Session) sendDelivered(id uint32, n uint64) error {
	var msg [16]byte
	binary.BigEndian.PutUint32(msg[:], deliveryNotice)
	binary.BigEndian.PutUint32(msg[4:], id)
	binary.BigEndian.PutUint64(msg[8:], n)
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	_, err := s.ctl.Write(msg[:])
	return err
}

// PeerDraining is closed once the peer has said it is draining: it accepts
// no new streams here, and the ones open are finishing.
func (s *Session) PeerDraining() <-chan struct{} { return s.peerDraining }

func (s *Session) markPeerDraining() {
	s.peerDrainingOnce.Do(func() { close(s.peerDraining) })
}

// PeerReplaced is closed once the peer has said that a newer session from
// the same certificate replaced this one (see NotifyReplaced). It is
// closed before PeerDraining when the peer sends both.
func (s *Session) PeerReplaced() <-chan struct{} { return s.peerReplaced }

func (s *Session) markPeerReplaced() {
	s.peerReplacedOnce.Do(func() { close(s.peerReplaced) })
}

// NotifyReplaced tells the peer that a newer session from its certificate
// has replaced this one (the server says it before draining the old): a
// client that did not open the new one (another host with the same key)
// then backs off instead of taking the place back at once. It may block
// up to OpenTimeout on a wedged connection: call it off any accept path.
func (s *Session) NotifyReplaced() { s.sendControl(replacedNotice) }

// Control messages, 4 bytes big endian each, on our control stream. An
// older peer read every value as the ID of a stream to abort; neither
// value is ever a yamux stream ID, so it ignores both.
const (
	// drainNotice: "I am draining". yamux never uses stream ID 0.
	drainNotice = 0
	// replacedNotice: "a newer session from your certificate replaced this
	// one". yamux refuses to open an ID above MaxUint32-2.
	replacedNotice = 0xFFFFFFFF
	// refusalNotice: "I am ending this session for the reason that
	// follows" (a refusal in its wire form).
	refusalNotice = 0xFFFFFFFE
	// deliveryNotice: "of stream ID (4 bytes) I have delivered N (8
	// bytes) to my application". Sent only to a peer with CapResume.
	deliveryNotice = 0xFFFFFFFD
)

// EndWithRefusal tells the peer why we are ending the session (its
// certificate expired, a reload revoked it), waits up to wait for the peer
// to close it (so the words arrive before our close), then closes it with
// reason. It blocks for at most a few seconds more than wait.
func (s *Session) EndWithRefusal(code RefusalCode, msg string, wait time.Duration, reason error) {
	if reason != nil {
		// The peer's close, which we wait for, ends the session for our
		// reason. Set before the notice goes out: the peer may close
		// before our write returns.
		s.reason.CompareAndSwap(nil, &reason)
	}
	var note [4]byte
	binary.BigEndian.PutUint32(note[:], refusalNotice)
	s.ctlMu.Lock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(min(s.cfg.OpenTimeout, 5*time.Second)))
	_, err := s.ctl.Write(append(note[:], encodeRefusal(code, msg)...))
	s.ctlMu.Unlock()
	if err == nil {
		t := time.NewTimer(wait)
		select {
		case <-s.closed:
		case <-t.C:
		}
		t.Stop()
	}
	s.CloseWithReason(reason)
}

// sendControl writes one control message.
func (s *Session) sendControl(m uint32) {
	var msg [4]byte
	binary.BigEndian.PutUint32(msg[:], m)
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	if _, err := s.ctl.Write(msg[:]); err != nil {
		s.log.Debug("cannot send control message", "message", m, "error", err)
	}
}

// readControl serves the peer's control stream until the session ends.
// Values it does not know are ignored (a newer peer's notices).
func (s *Session) readControl(ctl *yamux.Stream) {
	var msg [4]byte
	for {
		if _, err := io.ReadFull(ctl, msg[:]); err != nil {
			return
		}
		switch binary.BigEndian.Uint32(msg[:]) {
		case drainNotice:
			s.markPeerDraining()
		case replacedNotice:
			s.markPeerReplaced()
		case deliveryNotice:
			var body [12]byte
			if !s.cfg.Resumable {
				return // we never announced it: a peer that sends it is confused
			}
			if _, err := io.ReadFull(ctl, body[:]); err != nil {
				return
			}
			s.live.Lock()
			f := s.onDelivered[binary.BigEndian.Uint32(body[:])]
			s.live.Unlock()
			if f != nil {
				f(binary.BigEndian.Uint64(body[4:]))
			}
		case refusalNotice:
			// The refusal follows at once; a peer that stalls in the
			// middle of one has said enough.
			_ = ctl.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
			err := readRefusal(ctl)
			var refused *RefusedError
			if errors.As(err, &refused) {
				s.log.Debug("peer ends the session", "code", refused.Code, "reason", refused.Msg)
				s.finish(refused)
			} else {
				s.finish(fmt.Errorf("peer ends the session without a readable reason: %w", err))
			}
			return
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

// Kinds of refusal told to Config.OnRefuse: a fixed set, fit for a
// metric label.
const (
	RefusedBadHeader     = "bad_header"      // the stream's header did not parse
	RefusedHeaderTimeout = "header_timeout"  // no header within HeaderTimeout
	RefusedControl       = "second_control"  // a control stream beyond the first
	RefusedStreamLimit   = "stream_limit"    // the session held its cap of streams
	RefusedBacklogFull   = "backlog_full"    // yamux's accept backlog was full
	RefusedUnknown       = "unknown_service" // no such service (the peer hears "denied")
	RefusedDenied        = "denied"          // the service's allow list refused the peer
	RefusedDialFailed    = "dial_failed"     // the service's target could not be reached
	RefusedResume        = "resume"          // a resume of a stream we do not hold for this peer
)

// RefusedKinds lists every kind OnRefuse may be told.
var RefusedKinds = []string{RefusedBadHeader, RefusedHeaderTimeout, RefusedControl, RefusedStreamLimit,
	RefusedBacklogFull, RefusedUnknown, RefusedDenied, RefusedDialFailed, RefusedResume}

// refused reports n refusals of one kind to the owner. A flood of them is
// the owner's to rate-limit: mux itself logs them only at debug.
func (s *Session) refused(kind, service string, err error, n int) {
	s.log.Debug("stream refused", "kind", kind, "service", service, "count", n, "error", err)
	if s.cfg.OnRefuse != nil {
		s.cfg.OnRefuse(kind, service, err, n)
	}
}

// handle serves one stream the peer opened, from the moment yamux accepts
// it: every stream counts against the session's cap from then on, and
// waits at most HeaderTimeout for its header.
func (s *Session) handle(ctx context.Context, y *yamux.Stream, lookup Lookup, accepted Accepted) {
	// Our own opens can take the session past its cap, which yamux checks
	// only on the peer's opens; this also guards a yamux without the cap.
	if n := s.y.NumStreams(); n > s.maxStreams {
		s.refused(RefusedStreamLimit, "", fmt.Errorf("session holds %d streams, its limit is %d", n, s.maxStreams), 1)
		s.reset(y)
		return
	}
	h, err := s.readHeader(y)
	if err != nil {
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			s.refused(RefusedHeaderTimeout, "", fmt.Errorf("no stream header within %s", s.cfg.HeaderTimeout), 1)
			s.reset(y)
		case errors.Is(err, errMalformedHeader) || errors.Is(err, io.ErrUnexpectedEOF):
			s.refused(RefusedBadHeader, "", err, 1)
			s.refuse(y, CodeBadHeader, err.Error())
		default: // the peer closed or reset it, or the session ended
			s.log.Debug("stream ended before its header", "error", err)
			s.reset(y)
		}
		return
	}
	if h.control {
		if !s.peerCtl.CompareAndSwap(false, true) {
			s.refused(RefusedControl, "", errors.New("the peer opened a second control stream"), 1)
			s.reset(y)
			return
		}
		// Its delivery notices are small frames that can wait: they must
		// not make our bulk streams share their window as a message
		// waiting behind them would.
		setBackground(y)
		s.readControl(y)
		return
	}
	if h.resume {
		s.handleResume(y, h)
		return
	}
	if h.resumable && !s.PeerResumes() {
		s.refused(RefusedBadHeader, "", errors.New("a resumable stream from a peer that did not announce resume"), 1)
		s.refuse(y, CodeBadHeader, "resumable stream without resume announced in the hello")
		return
	}
	name := h.service
	// Unknown and denied get the same answer, so a peer cannot list the
	// names of services it may not open; only our report tells them apart.
	svc, known := lookup(name)
	if !known || svc.Allowed == nil || !svc.Allowed(s.Peer) {
		kind, why := RefusedDenied, errors.New("not allowed by the service's allow list")
		if !known {
			kind, why = RefusedUnknown, errors.New("no such service")
		}
		s.refused(kind, name, why, 1)
		s.refuse(y, CodeDenied, fmt.Sprintf("service %q is not available to you", name))
		return
	}
	target, err := svc.Dial(ctx, Request{Service: name, Source: h.source, Peer: s.Peer})
	if err != nil {
		s.refused(RefusedDialFailed, name, err, 1)
		s.refuse(y, CodeDialFailed, err.Error())
		return
	}
	if _, err := y.Write(encodeReply(CodeOK, "")); err != nil {
		s.log.Debug("stream lost before reply", "peer", s.Peer.Name(), "service", name, "error", err)
		s.reset(y)
		resetConn(target)
		return
	}
	st := &Stream{y: y, sess: s, service: name, token: h.token, resumable: h.resumable}
	st.answered.Store(true)
	accepted(ctx, name, s.track(st), target)
}

// handleResume serves the peer's move of a resumable stream here.
func (s *Session) handleResume(y *yamux.Stream, h header) {
	if !s.PeerResumes() || s.cfg.Resume == nil {
		s.refused(RefusedBadHeader, "", errors.New("a resume from a peer that did not announce resume"), 1)
		s.refuse(y, CodeBadHeader, "resume without resume announced in the hello")
		return
	}
	st := &Stream{y: y, sess: s, token: h.token, resumable: true}
	st.answered.Store(true)
	s.track(st)
	if err := s.cfg.Resume(st, h.token, h.delivered); err != nil {
		var no *ResumeRefusal
		if !errors.As(err, &no) {
			no = &ResumeRefusal{Code: CodeNoStream, Msg: err.Error()}
		}
		s.untrack(st)
		s.refused(RefusedResume, "", err, 1)
		s.refuse(y, no.Code, no.Msg)
	}
}

// resetConn closes a target whose stream was reset before it carried
// anything, so the target sees a failed connection (TCP RST), not a clean
// end of an empty one.
func resetConn(c net.Conn) {
	if l, ok := c.(interface{ SetLinger(int) error }); ok {
		_ = l.SetLinger(0)
	}
	_ = c.Close()
}

// readHeader reads a stream's header within HeaderTimeout, counted as
// awaiting its header meanwhile.
func (s *Session) readHeader(y *yamux.Stream) (header, error) {
	if f := s.cfg.OnHeaderWait; f != nil {
		f(1)
		defer f(-1)
	}
	_ = y.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
	h, err := readHeader(y)
	_ = y.SetReadDeadline(time.Time{})
	return h, err
}

// refuse answers a stream open with a refusal, then half-closes: the
// reply must reach the opener, which a reset would discard.
func (s *Session) refuse(y *yamux.Stream, code Code, msg string) {
	_ = y.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	_, _ = y.Write(encodeReply(code, msg))
	_ = y.Close()
}

// reset drops a stream the peer opened without a word to it; yamux frees
// it at once, whether or not the peer ever closes its side.
func (s *Session) reset(y *yamux.Stream) { _ = resetStream(y) }

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
