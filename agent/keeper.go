package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/sockopt"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Reconnect backoff: doubles from backoffMin to backoffMax with jitter, and
// starts over once a session has stayed up for stableAfter. The cap is low
// on purpose: a tunnel carrying BGP must be back within seconds of its
// server, and one attempt costs the server a single TLS handshake.
const (
	backoffMin  = 100 * time.Millisecond
	backoffMax  = 2 * time.Second
	stableAfter = 30 * time.Second
	// yamux stream IDs run out after about 2^31 opens on one session; the
	// client moves to a new session long before.
	rotateAfter = 1 << 30
	// laneRefusedBackoff caps the backoff of a lane above 0 that the
	// server refused (max_sessions_per_identity): the class is served by
	// its other lanes meanwhile.
	laneRefusedBackoff = 30 * time.Second
)

// keeper keeps one session of one traffic class up: connect, serve until
// it ends, reconnect with backoff, trying the servers in order. It also
// rotates the session on request.
//
// A class may have several keepers, its lanes (bulk_connections): lane 0
// is the class's session as ever (health, refusals that refuse local
// connections); a lane above 0 connects only while lane 0 is up, to lane
// 0's server and only if that server speaks lanes (one that does not
// would replace one lane with the next), and its failures refuse nothing.
type keeper struct {
	c       *Client
	class   string
	lane    int
	first   *keeper // lane 0 of the class; nil for lane 0 itself
	current sessionHolder
	rotateC chan struct{}
	addr    atomic.Pointer[string] // lane 0: the server its session is on
}

func newKeeper(c *Client, class string, lane int, first *keeper) *keeper {
	return &keeper{c: c, class: class, lane: lane, first: first, current: newSessionHolder(), rotateC: make(chan struct{}, 1)}
}

// key names the keeper's lane in the resume table and in log keys.
func (k *keeper) key() string { return laneKey(k.class, k.lane) }

// laneServer waits until lane 0 is up on a server that speaks lanes, and
// returns that server's address; "" when ctx ends first.
func (k *keeper) laneServer(ctx context.Context) string {
	for {
		sess, changed := k.first.current.watch()
		if addr := k.first.addr.Load(); sess != nil && !sess.Closed() && addr != nil {
			if sess.PeerHello.Has(mux.CapLanes) {
				return *addr
			}
			k.c.limited.Log(hclog.Info, "no-lanes:"+k.class, "the server does not speak lanes (an older version?): one session for the class", "class", k.class, "server", *addr, "bulk_connections", k.c.cfg().BulkConnections)
		}
		select {
		case <-ctx.Done():
			return ""
		case <-changed:
		}
	}
}

// rotate asks for a new session; the old one drains.
func (k *keeper) rotate() {
	select {
	case k.rotateC <- struct{}{}:
	default:
	}
}

func (k *keeper) run(ctx, streamCtx context.Context) {
	c := k.c
	var serving sync.WaitGroup // the Serve loops of this keeper's sessions
	defer serving.Wait()
	delay := backoffMin
	// Sessions in a row the server drained before they were stable: a
	// server that drains each one as soon as it is up (hostile, or broken)
	// must not have us reconnect at once in a loop.
	youngDrains := 0
	for attempt := 0; ctx.Err() == nil; attempt++ {
		servers := c.cfg().Servers
		addr := servers[attempt%len(servers)]
		if k.lane > 0 {
			if addr = k.laneServer(ctx); addr == "" {
				return
			}
		}
		sess, err := k.connect(ctx, addr)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := delay/2 + rand.N(delay/2+1)
			cause := failureReason(err)
			msg := "cannot reach server; retrying"
			var refusal *mux.RefusedError
			if errors.As(err, &refusal) {
				msg = "the server refused us; retrying"
			}
			c.metrics.HandshakeFailures.WithLabelValues(cause).Inc()
			if k.lane > 0 {
				// The class has its session: an extra one that fails
				// (max_sessions_per_identity, most likely) refuses
				// nothing, and says so once per interval whatever the cause.
				c.limited.Warn("lane:"+k.key(), "cannot open an extra session of the class (bulk_connections); its streams use the others meanwhile; retrying", "server", addr, "class", k.class, "lane", k.lane, "error", err, "retry_in", wait.Round(time.Millisecond))
			} else {
				// Keyed by cause too: a new cause (revoked after expired,
				// refused after unreachable) is logged at once.
				c.limited.Warn("connect:"+k.class+":"+cause, msg, "server", addr, "class", k.class, "error", err, "retry_in", wait.Round(time.Millisecond))
				// A refusal retrying cannot change refuses local
				// connections at once (any other outcome lets them wait again).
				k.current.refuse(definiteRefusal(err))
			}
			c.lastErr.set(err)
			limit := backoffMax
			if k.lane > 0 && refusal != nil {
				// The server refuses the extra session on purpose (its
				// session limits): ask again rarely, not every 2 s.
				limit = laneRefusedBackoff
			}
			delay = min(2*delay, limit)
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		up := time.Now()
		log := c.log.With("server", addr, "peer", sess.Peer.Name())
		log.Info("session up", append([]any{"class", k.class, "agent", sess.PeerHello.Agent}, laneFields(k.lane)...)...)
		// What the server says of its services first: a forward waiting
		// for this session then moves to its service's class at once.
		c.learn(sess.PeerHello.Services)
		if k.lane == 0 {
			k.addr.Store(&addr) // before set: the other lanes follow it there
		}
		k.current.set(sess)
		c.resume.SessionUp(sess, k.key()) // our suspended streams move here
		serving.Go(func() { watchPeer(c.tls, sess, x509.ExtKeyUsageServerAuth, log) })
		c.metrics.Sessions.WithLabelValues(k.class).Inc()
		c.metrics.SessionsUp.WithLabelValues(k.class).Inc()
		ended := make(chan error, 1)
		serving.Go(func() {
			ended <- sess.Serve(streamCtx, c.lookup, func(ctx context.Context, service string, stream *mux.Stream, target net.Conn) {
				c.lightArrived()
				serveAccepted(ctx, &serving, log, c.settings(), c.metrics, c.cfg().Services, k.class, k.lane, service, stream, target)
			})
		})
		reason := ""
		select {
		case err = <-ended:
		case <-k.rotateC:
			reason = "rotated"
			log.Info("rotating session", append([]any{"class", k.class, "streams_opened", sess.Opened()}, laneFields(k.lane)...)...)
		case <-sess.PeerReplaced():
			reason = "replaced"
		case <-sess.PeerDraining():
			// The server is stopping or restarting: its streams in flight
			// finish on the old session while new connections go to a new
			// one (a restarted server, or the next in the list) at once,
			// instead of being refused until the drain ends.
			reason = "server draining"
		}
		// The server says "replaced" before "draining", in order: a drain
		// that follows a replacement is that replacement.
		select {
		case <-sess.PeerReplaced():
			reason = "replaced"
		default:
		}
		switch reason {
		case "replaced":
			// Another session from our certificate took this one's place:
			// most likely another host with the same key. Taking it back at
			// once would replace that one in turn, in a loop; back off as
			// after any failure, and say so once per interval.
			c.limited.Warn("replaced:"+k.class, "session replaced by a newer one from the same certificate (another host with this key?); reconnecting after a backoff", append([]any{"class", k.class, "server", addr, "uptime", time.Since(up).Round(time.Second)}, laneFields(k.lane)...)...)
		case "server draining":
			fields := append([]any{"class", k.class, "streams", sess.NumStreams()}, laneFields(k.lane)...)
			youngDrains++
			if time.Since(up) >= stableAfter {
				youngDrains = 1 // a stable session's: a restart, reconnect at once
			}
			if youngDrains > 1 {
				// The second in a row: a backoff, and a line per interval.
				c.limited.LogTo(log, hclog.Info, "drained-again:"+k.key(), "server drained the new session too before it was stable; connecting another after a backoff", fields...)
			} else {
				log.Info("server is draining; connecting a new session", fields...)
			}
		default:
			youngDrains = 0
		}
		c.resume.SessionDown(sess, k.key())
		if reason != "" {
			// A new session first, then the old one drains in the
			// background: streams in flight finish, new ones go to the new.
			old := sess
			k.current.clear(old)
			c.metrics.Sessions.WithLabelValues(k.class).Dec()
			c.metrics.SessionsEnded.WithLabelValues(k.class, strings.ReplaceAll(reason, " ", "_")).Inc()
			serving.Go(func() {
				dctx, cancel := context.WithTimeout(streamCtx, c.cfg().DrainTimeout)
				defer cancel()
				_ = old.Drain(dctx)
				old.CloseWithReason(errors.New(reason))
				<-ended
			})
			attempt-- // the same server: a restart comes back on it
			if reason == "replaced" || youngDrains > 1 {
				if time.Since(up) >= stableAfter {
					delay = backoffMin
				}
				if !sleep(ctx, delay/2+rand.N(delay/2+1)) {
					return
				}
				delay = min(2*delay, backoffMax)
			}
			continue
		}
		k.current.clear(sess)
		sess.Close()
		c.metrics.Sessions.WithLabelValues(k.class).Dec()
		if ctx.Err() != nil {
			return
		}
		c.metrics.SessionsEnded.WithLabelValues(k.class, endReason(err)).Inc()
		if err != nil {
			c.lastErr.set(fmt.Errorf("session ended: %w", err))
		}
		log.Warn("session ended; reconnecting", append([]any{"class", k.class, "reason", reasonText(err), "uptime", time.Since(up).Round(time.Second)}, laneFields(k.lane)...)...)
		if k.lane == 0 {
			k.current.refuse(definiteRefusal(err)) // the server told us why
		}
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

func (k *keeper) connect(ctx context.Context, addr string) (*mux.Session, error) {
	cfg := k.c.cfg()
	ctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if err := sockopt.Apply(raw, tunnelSockopts(k.c.settings(), k.class, k.lane == 0 && k.c.lanes > 1 && slices.Contains(laneClasses, k.class))); err != nil {
		k.c.log.Warn("cannot set socket options on the tunnel connection", "error", err)
	}
	offer := k.c.state.Load().offer
	sess, err := establish(ctx, ssl.Client(raw, k.c.tls.ClientConfig(cfg.TLS.ServerName)), mux.RoleClient, k.class, k.lane, k.c.settings(), hello{services: offer}, k.c.log)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return sess, nil
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

// sessionHolder is a keeper's current session, with a way to wait for one.
type sessionHolder struct {
	mu      sync.Mutex
	s       *mux.Session
	refused error         // while no session: the server's definite refusal, if any
	changed chan struct{} // closed and replaced on every change
}

func newSessionHolder() sessionHolder { return sessionHolder{changed: make(chan struct{})} }

func (h *sessionHolder) get() *mux.Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s
}

// watch is the current session and a channel closed at its next change.
func (h *sessionHolder) watch() (*mux.Session, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s, h.changed
}

func (h *sessionHolder) set(s *mux.Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s, h.refused = s, nil
	close(h.changed)
	h.changed = make(chan struct{})
}

// refuse records the server's definite refusal (nil: none); those waiting
// for a session get it at once.
func (h *sessionHolder) refuse(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.refused = err
	if err != nil {
		close(h.changed)
		h.changed = make(chan struct{})
	}
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
		s, refused, changed := h.s, h.refused, h.changed
		h.mu.Unlock()
		if s != nil {
			return s, nil
		}
		if refused != nil {
			return nil, refused
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
