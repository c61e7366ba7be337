// Package handover passes a running agent's sockets and a state blob to its
// successor: the binary on disk, started by the running process, which
// inherits its listeners (so no connection is refused while the program
// changes) and any connections it is given, then says it is ready; the old
// process then stops accepting and exits.
//
// github.com/cloudflare/tableflip starts the successor, tells the old
// process when it is ready and the new one when the old has exited. The
// sockets and the state travel over a socket pair made for each upgrade
// (SCM_RIGHTS), not through tableflip's own file table, which keeps a
// duplicate of every file it is given until an upgrade succeeds: a
// listener a reload closed would stay bound (its port accepting into a
// backlog nobody serves, or refusing the reload's new listener with
// "address already in use"), and a connection that ended would stay open to
// its peer. Here nothing is duplicated before an upgrade starts, and what a
// failed upgrade sent is taken back and closed.
//
// Linux only (memfd, SOCK_SEQPACKET); elsewhere New returns ErrNotSupported.
package handover

import (
	"errors"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Options shape a Handover.
type Options struct {
	// PIDFile, if set, is written with the process's PID when it is ready.
	PIDFile string
	// ReadyTimeout bounds how long a successor may take to say it is
	// ready; after it the successor is killed and the upgrade fails.
	// Default DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Logger gets a line per upgrade and what a successor inherited.
	Logger hclog.Logger
}

// DefaultReadyTimeout is Options.ReadyTimeout's default.
const DefaultReadyTimeout = time.Minute

var (
	// ErrNotSupported: this platform cannot hand over (not Linux).
	ErrNotSupported = errors.New("handover: not supported on this platform")
	// ErrUnavailable: a first process cannot set up handovers (no
	// working directory, say); it may run without.
	ErrUnavailable = errors.New("handover: unavailable")
	// ErrNotInherited: the parent passed nothing under that name.
	ErrNotInherited = errors.New("not passed on by the previous process")
	// ErrExported: a failed Upgrade had run its export; the caller takes
	// back what it froze.
	ErrExported = errors.New("the streams had been frozen for the new process")
)
