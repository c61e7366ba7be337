// Package agent wires configuration into the tunnel's parts: forward
// listeners, TLS, mux sessions, and the pipe. tunnel-server and
// tunnel-client are each one agent with Run(ctx) error.
package agent

import (
	"bytes"
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/ratelog"
	"github.com/tunnelworks/tunnel/resume"
	"github.com/tunnelworks/tunnel/transport/sockopt"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Traffic classes: each gets its own TLS connection and yamux session.
const (
	classControl = "control"
	classBulk    = "bulk"
)

// laneClasses are the classes whose client may hold several sessions
// (lanes) to one server: one TLS connection is one core of crypto on each
// side, and bulk streams are what a single core bounds.
var laneClasses = []string{classBulk}

// laneKey names one lane of a class for the resume table: the class for
// its first lane, "class/n" for the others, so that a suspended stream
// resumes on the next session of its own lane (the newest of a class is
// not one session once a class has several).
func laneKey(class string, lane int) string {
	if lane == 0 {
		return class
	}
	return fmt.Sprintf("%s/%d", class, lane)
}

// splitLaneKey is the class and lane of a laneKey.
func splitLaneKey(key string) (class string, lane int) {
	class, n, ok := strings.Cut(key, "/")
	if !ok {
		return key, 0
	}
	lane, err := strconv.Atoi(n)
	if err != nil {
		return key, 0
	}
	return class, lane
}

// laneFields are a log line's words for a session's lane: none for the
// first, so a client with one session per class logs as before.
func laneFields(lane int) []any {
	if lane == 0 {
		return nil
	}
	return []any{"lane", lane}
}

// Version is the agents' version, sent in the hello and printed by `version`.
var Version = "0.1.0-dev"

// services builds the accept-side lookup from configured services. allowAll
// is for the client, whose only peer is the verified server: a client
// service without an allow list accepts it.
func services(list []config.Service, dialTimeout time.Duration, allowAll bool) mux.Lookup {
	m := make(map[string]mux.Service, len(list))
	for _, svc := range list {
		rules := svc.AllowRules
		allowed := func(id ssl.Identity) bool { _, ok := rules.Match(id); return ok }
		if allowAll && len(svc.Allow) == 0 {
			allowed = func(ssl.Identity) bool { return true }
		}
		opts := forward.DialOptions{
			Timeout: dialTimeout,
			Source:  svc.Source,
			Sock:    sockopt.Options{TTL: svc.TTL, DSCP: svc.DSCP},
		}
		m[svc.Name] = mux.Service{
			Allowed: allowed,
			Dial: func(ctx context.Context, req mux.Request) (net.Conn, error) {
				conn, err := forward.Dial(ctx, svc.Target, opts)
				if err != nil || !svc.ProxyProtocol {
					return conn, err
				}
				if err := forward.WriteProxyHeader(conn, req.Source, req.Peer.Name()); err != nil {
					conn.Close()
					return nil, fmt.Errorf("send PROXY header to %s: %w", svc.Target, err)
				}
				return conn, nil
			},
		}
	}
	return func(name string) (mux.Service, bool) {
		s, ok := m[name]
		return s, ok
	}
}

// pipeAndLog copies between a local connection and a stream, counts it in
// the metrics and writes the one log line every stream gets when it ends
// (a failure's, once per interval per peer, forward and reason: see
// endLog). kind is "forward" (we opened the stream for a local
// connection) or "service" (the peer opened it to one of ours).
//
// A resumable stream's pipe is counted in pipes (its local connection
// comes wrapped: see localFor), so that a handover to a new process can
// freeze it and wait for the pipe to stop.
func pipeAndLog(ctx context.Context, el endLog, m *admin.Metrics, kind, name string, idle time.Duration, stream tunnelStream, local net.Conn, pipes *pipeSet) {
	log := el.log
	start := time.Now()
	meter := m.StreamStarted(kind, name)
	rs, resumable := stream.(*resume.Stream)
	if resumable && pipes != nil {
		defer pipes.add(rs)()
	}
	res := forward.Pipe(ctx, local, stream, meter, idle)
	fields := []any{kind, name}
	if kind == "forward" {
		fields = append(fields, "service", stream.Service())
	}
	fields = append(fields,
		"local", local.RemoteAddr().String(),
		"bytes_to_peer", res.AToB,
		"bytes_from_peer", res.BToA,
		"duration", time.Since(start).Round(time.Millisecond),
	)
	var (
		open   *mux.OpenError
		reason string
	)
	switch {
	case resumable && pipes != nil && (errors.Is(res.Err, resume.ErrHandedOver) || pipes.isFrozen()):
		// Frozen: the new process has it (or the freeze lost the race
		// with the stream's own end). Not a failure here.
		log.Info("stream handed over to the new process", fields...)
	case res.Err == nil:
		log.Info("stream closed", append(fields, "ended", "closed")...)
	case errors.As(res.Err, &open):
		reason = "refused: " + open.Code.String()
		el.failed(kind, name, reason, "stream refused by peer", append(fields, "ended", "refused", "reason", open.Code.String(), "error", open.Msg)...)
	case errors.Is(res.Err, context.Canceled):
		log.Info("stream closed", append(fields, "ended", "agent stopping")...)
	case errors.Is(res.Err, mux.ErrAborted):
		reason = "reset by peer"
		el.failed(kind, name, reason, "stream failed", append(fields, "ended", reason, "error", res.Err)...)
	case errors.Is(res.Err, mux.ErrSessionLost):
		reason = "session lost"
		el.failed(kind, name, reason, "stream cut: tunnel session lost", append(fields, "ended", reason, "error", res.Err)...)
	case errors.Is(res.Err, resume.ErrExpired):
		reason = "resume window passed"
		el.failed(kind, name, reason, "stream cut: tunnel not back within the resume window", append(fields, "ended", reason, "error", res.Err)...)
	case errors.Is(res.Err, resume.ErrPeerLost):
		reason = "peer lost the stream"
		el.failed(kind, name, reason, "stream cut: the peer no longer holds it", append(fields, "ended", reason, "error", res.Err)...)
	default:
		reason = forward.Classify(res.Err)
		el.failed(kind, name, reason, "stream failed", append(fields, "ended", reason, "error", res.Err)...)
	}
	m.StreamEnded(kind, name, reason, meter)
}

// endLog is where pipeAndLog logs a stream's end: log carries the
// peer's fields. A failure's line goes through limited, once per interval
// per peer, forward (or service) and reason, with a count of the rest: a
// session lost with a thousand streams, or a peer that resets them in a
// flood, is a line per interval, not one per stream. The count per
// reason is in tunnel_streams_failed_total.
type endLog struct {
	log     hclog.Logger
	limited *ratelog.Log
	peer    string // for the key: the peer's certificate key (or name)
}

func (el endLog) failed(kind, name, reason, msg string, fields ...any) {
	el.limited.LogTo(el.log, hclog.Warn, "stream-end:"+el.peer+":"+kind+":"+name+":"+reason, msg, fields...)
}

// tunnelStream is a stream as the pipe carries it: a *mux.Stream, or a
// *resume.Stream that outlives its session.
type tunnelStream interface {
	net.Conn
	Service() string
}

// replayCap bounds a resumable stream's replay buffer: four times the
// most its class lets a stream have in flight (the lone window where
// there is one), so that a stream is never slowed by it. At full speed
// the buffer holds a window in flight, what was delivered but not yet
// confirmed (the peer confirms every quarter of the cap, at most every
// MiB), and what is sent while a confirmation travels; at twice the
// window, a confirmation a millisecond late stalled a fast stream
// (bench/README.md, "seventh part"), and at the lone window alone
// ("seventeenth part"). The peer's replay budget bounds the sum.
func replayCap(class string) int {
	return 4 * int(max(classWindow(class), classLoneWindow(class)))
}

// openStream opens the stream of a forward's local connection: resumable
// when both agents speak it and the forward's resume window is not zero.
// lane is sess's lane of class.
func openStream(ctx context.Context, st sessionSettings, sess *mux.Session, f config.Forward, class string, lane int, local net.Conn) (tunnelStream, error) {
	source := local.RemoteAddr().String()
	window := f.ResumeWindowOr(st.ResumeWindow)
	// Frozen for a handover (or stopping): a plain stream, which this
	// process drains before it exits.
	if st.resume == nil || window <= 0 || !sess.PeerResumes() || !st.pipes.hold() {
		return sess.Open(ctx, f.Service, source)
	}
	o := resume.Options{Window: window, Class: laneKey(class, lane), MaxReplay: replayCap(class)}
	if lane == 0 && slices.Contains(laneClasses, class) {
		o.OnHeavy = st.onHeavy
	}
	rs, err := st.resume.Open(ctx, sess, f.Service, source, local.LocalAddr(), local.RemoteAddr(), o)
	if err != nil {
		st.pipes.release()
		if errors.Is(err, net.ErrClosed) {
			return sess.Open(ctx, f.Service, source)
		}
		return nil, err
	}
	st.pipes.opened(rs) // held until its pipe starts (pipeAndLog)
	return rs, nil
}

// localFor is the local connection as the pipe of stream should use it: a
// resumable stream's is wrapped, so that a handover leaves it untouched.
func localFor(stream tunnelStream, local net.Conn) net.Conn {
	if rs, ok := stream.(*resume.Stream); ok {
		return rs.Local(local)
	}
	return local
}

// acceptStream wraps a stream the peer opened to one of our services:
// resumable if the peer opened it so. A service whose window is zero
// still answers the peer's delivery notices (without them the peer's
// replay buffer would fill and stall the stream) but is reset by a cut.
func acceptStream(st sessionSettings, stream *mux.Stream, services []config.Service, class string, lane int) (tunnelStream, error) {
	if _, ok := stream.Token(); !ok || st.resume == nil || !st.pipes.hold() {
		return stream, nil // frozen for a handover: as in openStream
	}
	window := st.ResumeWindow
	for _, svc := range services {
		if svc.Name == stream.Service() {
			window = svc.ResumeWindowOr(window)
		}
	}
	rs, err := st.resume.Accept(stream, stream.LocalAddr(), stream.RemoteAddr(),
		resume.Options{Window: max(window, time.Nanosecond), Class: laneKey(class, lane), MaxReplay: replayCap(class)})
	if err != nil {
		st.pipes.release()
		if errors.Is(err, net.ErrClosed) {
			return stream, nil
		}
		return nil, err
	}
	st.pipes.opened(rs) // held until its pipe starts (pipeAndLog)
	return rs, nil
}

// serveAccepted pipes a stream the peer opened to its target. A
// resumable stream's pipe outlives the session that accepted it, so it
// runs on wg (the agent's), not on the session's accept handler, whose
// session waits for it before it ends.
func serveAccepted(ctx context.Context, wg *sync.WaitGroup, log hclog.Logger, st sessionSettings, m *admin.Metrics, services []config.Service, class string, lane int, service string, stream *mux.Stream, target net.Conn) {
	ts, err := acceptStream(st, stream, services, class, lane)
	if err != nil {
		refusedAccepted(st, stream, service, err)
		_ = stream.Abort()
		forward.Reset(target)
		return
	}
	if rs, ok := ts.(*resume.Stream); ok {
		wg.Go(func() {
			pipeAndLog(ctx, endLog{log, st.limited, stream.Session().Peer.Key()}, m, "service", service, serviceIdle(services, service), rs, rs.Local(target), st.pipes)
		})
		return
	}
	pipeAndLog(ctx, endLog{log, st.limited, stream.Session().Peer.Key()}, m, "service", service, serviceIdle(services, service), ts, target, st.pipes)
}

// resumeBound is how many resumable streams one peer certificate may
// hold: twice what its sessions may carry at once, so as many again may
// wait for a resume (or for the peer to confirm their end) beside a full
// set of live ones.
func resumeBound(streamsPerSession, sessions int) int { return 2 * streamsPerSession * sessions }

// refusedAccepted reports a stream answered and dialled that the table
// would not hold as resumable: an open under a held token that raced
// mux's check before the dial (Table.Holds), or one over its
// certificate's bound with every stream in use. Counted and logged as
// mux's refusals are, at most once per interval per peer.
func refusedAccepted(st sessionSettings, stream *mux.Stream, service string, err error) {
	sess := stream.Session()
	switch {
	case errors.Is(err, resume.ErrTokenHeld):
		refused(st, sess.Peer, sess.RemoteAddr(), mux.RefusedTokenHeld, service, err, 1)
		return
	case errors.Is(err, resume.ErrTooManyStreams):
		refused(st, sess.Peer, sess.RemoteAddr(), mux.RefusedStreamLimit, service, err, 1)
		return
	}
	st.limited.Warn("stream-refused:resumable:"+sess.Peer.Key(), "stream refused: cannot hold it as resumable",
		"peer", sess.Peer.Name(), "remote", sess.RemoteAddr(), "service", service, "error", err)
}

// resumeStats are the table's counts for /status and /metrics.
func resumeStats(t *resume.Table) admin.ResumeStats {
	s := t.Stats()
	return admin.ResumeStats{Streams: s.Streams, Suspended: s.Suspended, ReplayBytes: s.ReplayBytes, Resumed: s.Resumed, Moved: s.Moved,
		Evicted: s.Evicted, Expired: s.Expired, PeerLost: s.PeerLost, Refused: s.Refused, ReplayedBytes: s.ReplayedBytes}
}

// newResumeTable is an agent's table of resumable streams; its metrics
// are read at each scrape.
// instance is the predecessor's after a handover ("": a new one).
// maxPeerStreams bounds the streams held per peer certificate (see
// resumeBound), read at each check.
func newResumeTable(cfg config.Settings, log hclog.Logger, m *admin.Metrics, instance string, maxPeerStreams func() int) *resume.Table {
	t := resume.NewTable(resume.Config{Budget: cfg.MaxSessionBuffer, Logger: log.Named("resume"), Instance: instance, MaxPeerStreams: maxPeerStreams})
	m.WatchResume(func() admin.ResumeStats { return resumeStats(t) })
	return t
}

// sessionSettings are the mux settings that come from the config file.
type sessionSettings struct {
	HandshakeTimeout     time.Duration
	PingAfter, DeadAfter time.Duration
	MaxStreams           int
	MaxBuffer            int64
	HeaderTimeout        time.Duration
	DSCP                 int
	ResumeWindow         time.Duration
	metrics              *admin.Metrics
	limited              *ratelog.Log  // refusals: once per interval per kind and peer
	resume               *resume.Table // the agent's resumable streams
	pipes                *pipeSet      // their pipes, for a handover
	// onPathRTT is told every answered ping's round trip, with the peer's
	// certificate key and the session's remote address (see pathrtt.go).
	onPathRTT func(peerKey, remote string, rtt time.Duration)
	// onHeavy, when set, is told of a stream opened on lane 0 of a lane
	// class that turned heavy (see resume.Options.OnHeavy).
	onHeavy func(*resume.Stream)
}

// settingsOf are the session settings of either agent's config.
func settingsOf(cfg config.Settings, handshake time.Duration, m *admin.Metrics, limited *ratelog.Log, table *resume.Table, pipes *pipeSet) sessionSettings {
	return sessionSettings{HandshakeTimeout: handshake, PingAfter: cfg.PingAfter, DeadAfter: cfg.DeadAfter,
		MaxStreams: cfg.MaxStreamsPerSession, MaxBuffer: cfg.MaxSessionBuffer, HeaderTimeout: cfg.HeaderTimeout,
		DSCP: cfg.DSCP, ResumeWindow: cfg.ResumeWindow, metrics: m, limited: limited, resume: table, pipes: pipes}
}

// classes are the traffic classes a client may name in its hello.
var classes = []string{classControl, classBulk}

// classWindow is the per-stream window of a traffic class. Control keeps
// yamux's minimum: its messages are small and a big window only lets bulk
// data queue ahead of them. Bulk gets 1 MiB: one stream's throughput is
// bounded by window/RTT (BenchmarkMuxStream at both sizes: bench/README.md,
// "Stream windows"). Receive buffers grow only with data in flight.
func classWindow(class string) uint32 {
	if class == classControl {
		return 256 << 10
	}
	return 1 << 20
}

// classLoneWindow is how far the window of a session's only bulk
// receiver may grow on a fast path (yamux patch 22): with a window of 1
// MiB, one stream's sender stopped whenever a reader on a shared CPU fell
// a millisecond or two behind (bench/README.md, "seventeenth part").
// Control keeps its window: its sessions carry messages.
func classLoneWindow(class string) uint32 {
	if class == classControl {
		return 0
	}
	return 4 << 20
}

// laneZeroLowat is TCP_NOTSENT_LOWAT on lane 0 of a class with several
// lanes, at both ends. Lane 0 carries the messages and the start of every
// stream, a transfer until it turns heavy and moves: without a bound the
// kernel queues what the transfer's window allows (a megabyte) ahead of
// the messages, and on a slow path the bytes still queued there when the
// transfer moves cross the link twice (the worst wait of a ping beside an
// upload on a slow link: bench/README.md, "fifteenth part"). The other
// lanes, the transfers', keep the kernel's queue: a bound there cost one
// stream's throughput on loopback ("Head-of-line blocking inside a
// session").
const laneZeroLowat = 64 * 1024

// tunnelSockopts are the options of the tunnel's own TCP connection:
// keepalive and TCP_USER_TIMEOUT so a dead peer is noticed even while our
// writes sit unacknowledged, and for the control class a small
// TCP_NOTSENT_LOWAT so its messages never queue behind kilobytes of its own
// unsent data in the kernel; firstLane: the connection is lane 0 of a
// class with several (see laneZeroLowat).
func tunnelSockopts(st sessionSettings, class string, firstLane bool) sockopt.Options {
	// TCP_USER_TIMEOUT is the backstop behind our own liveness (dead_after
	// without a byte), not a second, stricter one: on a slow link with a
	// deep queue our data can legitimately wait unacknowledged for seconds,
	// and a zero-window peer counts too (an e2e run with dead_after = 3s
	// over a 2 Mbit/s relay lost its session to a 3 s user timeout).
	o := sockopt.Options{KeepAlive: 15 * time.Second, UserTimeout: max(2*st.DeadAfter, time.Minute), DSCP: st.DSCP}
	switch {
	case class == classControl:
		o.NotSentLowat = 16 * 1024
	case firstLane:
		o.NotSentLowat = laneZeroLowat
	}
	return o
}

// newLogger makes the agent's root logger from config.
func NewLogger(name, level, format string, out interface{ Write([]byte) (int, error) }) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.LevelFromString(level),
		JSONFormat: format == "json",
		Output:     out,
	})
}

// hello is what one side says in its hello beyond its role and class,
// and, on the server, how it decides on the client.
type hello struct {
	// services are the classes of the services the peer may open here.
	services func(peer ssl.Identity) map[string]string
	// deferred holds a refusal by policy that the TLS handshake let pass
	// so that the client is told why (ssl.Reloader.DeferringServerConfig).
	deferred *atomic.Pointer[ssl.PolicyError]
	// admit decides on a client whose hello passed (session limits).
	admit func(peer ssl.Identity, h mux.Hello) error
	// noLanes leaves lanes out of our hello, as an agent before them
	// (tests only).
	noLanes bool
}

// establish runs the TLS handshake and the hello on a raw connection,
// each bounded by the handshake timeout.
// class and lane are the client's (the server's come in the client's hello).
func establish(ctx context.Context, conn *ssl.Conn, role, class string, lane int, st sessionSettings, hi hello, log hclog.Logger) (*mux.Session, error) {
	if err := ssl.Handshake(ctx, conn.Conn, st.HandshakeTimeout); err != nil {
		return nil, err
	}
	id, err := ssl.PeerIdentity(conn.ConnectionState())
	if err != nil {
		return nil, err
	}
	remote := conn.RemoteAddr().String()
	cfg := mux.Config{
		Agent: Version, Class: class, Lane: lane, Classes: classes, HelloTimeout: st.HandshakeTimeout,
		PingAfter: st.PingAfter, DeadAfter: st.DeadAfter,
		MaxStreams: st.MaxStreams, MaxBuffer: st.MaxBuffer, HeaderTimeout: st.HeaderTimeout,
		OnPing: func(rtt time.Duration) {
			st.metrics.PingRTT.Observe(rtt.Seconds())
			if st.onPathRTT != nil {
				st.onPathRTT(id.Key(), remote, rtt)
			}
		},
		// The least ping never rises; the kernel's recent minimum does
		// when the path lengthens under the connection (a failover).
		PathMinRTT:    func() time.Duration { return sockopt.MinRTT(conn.Raw()) },
		KernelQueues:  func() (sockopt.Queues, bool) { return sockopt.ReadQueues(conn.Raw()) },
		OnRefuse:      func(kind, service string, err error, n int) { refused(st, id, remote, kind, service, err, n) },
		OnHeaderWait:  func(d int) { st.metrics.AwaitingHeader.Add(float64(d)) },
		OnStrayFrames: func(n int) { st.metrics.StrayFrames.Add(float64(n)) },
		WindowFor:     classWindow,
		LoneWindowFor: classLoneWindow,
		Logger:        log,
		YamuxLog:      st.limited,
	}
	if st.resume != nil {
		cfg.Resumable, cfg.Instance, cfg.Resume = true, st.resume.Instance(), st.resume.ServeResume
		cfg.TokenHeld = st.resume.Holds
	}
	if !hi.noLanes {
		cfg.LaneClasses = laneClasses
	}
	var policy *ssl.PolicyError
	if hi.deferred != nil {
		policy = hi.deferred.Load()
	}
	switch {
	case policy != nil:
		// Authenticated by the CA, refused by our rules: say why, offer
		// nothing (no service names), serve nothing.
		cfg.Refusal = &mux.RefusedError{Code: refusalCode(policy.Kind), Msg: policy.Public}
	default:
		if hi.services != nil {
			cfg.Services = hi.services(id)
		}
		if hi.admit != nil {
			cfg.Admit = func(h mux.Hello) error { return hi.admit(id, h) }
		}
	}
	sess, err := mux.Establish(ctx, conn, role, id, cfg)
	if err != nil {
		var refusal *mux.RefusedError
		switch {
		case policy != nil:
			// Our log has our words, file names included.
			return nil, &refusedClientError{msg: ssl.Describe(policy), sent: cfg.Refusal}
		case errors.As(err, &refusal), errors.Is(err, mux.ErrProbed):
			return nil, err
		}
		// In TLS 1.3 a client learns that the server refused its
		// certificate only here, on its first read: name the cause.
		return nil, errors.New(ssl.Describe(err))
	}
	return sess, nil
}

// Probe is `validate -online`'s question to a server on conn (TLS done):
// its hello, listing the services our certificate may open, or its
// refusal in its words. No session starts on either side.
func Probe(ctx context.Context, conn net.Conn, timeout time.Duration) (mux.Hello, error) {
	h, err := mux.Probe(ctx, conn, mux.Config{Agent: Version, Classes: classes, HelloTimeout: timeout})
	var refusal *mux.RefusedError
	if err != nil && !errors.As(err, &refusal) {
		// In TLS 1.3 the server's verdict on our certificate arrives
		// here, on the first read: name the cause.
		return h, errors.New(ssl.Describe(err))
	}
	return h, err
}

// refusedClientError is a client we refused by policy and told why: the
// error reads as our log's words; it unwraps to the refusal sent.
type refusedClientError struct {
	msg  string
	sent *mux.RefusedError
}

func (e *refusedClientError) Error() string { return e.msg }
func (e *refusedClientError) Unwrap() error { return e.sent }

// refusalCode is the wire code of a policy refusal's kind.
func refusalCode(kind string) mux.RefusalCode {
	switch kind {
	case ssl.KindNotAllowed:
		return mux.RefusalNotAllowed
	case ssl.KindRevoked:
		return mux.RefusalRevoked
	case ssl.KindCACert:
		return mux.RefusalCACert
	case ssl.KindCRLStale:
		return mux.RefusalCRLStale
	}
	return mux.RefusalOther
}

// definiteRefusal is a refusal that retrying cannot change until someone
// changes a certificate, a CRL or the server's config (see
// mux.RefusedError.Definite), or nil. An expired certificate reaches us
// as TLS's own alert.
func definiteRefusal(err error) error {
	var r *mux.RefusedError
	if errors.As(err, &r) && r.ByPeer && r.Definite() {
		return err
	}
	if err != nil && strings.Contains(err.Error(), "it says our certificate has expired") {
		return err
	}
	return nil
}

// refused counts streams the peer opened that mux refused, and logs them
// at most once a minute per kind and peer: a flood of refusals must not
// become a flood of log lines. kind is from mux's fixed set; service is the
// peer's text and only ever a field, never a key or a label.
func refused(st sessionSettings, peer ssl.Identity, remote, kind, service string, err error, n int) {
	st.metrics.StreamsRefused.WithLabelValues(kind).Add(float64(n))
	args := []any{"peer", peer.Name(), "remote", remote, "kind", kind}
	if service != "" {
		args = append(args, "service", service)
	}
	if n > 1 {
		args = append(args, "count", n)
	}
	args = append(args, "error", err)
	// Keyed by the certificate, not its readable name, which two peers
	// may share.
	st.limited.Warn("stream-refused:"+kind+":"+peer.Key(), "stream refused: "+strings.ReplaceAll(kind, "_", " "), args...)
}

// loadPolicy reads the TLS files and refuses our own certificate when every
// handshake would fail with it (expired, not yet valid, not issued for
// usage), as validate does: run does not start, and a reload keeps the
// running certificate instead of swapping in a broken one.
func loadPolicy(spec ssl.PolicySpec, usage x509.ExtKeyUsage) (*ssl.Policy, error) {
	p, err := ssl.LoadPolicy(spec)
	if err == nil {
		err = p.CheckUsable(time.Now(), usage)
	}
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	return p, nil
}

// watchPeer closes sess, saying why, when time alone makes its peer fail
// the current policy (certificate expired, stale CRL under crl_stale =
// "refuse"); see ssl.Reloader.WatchPeer. It returns when sess ends.
// The server tells its client why first, so the client's log says so.
func watchPeer(r *ssl.Reloader, sess *mux.Session, usage x509.ExtKeyUsage, log hclog.Logger) {
	r.WatchPeer(sess.Done(), sess.Peer, usage, func(err error) {
		log.Warn("closing session: its peer's certificate is no longer valid", "reason", err)
		if usage != x509.ExtKeyUsageClientAuth {
			sess.CloseWithReason(err)
			return
		}
		code, msg := expiryRefusal(err, sess.Peer)
		sess.EndWithRefusal(code, msg, tellWait, err)
	})
}

// tellWait bounds how long the server waits, after telling a client why it
// ends its session, for the client to close first.
const tellWait = 2 * time.Second

// expiryRefusal is what a client is told when time alone ended its
// session (see ssl.Reloader.WatchPeer): no file names, only its own
// certificate's facts.
func expiryRefusal(err error, peer ssl.Identity) (mux.RefusalCode, string) {
	var ee *ssl.ExpiredError
	switch {
	case errors.As(err, &ee) && strings.Contains(ee.What, "CRL"):
		return mux.RefusalCRLStale, "a CRL covering your certificate passed its next update and the server refuses until it has a fresh one (crl_stale = \"refuse\")"
	case errors.As(err, &ee) && strings.HasPrefix(ee.What, "CA certificate"):
		return mux.RefusalExpired, "a CA certificate above your certificate expired"
	case peer.Leaf != nil:
		return mux.RefusalExpired, fmt.Sprintf("your certificate %q expired (not after %s)", peer.Name(), peer.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return mux.RefusalExpired, "your certificate expired"
}

// endRefused ends sessions whose client a reload refused, telling each
// why (at most tellWait each, all at once).
func endRefused(ends map[*mux.Session]error) {
	var wg sync.WaitGroup
	for sess, err := range ends {
		code, msg := mux.RefusalOther, "a reload of the server's configuration refused your certificate"
		var pe *ssl.PolicyError
		if errors.As(err, &pe) && pe.Kind != "" {
			code, msg = refusalCode(pe.Kind), pe.Public
		}
		wg.Go(func() { sess.EndWithRefusal(code, msg, tellWait, fmt.Errorf("closed by reload: %w", err)) })
	}
	wg.Wait()
}

// describeChanges lists what a reload changed, for the `reloaded` log line
// (joined by changesSentence).
func describeChanges(oldP, newP *ssl.Policy, oldSvc, newSvc []config.Service, oldFwd, newFwd []config.Forward) []string {
	var out []string
	if !bytes.Equal(oldP.Material.Leaf.Raw, newP.Material.Leaf.Raw) {
		out = append(out, fmt.Sprintf("new certificate (serial %s, valid until %s)", ssl.FormatSerial(newP.Material.Leaf.SerialNumber), newP.Material.Leaf.NotAfter.UTC().Format(time.DateOnly)))
	}
	if !sameCerts(oldP.Material.CACerts, newP.Material.CACerts) {
		out = append(out, fmt.Sprintf("new CA bundle (%d certificates)", len(newP.Material.CACerts)))
	}
	if crlSummary(oldP) != crlSummary(newP) {
		out = append(out, "CRLs now "+cmp.Or(crlSummary(newP), "none"))
	}
	out = append(out, diffNamed("services", names(oldSvc, func(s config.Service) (string, any) { return s.Name, s }), names(newSvc, func(s config.Service) (string, any) { return s.Name, s }))...)
	out = append(out, diffNamed("forwards", names(oldFwd, func(f config.Forward) (string, any) { return f.Name, f }), names(newFwd, func(f config.Forward) (string, any) { return f.Name, f }))...)
	return out
}

// changesSentence joins what a reload changed into one phrase.
func changesSentence(parts []string) string {
	if len(parts) == 0 {
		return "nothing changed"
	}
	return strings.Join(parts, "; ")
}

// restartKeys names the keys whose new value the running agent does not
// apply (the logger, the file watcher and the expiry timer are made at
// start), as one part of the reload line ("" when none changed).
func restartKeys(old, cur config.Settings, oldLog, curLog [2]string, more ...string) string {
	var keys []string
	if oldLog[0] != curLog[0] {
		keys = append(keys, "log_level")
	}
	if oldLog[1] != curLog[1] {
		keys = append(keys, "log_format")
	}
	if old.ReloadInterval != cur.ReloadInterval {
		keys = append(keys, "reload_interval")
	}
	if old.ExpiryWarning != cur.ExpiryWarning {
		keys = append(keys, "expiry_warning")
	}
	keys = append(keys, more...)
	if len(keys) == 0 {
		return ""
	}
	return "needs a restart to apply: " + strings.Join(keys, ", ")
}

func sameCerts(a, b []*x509.Certificate) bool {
	return slices.EqualFunc(a, b, func(x, y *x509.Certificate) bool { return bytes.Equal(x.Raw, y.Raw) })
}

func crlSummary(p *ssl.Policy) string {
	var parts []string
	for _, c := range p.CRLs {
		parts = append(parts, fmt.Sprintf("%s #%v, %d revoked", filepath.Base(c.File), c.List.Number, len(c.List.RevokedCertificateEntries)))
	}
	return strings.Join(parts, ", ")
}

func names[T any](list []T, key func(T) (string, any)) map[string]any {
	m := make(map[string]any, len(list))
	for _, x := range list {
		k, v := key(x)
		m[k] = v
	}
	return m
}

// diffNamed says which blocks of a kind were added, changed or removed, as
// one part: "services: bgp added, echo changed".
func diffNamed(kind string, old, cur map[string]any) []string {
	var says []string
	for _, name := range slices.Sorted(maps.Keys(cur)) {
		o, ok := old[name]
		switch {
		case !ok:
			says = append(says, name+" added")
		case !reflect.DeepEqual(o, cur[name]):
			says = append(says, name+" changed")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(old)) {
		if _, ok := cur[name]; !ok {
			says = append(says, name+" removed")
		}
	}
	if len(says) == 0 {
		return nil
	}
	return []string{kind + ": " + strings.Join(says, ", ")}
}

// failureReason names a refused handshake for the metrics, from the
// operator wording of ssl.Describe.
func failureReason(err error) string {
	var refusal *mux.RefusedError
	if errors.As(err, &refusal) {
		return refusal.Code.String()
	}
	msg := err.Error()
	for _, r := range []struct{ has, reason string }{
		{"did not complete it within", "timeout"},
		{"no hello within", "timeout"},
		{"not speaking TLS", "not_tls"},
		{"not a tunnel server", "not_tls"},
		{"does not speak", "wrong_protocol"},
		{"unknown CA", "unknown_ca"},
		{"does not trust the CA", "unknown_ca"},
		{"expired", "expired"},
		{"sent no certificate", "no_certificate"},
		{"requires a client certificate", "no_certificate"},
		{"older than 1.2", "tls_version"},
		{"TLS version", "tls_version"},
		{"is a CA certificate", "ca_certificate"},
		{"revoked", "revoked"},
		{"not allowed", "not_allowed"},
		{"name mismatch", "name_mismatch"},
		{"protocol version", "protocol_version"},
		{"hello names", "bad_hello"},
		{"closed the connection", "peer_closed"},
	} {
		if strings.Contains(msg, r.has) {
			return r.reason
		}
	}
	return "other"
}

// endReason names why a session ended, for the metrics.
func endReason(err error) string {
	var (
		expired    *ssl.ExpiredError
		drainLimit *drainLimitError
	)
	switch {
	case err == nil:
		return "closed"
	case errors.As(err, &drainLimit):
		return "drain_limit"
	case errors.As(err, &expired) && strings.Contains(expired.What, "CRL"):
		return "crl_stale"
	case errors.As(err, &expired):
		return "cert_expired"
	case strings.Contains(err.Error(), "peer silent"):
		return "peer_dead"
	case strings.Contains(err.Error(), "replaced"):
		return "replaced"
	case strings.Contains(err.Error(), "reload"):
		return "reload"
	case strings.Contains(err.Error(), "rotated"):
		return "rotated"
	}
	return "connection_lost"
}

// sessionStatus is what /status shows of one session, on either agent.
func sessionStatus(sess *mux.Session, key, class string, lane int) admin.SessionStatus {
	st := admin.SessionStatus{Peer: sess.Peer.Name(), Key: key, Class: class, Lane: lane, Remote: sess.RemoteAddr(),
		Since: sess.Since(), Streams: sess.NumStreams(), ReceiveBuffered: sess.ReceiveBuffered(), WriteQueued: sess.WriteQueued(),
		LeastRTTMicros: sess.LeastRTT().Microseconds(), TCPMinRTTMicros: sess.PathFloor().Microseconds(), StreamWindow: sess.StreamWindow(),
		LoneWindowLent: sess.LoneWindowLent()}
	if q, ok := sess.KernelQueues(); ok {
		st.TCP = &admin.TCPQueues{ReceiveBuffer: q.ReceiveBuffer, Unread: q.Unread, SendBuffer: q.SendBuffer, SendQueue: q.SendQueue}
	}
	return st
}

func forwardStatus(m *admin.Metrics, kind, name, listen, target, class, classFrom string) admin.ForwardStatus {
	c := m.Counts(kind, name)
	return admin.ForwardStatus{Name: name, Listen: listen, Target: target, Class: class, ClassFrom: classFrom,
		StreamsOpen: c.Open.Load(), StreamsTotal: c.Total.Load(), BytesToPeer: c.ToPeer.Load(), BytesFrom: c.FromPeer.Load(), Refused: c.Refused.Load()}
}

// Where a forward's or a service's class came from, for status.
const (
	classFromExplicit = "explicit" // its own class key
	classFromService  = "service"  // the other side's service (its hello)
	classFromDefault  = "default"  // the port's default (config.DefaultClass)
)

// forwardClass is the class a forward's streams ride: its own class key
// if it has one, else the class the side that owns the service gave it
// in its hello (peerServices), else
// the default of its listen port.
func forwardClass(f config.Forward, peerServices map[string]string) (class, from string) {
	if f.ClassExplicit {
		return f.Class, classFromExplicit
	}
	if c, ok := peerServices[f.Service]; ok {
		return c, classFromService
	}
	return f.Class, classFromDefault
}

func serviceClassFrom(svc config.Service) string {
	if svc.ClassExplicit {
		return classFromExplicit
	}
	return classFromDefault
}

// offered lists, for a peer, the classes of the services it may open (see
// mux.Hello.Services): never the name of one it may not. allowAll is for
// the client, whose services without an allow list accept the server. At
// most the hello's limit, by name; the peer uses its own default for any
// beyond.
func offered(list []config.Service, allowAll bool) func(ssl.Identity) map[string]string {
	type entry struct {
		name, class string
		rules       ssl.Rules
		all         bool
	}
	var entries []entry
	for _, svc := range list {
		entries = append(entries, entry{svc.Name, svc.Class, svc.AllowRules, allowAll && len(svc.Allow) == 0})
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return func(id ssl.Identity) map[string]string {
		m := map[string]string{}
		for _, e := range entries {
			if len(m) == maxOffered {
				break
			}
			if _, ok := e.rules.Match(id); ok || e.all {
				m[e.name] = e.class
			}
		}
		return m
	}
}

// maxOffered is mux's bound on the services a hello lists.
const maxOffered = 128

func expiryStatus(p *ssl.Policy) []admin.ExpiryStatus {
	now := time.Now()
	var out []admin.ExpiryStatus
	for _, e := range p.Expiries() {
		out = append(out, admin.ExpiryStatus{What: e.What, Name: e.Name, When: e.When, DaysLeft: e.DaysLeft(now)})
	}
	return out
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// serviceIdle is the idle timeout of a service by name (0: none).
func serviceIdle(list []config.Service, name string) time.Duration {
	for _, svc := range list {
		if svc.Name == name {
			return svc.IdleTimeout
		}
	}
	return 0
}

// drainSessions sends GoAway on every session and waits up to limit for
// their streams to finish, all at once. Sessions without streams are
// drained too: the peer hears why the session ends, and the last frames
// of streams that just ended reach it before the session closes.
func drainSessions(log hclog.Logger, sessions []*mux.Session, limit time.Duration) {
	open := 0
	for _, s := range sessions {
		open += s.NumStreams()
	}
	if open > 0 {
		log.Info("stopping: draining streams", "streams", open, "drain_timeout", limit)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Go(func() {
			if err := s.Drain(ctx); err != nil {
				log.Warn("drain cut short", "peer", s.Peer.Name(), "error", err)
			}
		})
	}
	wg.Wait()
}

// lastError is the agent's last error, stamped with its time, for status.
type lastError struct{ msg atomic.Pointer[string] }

func (l *lastError) set(err error) {
	msg := time.Now().UTC().Format(time.RFC3339) + " " + err.Error()
	l.msg.Store(&msg)
}

func (l *lastError) get() string {
	if m := l.msg.Load(); m != nil {
		return *m
	}
	return ""
}

// note keeps err, if any (a reload's listeners that could not be
// opened), and returns it as is.
func (l *lastError) note(err error) error {
	if err != nil {
		l.set(err)
	}
	return err
}
