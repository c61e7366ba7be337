package agent

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/handover"
	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// handoverHost is an agent's side of a handover to a successor process
// (SIGUSR2): with a handover.Handover every listener is opened through it,
// so the successor inherits them; without one (tests, Windows) listeners
// are plain and HandOver refuses.
type handoverHost struct {
	h *handover.Handover
}

// listen opens a TCP listener, or takes the one the previous process
// passed on for addr. An inherited socket keeps the options it was made
// with: opts are set on it again, for a config that changed them.
func (hh *handoverHost) listen(ctx context.Context, addr string, opts ...sockopt.Options) (net.Listener, error) {
	if hh.h == nil {
		return forward.Listen(ctx, addr, opts...)
	}
	made := false
	ln, err := hh.h.Listen("tcp", addr, func(_, addr string) (net.Listener, error) {
		made = true
		return forward.Listen(ctx, addr, opts...)
	})
	if err != nil || made || len(opts) == 0 {
		return ln, err
	}
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err == nil {
		err = sockopt.Control(opts[0])("tcp", addr, raw)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s (inherited): %w", addr, err)
	}
	return ln, nil
}

// ready tells the previous process (and systemd) that every listener is
// open. A successor that cannot say so must stop, so that the previous
// process carries on; a first process goes on without.
func (hh *handoverHost) ready(log hclog.Logger) error {
	if hh.h == nil {
		return nil
	}
	err := hh.h.Ready()
	if err != nil && !hh.h.HasParent() {
		log.Error("cannot tell the service manager that the agent is ready", "error", err)
		return nil
	}
	return err
}

// handedOver is closed once a successor took over (never without a
// handover).
func (hh *handoverHost) handedOver() <-chan struct{} {
	if hh.h == nil {
		return nil
	}
	return hh.h.Exit()
}

// errNoHandover: the agent was started without a handover.Handover.
var errNoHandover = errors.New("this agent cannot hand over to a new process (not supported on this platform)")

// upgrade starts the successor and waits until it is ready.
func (hh *handoverHost) upgrade(ctx context.Context) error {
	if hh.h == nil {
		return errNoHandover
	}
	return hh.h.Upgrade(ctx)
}
