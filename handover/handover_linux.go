//go:build linux

package handover

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/hashicorp/go-hclog"
)

// tableflipParentEnv is how tableflip v1.2.3 marks a successor.
const tableflipParentEnv = "TABLEFLIP_HAS_PARENT_7DIU3"

// channelName is the one file tableflip passes: the successor's end of
// the socket pair that carries everything else.
const channelName = "tunnel-handover"

// replyWait bounds how long a successful upgrade waits for the
// successor's PID, which it sent before it said it was ready.
const replyWait = 5 * time.Second

// maxName bounds connection names and listener addresses (one message).
const maxName = 1024

// Handover is one process's side of handovers: what it inherited from the
// process it replaced, and what it passes on to its successor.
type Handover struct {
	log     hclog.Logger
	upg     *tableflip.Upgrader
	timeout time.Duration
	exit    chan struct{} // closed when a successor took over

	upgrading sync.Mutex // one Upgrade at a time
	readyOnce sync.Once
	readyErr  error
	restOnce  sync.Once // the second part, asked for by Conn or State
	restErr   error

	mu        sync.Mutex
	listeners []listener      // opened through Listen; passed on by Upgrade
	conns     []namedConn     // passed on by the next Upgrade
	state     []byte          // passed on by the next Upgrade
	early     []byte          // passed on first by every Upgrade; from the previous process in a successor
	inherited *inheritance    // from the previous process; nil once ready
	parent    *net.UnixConn   // the channel to the previous process, until Ready
	queued    map[string]bool // conn names queued by AddConn
}

type listener struct {
	network, addr string
	ln            net.Listener
}

type namedConn struct {
	name string
	c    syscall.Conn
}

// New sets up this process's side. In a successor it receives what the
// previous process passed (bounded by ReadyTimeout); it fails if that
// cannot be read, and the successor should then exit: the previous
// process carries on. Only one Handover per process.
func New(opts Options) (*Handover, error) {
	log := opts.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	timeout := cmp.Or(opts.ReadyTimeout, DefaultReadyTimeout)
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: timeout, PIDFile: opts.PIDFile})
	switch {
	case errors.Is(err, tableflip.ErrNotSupported):
		return nil, ErrNotSupported
	case err != nil && os.Getenv(tableflipParentEnv) == "":
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	case err != nil:
		return nil, fmt.Errorf("handover: %w", err)
	}
	h := &Handover{log: log, upg: upg, timeout: timeout, exit: make(chan struct{}), queued: map[string]bool{}}
	if !upg.HasParent() {
		return h, nil
	}
	f, err := upg.File(channelName)
	if err == nil && f == nil {
		err = errors.New("it passed no handover channel")
	}
	if err != nil {
		upg.Stop()
		return nil, fmt.Errorf("handover: from the previous process: %w", err)
	}
	in, parent, err := receive(f, timeout)
	if err != nil {
		upg.Stop()
		return nil, fmt.Errorf("handover: from the previous process: %w", err)
	}
	h.inherited, h.parent, h.early = in, parent, in.early
	log.Info("taking over from the previous process", "previous_pid", os.Getppid(), "listeners", in.numListeners())
	return h, nil
}

// rest asks the previous process for its connections and state, once:
// it freezes them only now that this process has its listeners.
func (h *Handover) rest() error {
	h.restOnce.Do(func() {
		h.mu.Lock()
		parent := h.parent
		h.mu.Unlock()
		if parent == nil {
			return // no parent, or ready already
		}
		if err := writeMessage(parent, message{Kind: kindRequest}, nil); err != nil {
			h.restErr = fmt.Errorf("handover: ask the previous process for its streams: %w", err)
			return
		}
		conns, size := 0, int64(0)
		err := receivePart(parent, h.timeout, func(m message, f *os.File) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.inherited == nil {
				return errors.New("ready already")
			}
			return h.inherited.add(m, f)
		})
		if err != nil {
			h.restErr = fmt.Errorf("handover: from the previous process: %w", err)
			return
		}
		h.mu.Lock()
		if h.inherited != nil {
			conns, size = len(h.inherited.conns), h.inherited.stateSize
		}
		h.mu.Unlock()
		h.log.Info("received the previous process's connections and state", "connections", conns, "state_bytes", size)
	})
	return h.restErr
}

// HasParent reports whether this process was started by Upgrade.
func (h *Handover) HasParent() bool { return h.upg.HasParent() }

// Listen returns the listener the previous process passed on for network
// and addr (the configured address, ":0" included; several listeners of
// one address come back in the order they were opened), or one made by
// listen. Either way Upgrade passes it on while it is open.
func (h *Handover) Listen(network, addr string, listen func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	if len(addr) > maxName {
		return nil, fmt.Errorf("handover: listen address of %d bytes", len(addr))
	}
	h.mu.Lock()
	f := h.inherited.takeListener(network, addr)
	h.mu.Unlock()
	var (
		ln  net.Listener
		err error
	)
	if f != nil {
		ln, err = net.FileListener(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("handover: inherited listener %s %s: %w", network, addr, err)
		}
		h.log.Debug("listener inherited", "network", network, "addr", addr, "bound", ln.Addr().String())
	} else if ln, err = listen(network, addr); err != nil {
		return nil, err
	}
	if _, ok := ln.(syscall.Conn); !ok {
		ln.Close()
		return nil, fmt.Errorf("handover: a %T has no file descriptor to pass on", ln)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.listeners = append(openListeners(h.listeners), listener{network, addr, ln})
	return ln, nil
}

// openListeners drops the closed ones.
func openListeners(list []listener) []listener {
	out := list[:0]
	for _, l := range list {
		if isOpen(l.ln.(syscall.Conn)) {
			out = append(out, l)
		}
	}
	clear(list[len(out):])
	return out
}

func isOpen(c syscall.Conn) bool {
	raw, err := c.SyscallConn()
	return err == nil && raw.Control(func(uintptr) {}) == nil
}

// AddConn queues c to be passed on by the next Upgrade under name. The
// caller must have stopped using it (no reads in flight, nothing buffered
// that the successor would miss). Upgrade empties the queue whatever its
// outcome: after a failed one, c is still the caller's and still open.
func (h *Handover) AddConn(name string, c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("handover: connection %q: a %T has no file descriptor to pass on", name, c)
	}
	if len(name) > maxName {
		return fmt.Errorf("handover: connection name of %d bytes", len(name))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.queued[name] {
		return fmt.Errorf("handover: connection %q queued twice", name)
	}
	h.queued[name] = true
	h.conns = append(h.conns, namedConn{name, sc})
	return nil
}

// SetState sets the blob the next Upgrade passes on (nil: none). The
// Handover keeps blob: do not change it afterwards.
func (h *Handover) SetState(blob []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.state = blob
}

// SetEarlyState sets a small blob (1 KiB at most) that every Upgrade
// passes on first, with the listeners, before anything is frozen: what a
// successor needs before it starts (an instance name, say). In a
// successor it starts as the previous process's.
func (h *Handover) SetEarlyState(blob []byte) error {
	if len(blob) > maxName {
		return fmt.Errorf("handover: early state of %d bytes, over %d", len(blob), maxName)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.early = blob
	return nil
}

// EarlyState is the early state the previous process passed on (nil if
// none or no previous process), available from New.
func (h *Handover) EarlyState() []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.early
}

// Conn is the connection the previous process passed on under name, or
// an error wrapping ErrNotInherited. The first Conn or State asks the
// previous process for them (its export runs then): call it once the
// listeners are open, and before Ready, which closes whatever was not
// taken.
func (h *Handover) Conn(name string) (net.Conn, error) {
	if err := h.rest(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	f, err := h.inherited.takeConn(name, h.upg.HasParent())
	h.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("handover: connection %q: %w", name, err)
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("handover: connection %q: %w", name, err)
	}
	return c, nil
}

// State is the blob the previous process passed on (nil when it passed
// none, or there was none). See Conn for when to call it.
func (h *Handover) State() ([]byte, error) {
	if err := h.rest(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	f, err := h.inherited.takeState(h.upg.HasParent())
	h.mu.Unlock()
	if err != nil || f == nil {
		return nil, err
	}
	defer f.Close()
	b, err := readState(f)
	if err != nil {
		return nil, fmt.Errorf("handover: state: %w", err)
	}
	return b, nil
}

// Ready says this process serves: inherited files not taken are closed;
// under systemd (NOTIFY_SOCKET) the service manager is told READY=1, and a
// successor first makes itself the service's main process (MAINPID);
// then the previous process is told, and its Upgrade returns. On an error
// a successor must exit (the previous process carries on); a first
// process may go on without systemd's READY.
func (h *Handover) Ready() error {
	h.readyOnce.Do(func() { h.readyErr = h.ready() })
	return h.readyErr
}

func (h *Handover) ready() error {
	h.mu.Lock()
	in, parent := h.inherited, h.parent
	h.inherited, h.parent = nil, nil
	h.mu.Unlock()
	if in != nil {
		if ls, cs, st := in.close(); ls+cs+st > 0 {
			h.log.Info("closed what the previous process passed on and this one does not use", "listeners", ls, "connections", cs, "state", st)
		}
	}
	if parent != nil {
		defer parent.Close()
	}
	pid := os.Getpid()
	msg := "READY=1"
	if h.upg.HasParent() {
		// Before the previous process learns we are ready and exits:
		// systemd must not see its main process leave.
		msg = fmt.Sprintf("MAINPID=%d\nREADY=1", pid)
	}
	if err := notify(msg); err != nil {
		return fmt.Errorf("handover: tell systemd: %w", err)
	}
	if parent != nil {
		if err := writeMessage(parent, message{Kind: kindReady, PID: pid}, nil); err != nil {
			return fmt.Errorf("handover: tell the previous process: %w", err)
		}
	}
	if err := h.upg.Ready(); err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	return nil
}

// Exit is closed once a successor has taken over: this process should
// stop accepting, finish what it kept, and exit.
func (h *Handover) Exit() <-chan struct{} { return h.exit }

// Stop ends upgrades for this process and kills a successor not yet
// ready; for a process that is stopping.
func (h *Handover) Stop() { h.upg.Stop() }

// Upgrade starts the binary on disk (this process's os.Args) as a
// successor, passes it the open listeners, and waits until it is ready
// (Options.ReadyTimeout at most). The connections and the state go in a
// second part, when the successor asks for them (Conn or State) once it
// has its listeners: only then does export run (nil: none), to freeze
// what they belong to and queue them (AddConn, SetState); anything
// queued before goes too. So nothing is frozen for a successor that fails
// to start. On success Exit is closed and the successor serves the
// listeners: this process should stop accepting at once. On error no
// listener was passed on and this process may try again; if export ran,
// the error says so and the caller takes back what it froze (the
// connections are still its own and open). Cancelling ctx kills a
// successor not yet ready and ends upgrades for this process: cancel it
// only when stopping.
func (h *Handover) Upgrade(ctx context.Context, export func() error) error {
	if !h.upgrading.TryLock() {
		return errors.New("an upgrade is already in progress")
	}
	defer h.upgrading.Unlock()
	select {
	case <-h.exit:
		return errors.New("already handed over to a successor")
	default:
	}
	h.mu.Lock()
	if h.inherited != nil {
		h.mu.Unlock()
		return errors.New("this process is not ready yet")
	}
	h.listeners = openListeners(h.listeners)
	var listeners []item
	for _, l := range h.listeners {
		listeners = append(listeners, item{message{Kind: kindListener, Network: l.network, Addr: l.addr}, l.ln.(syscall.Conn)})
	}
	early := h.early
	h.mu.Unlock()
	defer h.dropQueued() // sent, or not to be sent

	ours, theirs, err := h.channel()
	if err != nil {
		return err
	}
	defer ours.Close()
	defer theirs.Close()

	var (
		sent sendResult
		wg   sync.WaitGroup
	)
	wg.Go(func() { sent = h.send(ours, listeners, early, export) })
	res := make(chan error, 1)
	wg.Go(func() { res <- h.upg.Upgrade() })
	select {
	case err = <-res:
	case <-ctx.Done():
		h.upg.Stop()
		if err = <-res; err != nil {
			err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
	}
	if err != nil {
		ours.Close() // ends send
		wg.Wait()
		// What the successor did not take waits in its end of the pair;
		// take it back and close it, or it would stay open.
		takeBack(theirs)
		err = h.explain(err)
		if sent.exported {
			err = fmt.Errorf("%w; %w", err, ErrExported)
		}
		return err
	}
	_ = ours.SetReadDeadline(time.Now().Add(replyWait))
	wg.Wait()
	close(h.exit)
	h.log.Info("successor ready: it serves the listeners now", "pid", sent.pid,
		"listeners", sent.listeners, "connections", sent.conns, "state_bytes", sent.stateBytes)
	return nil
}

// takeQueued returns what AddConn and SetState queued, as items to send
// (the state in a file for the caller to close).
func (h *Handover) takeQueued() ([]item, *os.File, error) {
	h.mu.Lock()
	conns, blob := h.conns, h.state
	h.conns, h.state, h.queued = nil, nil, map[string]bool{}
	h.mu.Unlock()
	var items []item
	for _, c := range conns {
		items = append(items, item{message{Kind: kindConn, Name: c.name}, c.c})
	}
	if blob == nil {
		return items, nil, nil
	}
	f, err := stateFile(blob)
	if err != nil {
		return nil, nil, fmt.Errorf("state for the successor: %w", err)
	}
	return append(items, item{message{Kind: kindState, Size: len(blob)}, f}), f, nil
}

func (h *Handover) dropQueued() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns, h.state, h.queued = nil, nil, map[string]bool{}
}

// explain says in an operator's words why an upgrade failed.
func (h *Handover) explain(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "parent hasn't exited"):
		return errors.New("the previous process has not exited yet (it is still finishing its streams); try again once it has")
	case strings.Contains(msg, "not ready yet"):
		return errors.New("this process is not ready yet")
	case strings.Contains(msg, "timed out"):
		return fmt.Errorf("the new process did not say it was ready within %s and was killed (%w)", h.timeout, err)
	case strings.Contains(msg, "exited"):
		return fmt.Errorf("the new process exited before it was ready; its own log lines say why (%w)", err)
	}
	return fmt.Errorf("start the new process: %w", err)
}

// channel makes the socket pair of one upgrade and hands the successor's
// end to tableflip; theirs is a second descriptor of that end.
func (h *Handover) channel() (ours, theirs *net.UnixConn, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socket pair for the successor: %w", err)
	}
	f0 := os.NewFile(uintptr(fds[0]), "handover")
	ours, err = unixConn(f0)
	f0.Close()
	if err != nil {
		syscall.Close(fds[1])
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fds[1]), channelName)
	defer f.Close()
	if theirs, err = unixConn(f); err == nil {
		// tableflip keeps a duplicate until the next upgrade; after a
		// failed one takeBack has emptied it.
		if err = h.upg.AddFile(channelName, f); err != nil {
			theirs.Close()
		}
	}
	if err != nil {
		ours.Close()
		return nil, nil, fmt.Errorf("socket pair for the successor: %w", err)
	}
	return ours, theirs, nil
}
