package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

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
	RefusedTokenHeld     = "token_held"      // a resumable open naming a stream held here already
)

// RefusedKinds lists every kind OnRefuse may be told.
var RefusedKinds = []string{RefusedBadHeader, RefusedHeaderTimeout, RefusedControl, RefusedStreamLimit,
	RefusedBacklogFull, RefusedUnknown, RefusedDenied, RefusedDialFailed, RefusedResume, RefusedTokenHeld}

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
	if s.tokenHeld(h) {
		s.refused(RefusedTokenHeld, name, errors.New("a resumable open names the token of a stream held here already"), 1)
		s.refuse(y, CodeBadHeader, "a stream with this token is open here already")
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

// tokenHeld says whether h opens a resumable stream under the token of
// one held here already: refused before the dial, or a peer replaying a
// token would have us dial the target for every open only to drop it.
func (s *Session) tokenHeld(h header) bool {
	return h.resumable && s.cfg.TokenHeld != nil && s.cfg.TokenHeld(h.token)
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
