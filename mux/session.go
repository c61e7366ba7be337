// Package mux carries many TCP streams over one authenticated connection:
// a versioned hello in each direction, then one yamux session in which every
// stream starts with a header naming the service it wants.
package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/yamux"

	"github.com/tunnelworks/tunnel/ratelog"
	"github.com/tunnelworks/tunnel/transport/sockopt"
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
	// PathMinRTT, if set, is the least round trip of the session's
	// connection lately, by a measure that rises when the path lengthens
	// (the kernel's: sockopt.MinRTT). It is read at every answered ping;
	// windows are sized by the longer of it and the least ping.
	PathMinRTT func() time.Duration
	// KernelQueues, if set, reads what the kernel holds for the
	// session's connection (sockopt.ReadQueues); false where it cannot.
	KernelQueues func() (sockopt.Queues, bool)
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
	// OnStrayFrames, if set, is told how many frames the peer sent for
	// streams the session no longer holds (yamux drops them), since it
	// was last told; polled with the refusals, on the session's watcher.
	// A few follow any reset (the peer's data already on its way); a
	// stream of them is a confused or hostile peer.
	OnStrayFrames func(n int)
	// OnHeaderWait, if set, is told +1 when an accepted stream starts
	// waiting for its header and -1 when the wait ends.
	OnHeaderWait func(delta int)
	// Window is the per-stream receive window; both ends must use the same
	// (a frame beyond it kills the session). Default 256 KiB, yamux's minimum.
	Window uint32
	// WindowFor, if set, picks the window from the session's traffic class
	// (ours on the client, the hello's on the server), so both ends agree.
	WindowFor func(class string) uint32
	// LoneWindowFor, if set, is how far the window of a session's only
	// bulk receiver may grow past Window on a fast path (by the class, as
	// WindowFor); 0 or less than Window: no further. Only the receiver
	// decides its credit, so the ends need not agree. The session holds
	// the excess beyond its streams' windows, so fewer streams fit in
	// MaxBuffer.
	LoneWindowFor func(class string) uint32
	Logger        hclog.Logger
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
	// TokenHeld, if set, says whether a resumable stream named token is
	// held here already: the peer's resumable open naming one is refused
	// (RefusedTokenHeld) before its service's target is dialled.
	TokenHeld func(token Token) bool
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
func yamuxConfig(log hclog.Logger, limited *ratelog.Log, window, lone uint32, maxStreams int) *yamux.Config {
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
	setLoneWindow(c, lone)
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
	// onPeerHeavy are the handlers of the peer's heavy notices for the
	// resumable streams we opened, by stream ID.
	onPeerHeavy map[uint32]func()

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
		ours.Capabilities = append(ours.Capabilities, CapResume, CapHeavy)
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
	cc := &countingConn{Conn: conn, start: time.Now()}
	cc.touch()
	var y *yamux.Session
	class := cfg.Class // the session's traffic class, as both ends know it
	if role == RoleServer {
		class = hello.Class
	}
	if cfg.WindowFor != nil {
		cfg.Window = max(cfg.WindowFor(class), cfg.Window)
	}
	var lone uint32
	if cfg.LoneWindowFor != nil {
		if w := cfg.LoneWindowFor(class); w > cfg.Window {
			lone = w
		}
	}
	maxStreams := streamCap(cfg.MaxStreams, cfg.MaxBuffer-int64(max(lone, cfg.Window)-cfg.Window), cfg.Window) // the lone extra is held beside the windows
	pair, _ := conn.(pairWriter)                                                                               // writes go to conn: cc counts only reads
	joined := newFrameJoiner(cc, pair)
	if role == RoleClient {
		y, err = yamux.Client(joined, yamuxConfig(cfg.Logger, cfg.YamuxLog, cfg.Window, lone, maxStreams))
	} else {
		y, err = yamux.Server(joined, yamuxConfig(cfg.Logger, cfg.YamuxLog, cfg.Window, lone, maxStreams))
	}
	if err != nil {
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	s := &Session{
		Peer: peer, PeerHello: hello, y: y, conn: cc, cfg: cfg, log: cfg.Logger,
		closed: make(chan struct{}), peerDraining: make(chan struct{}), peerReplaced: make(chan struct{}),
		streams: map[uint32]*Stream{}, since: time.Now(), maxStreams: maxStreams,
		onDelivered: map[uint32]func(uint64){}, onPeerHeavy: map[uint32]func(){},
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

// watch pings the peer every PingAfter, its first startPings pings every
// quarter of that (its round trip time is a useful metric and sizes the
// window bulk streams share), and declares it dead after DeadAfter
// without a single byte from it. Only silence kills: a ping reply late
// behind bulk data does not.
func (s *Session) watch() {
	tick := time.NewTicker(s.cfg.PingAfter / 4)
	defer tick.Stop()
	var (
		outstanding atomic.Int32
		lastPing    time.Time
		sent        int       // pings sent
		counted     [3]uint64 // yamux's counts already reported (pollCounts)
	)
	ping := func() bool {
		lastPing = time.Now()
		sent++
		outstanding.Add(1)
		return s.spawn(func() {
			defer outstanding.Add(-1)
			rtt, err := s.y.Ping()
			if err != nil {
				return
			}
			notePathRTT(s.y, rtt) // sizes the window bulk streams share
			if s.cfg.PathMinRTT != nil {
				// The least ping never rises; this does, if the path
				// lengthens under the connection.
				notePathFloor(s.y, s.cfg.PathMinRTT())
			}
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
			s.pollCounts(&counted)
			s.finish(nil)
			return
		case <-tick.C:
		}
		s.pollCounts(&counted)
		if quiet := s.conn.quietFor(); quiet >= s.cfg.DeadAfter {
			s.finish(fmt.Errorf("peer silent for %s (dead after %s)", quiet.Round(time.Second), s.cfg.DeadAfter))
			return
		}
		// A ping goes out every PingAfter whether or not the last one was
		// answered: while we receive a bulk upload our pings are the only
		// bytes the peer gets from us, and its replies may sit behind that
		// upload for longer than dead_after. Each Ping blocks until its
		// reply or ConnectionWriteTimeout, so a few may be in flight.
		if !pingDue(time.Since(lastPing), sent, s.cfg.PingAfter) || outstanding.Load() >= maxOutstandingPings {
			continue
		}
		if !ping() {
			return
		}
	}
}

// pollCounts reports what yamux counted on its own since the last poll:
// the opens it reset (beyond the session's cap, or with its accept
// backlog full) and the frames for streams it no longer holds.
func (s *Session) pollCounts(last *[3]uint64) {
	overLimit, backlogFull := refusedStreams(s.y)
	if d := overLimit - last[0]; d > 0 {
		s.refused(RefusedStreamLimit, "", fmt.Errorf("the session holds its limit of %d streams", s.maxStreams), int(d))
	}
	if d := backlogFull - last[1]; d > 0 {
		s.refused(RefusedBacklogFull, "", errors.New("the accept backlog was full"), int(d))
	}
	stray := strayFrames(s.y)
	if d := stray - last[2]; d > 0 && s.cfg.OnStrayFrames != nil {
		s.cfg.OnStrayFrames(int(d))
	}
	last[0], last[1], last[2] = overLimit, backlogFull, stray
}

// maxOutstandingPings bounds the pings awaiting a reply (each holds a
// goroutine for at most ConnectionWriteTimeout).
const maxOutstandingPings = 4

// startPings are a session's first pings, sent one per watch tick (a
// quarter of PingAfter) rather than one per PingAfter. The least round
// trip sizes the window bulk streams share beside messages; a session
// that comes up busy (a reconnect, its resumed streams moving onto it at
// once) measures a long first one, and the next quiet ping of any session
// to the peer corrects it (agent's path sharing): seconds later, not a
// PingAfter or two.
const startPings = 4

// pingDue says whether a ping is due at a watch tick (every PingAfter/4),
// since the last one and with sent pings sent so far. Ticks and pings do
// not line up exactly: a ping goes out a moment after its tick, so the
// next interval measured at a tick is a little short of its ticks; half a
// tick of slack keeps one ping per PingAfter, not one per 5 ticks.
func pingDue(since time.Duration, sent int, pingAfter time.Duration) bool {
	tick := pingAfter / 4
	interval := pingAfter
	if sent < startPings {
		interval = tick
	}
	return since >= interval-tick/2
}

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

// WriteQueued is how many bytes of frames the session's streams wrote
// wait in its write queue for the connection now, at most about 1 MiB
// (0 built on upstream yamux).
func (s *Session) WriteQueued() int { return writeQueued(s.y) }

// LeastRTT is the least round-trip time of the session's pings so far,
// and of those told to NotePathRTT (0 before the first answer, or built
// on upstream yamux). It sizes the window that bulk streams share beside
// small messages.
func (s *Session) LeastRTT() time.Duration { return pathRTT(s.y) }

// PathFloor is the connection's least round trip lately, as read from
// Config.PathMinRTT at the last answered ping (0 if not set, not known,
// or built on upstream yamux). Windows are sized by the longer of it and
// LeastRTT.
func (s *Session) PathFloor() time.Duration { return pathFloor(s.y) }

// KernelQueues is what the kernel holds for the session's connection:
// the peer's bytes we have not read yet, ours it has not acknowledged,
// and the buffers' sizes (false if Config.KernelQueues is not set or
// cannot tell).
func (s *Session) KernelQueues() (sockopt.Queues, bool) {
	if s.cfg.KernelQueues == nil {
		return sockopt.Queues{}, false
	}
	return s.cfg.KernelQueues()
}

// KernelHeld is what the kernel holds for the session's connection, in
// bytes: unread plus unacknowledged (0 where it cannot tell).
func (s *Session) KernelHeld() int {
	q, _ := s.KernelQueues()
	return q.Unread + q.SendQueue
}

// NotePathRTT tells the session a round trip of its path measured by
// another session to the same peer (the agent's path sharing: a bulk
// session's own pings wait behind its bulk data).
func (s *Session) NotePathRTT(d time.Duration) { notePathRTT(s.y, d) }

// StreamWindow is the most a stream of the session may have in flight
// toward us now, in bytes: the class's window, or less while bulk streams
// share it beside a stream exchanging messages or are sized to the path's
// rate and round trip (0 built on upstream yamux).
func (s *Session) StreamWindow() int { return streamWindow(s.y) }

// LoneWindowLent is how many bytes of window beyond the class's its only
// bulk receiver holds now (Config.LoneWindowFor; 0 built on upstream
// yamux): receive buffer a peer may fill on top of the streams' windows.
func (s *Session) LoneWindowLent() int64 { return loneWindowLent(s.y) }

// NumStreams is the number of tunnelled streams open on the session.
func (s *Session) NumStreams() int {
	s.live.Lock()
	defer s.live.Unlock()
	return len(s.streams)
}

// WireStreams is how many streams yamux holds on the session: those of
// NumStreams, any let go (Release) but not yet freed, and the two
// sessions' control streams (each side opens one).
func (s *Session) WireStreams() int { return s.y.NumStreams() }

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

// setOnPeerHeavy registers (f not nil) or removes the handler of the
// peer's heavy notices for stream id.
func (s *Session) setOnPeerHeavy(id uint32, f func()) {
	s.live.Lock()
	if f == nil {
		delete(s.onPeerHeavy, id)
	} else {
		s.onPeerHeavy[id] = f
	}
	s.live.Unlock()
}

// sendHeavy tells the peer, if it takes heavy notices, that stream id is
// a transfer toward it; false if it does not take them.
func (s *Session) sendHeavy(id uint32) (bool, error) {
	if !s.PeerResumes() || !s.PeerHello.Has(CapHeavy) {
		return false, nil
	}
	var msg [8]byte
	binary.BigEndian.PutUint32(msg[:], heavyNotice)
	binary.BigEndian.PutUint32(msg[4:], id)
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	_, err := s.ctl.Write(msg[:])
	return true, err
}

// deliveredMsg is the delivery notice for n bytes of stream id.
func deliveredMsg(id uint32, n uint64) (msg [16]byte) {
	binary.BigEndian.PutUint32(msg[:], deliveryNotice)
	binary.BigEndian.PutUint32(msg[4:], id)
	binary.BigEndian.PutUint64(msg[8:], n)
	return msg
}

// sendDelivered tells the peer how much of stream id we have delivered.
func (s *Session) sendDelivered(id uint32, n uint64) error {
	msg := deliveredMsg(id, n)
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	_, err := s.ctl.Write(msg[:])
	return err
}

// ErrDraining is returned by Open on a session that is being drained.
var ErrDraining = errors.New("session is draining")

// countingConn remembers when the peer last sent anything, by the
// monotonic clock: a step of the wall clock (NTP, a VM resumed) is not
// silence. With wall-clock nanoseconds, a 10 s step forward ended every
// quiet session of both agents at once on a test machine.
type countingConn struct {
	net.Conn
	start time.Time    // carries the monotonic reading the times below count from
	last  atomic.Int64 // when the peer last sent, in ns since start
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *countingConn) touch() { c.last.Store(int64(time.Since(c.start))) }

func (c *countingConn) quietFor() time.Duration {
	return time.Since(c.start) - time.Duration(c.last.Load())
}
