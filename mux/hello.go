package mux

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

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
	h.Capabilities = slices.DeleteFunc(h.Capabilities, func(c string) bool { return c != CapResume && c != CapLanes && c != CapHeavy })
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
