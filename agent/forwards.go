package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/ratelog"
	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// forwardSet runs the local listeners of an agent's forwards and changes
// them on reload: a forward whose block is unchanged keeps its listener;
// a removed one stops accepting (its streams in flight go on); a changed
// one moves to its new listener once that is open, and keeps its old one
// (and old settings) when it cannot be; a new one starts listening.
type forwardSet struct {
	log     hclog.Logger
	metrics *admin.Metrics // nil in tests
	limited *ratelog.Log
	handle  func(ctx context.Context, f config.Forward, local net.Conn)
	listen  listenFunc
	// conns is where each accepted connection's goroutine is counted: the
	// agent's, so streams outlive a forward that a reload removed.
	conns *sync.WaitGroup

	mu        sync.Mutex
	running   map[string]*runningForward
	stale     map[string]string // forwards not run as the file says: why
	acceptCtx context.Context   // stops accept loops (the agent stopping)
	streamCtx context.Context   // given to handle (outlives acceptCtx by the drain)
}

type runningForward struct {
	cfg    config.Forward
	addr   net.Addr
	cancel context.CancelFunc
	done   chan struct{}
}

// listenFunc opens a listener (forward.Listen, or through a handover).
type listenFunc func(ctx context.Context, addr string, opts ...sockopt.Options) (net.Listener, error)

func newForwardSet(log hclog.Logger, metrics *admin.Metrics, conns *sync.WaitGroup, listen listenFunc, handle func(context.Context, config.Forward, net.Conn)) *forwardSet {
	return &forwardSet{log: log, metrics: metrics, limited: ratelog.New(log, time.Minute), handle: handle, listen: listen, conns: conns,
		running: map[string]*runningForward{}, stale: map[string]string{}}
}

// start runs the first set of forwards. acceptCtx stops the accept loops;
// streamCtx is passed to handle.
func (fs *forwardSet) start(acceptCtx, streamCtx context.Context, want []config.Forward, at origin) error {
	fs.mu.Lock()
	fs.acceptCtx, fs.streamCtx = acceptCtx, streamCtx
	fs.mu.Unlock()
	return fs.apply(want, at)
}

// origin is where the forwards were configured, for errors.
type origin struct {
	file  string
	lines map[string]int // line of each forward's listen key, by name
}

// of says where forward name's listen key is: "file:line", or the file.
func (o origin) of(name string) string {
	if l := o.lines[name]; l > 0 {
		return fmt.Sprintf("%s:%d", o.file, l)
	}
	return o.file
}

// apply makes the running forwards match want, configured at (named in
// errors). Removed forwards stop first, so a forward renamed can take
// over the same address. A changed or new forward's listener is opened
// before its old one closes: a forward whose new address cannot be opened
// keeps running as before (old address, old settings) and is reported,
// here and by problem. It returns every forward that could not start or
// move; the others run regardless.
func (fs *forwardSet) apply(want []config.Forward, at origin) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.acceptCtx.Err() != nil {
		want = nil // stopping: start nothing new
	}
	wanted := map[string]bool{}
	for _, f := range want {
		wanted[f.Name] = true
	}
	for name, r := range fs.running {
		if !wanted[name] {
			fs.stopOne(name, r)
		}
	}
	var todo []config.Forward
	for _, f := range want {
		if r, ok := fs.running[f.Name]; ok && reflect.DeepEqual(r.cfg, f) {
			continue
		}
		todo = append(todo, f)
	}
	failed := fs.openAll(todo)
	fs.moveInPlace(todo, failed)
	clear(fs.stale)
	var errs []error
	for _, f := range todo {
		err, ok := failed[f.Name]
		if !ok {
			continue
		}
		err = fmt.Errorf("%s: forward %q: %w", at.of(f.Name), f.Name, err)
		if r, ok := fs.running[f.Name]; ok {
			err = fmt.Errorf("%w (still on %s)", err, r.addr)
		}
		fs.stale[f.Name] = err.Error()
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// openAll opens the new listener of each forward in todo and moves the
// forward onto it, in passes: a forward that moves frees its old address
// for one that wants it. It returns why each of the rest failed; they
// run as before, if they ran.
func (fs *forwardSet) openAll(todo []config.Forward) map[string]error {
	failed := map[string]error{}
	for len(todo) > 0 {
		var rest []config.Forward
		for _, f := range todo {
			ln, err := fs.listen(fs.acceptCtx, f.Listen, socketOptions(f))
			if err != nil {
				failed[f.Name] = err
				rest = append(rest, f)
				continue
			}
			delete(failed, f.Name)
			fs.serve(f, ln)
		}
		if len(rest) == len(todo) {
			break // none moved, so no address was freed
		}
		todo = rest
	}
	return failed
}

// moveInPlace retries the failed forwards whose new address the old
// listener of a failed forward holds (an unchanged address with other
// settings, the same port on another host, two forwards that swap
// addresses) by closing those old listeners first. A forward whose new
// listener still cannot be opened gets its old one back. failed is
// updated.
func (fs *forwardSet) moveInPlace(todo []config.Forward, failed map[string]error) {
	var held []config.Forward
	for _, f := range todo {
		if _, ok := failed[f.Name]; ok && fs.heldByFailed(f.Listen, failed) {
			held = append(held, f)
		}
	}
	old := map[string]*runningForward{}
	for _, f := range held {
		if r, ok := fs.running[f.Name]; ok {
			old[f.Name] = r
			fs.stopOne(f.Name, r)
		}
	}
	for _, f := range held {
		ln, err := fs.listen(fs.acceptCtx, f.Listen, socketOptions(f))
		if err == nil {
			delete(failed, f.Name)
			fs.serve(f, ln)
			continue
		}
		failed[f.Name] = err
		r, ok := old[f.Name]
		if !ok {
			continue
		}
		back, berr := fs.listen(fs.acceptCtx, r.addr.String(), socketOptions(r.cfg))
		if berr != nil {
			failed[f.Name] = fmt.Errorf("%w (and its old address %s could not be reopened: %v)", err, r.addr, berr)
			continue
		}
		fs.serve(r.cfg, back)
	}
}

// heldByFailed reports whether addr is on the port of the old listener of
// a forward in failed.
func (fs *forwardSet) heldByFailed(addr string, failed map[string]error) bool {
	for name := range failed {
		if r, ok := fs.running[name]; ok && samePort(addr, r.addr) {
			return true
		}
	}
	return false
}

// socketOptions are a forward's options for its listening socket. The
// minimum TTL and DSCP sit there, so they hold for every accepted
// connection from its first packet.
func socketOptions(f config.Forward) sockopt.Options {
	return sockopt.Options{MinTTL: f.MinTTL, DSCP: f.DSCP}
}

// stopOne stops a running forward's listener and waits for its accept
// loop; connections it accepted go on. fs.mu is held.
func (fs *forwardSet) stopOne(name string, r *runningForward) {
	r.cancel()
	<-r.done
	delete(fs.running, name)
	fs.log.Info("forward stopped", "forward", name, "listen", r.addr.String())
}

// serve runs f on ln, in place of the forward of that name if one runs
// (its listener closes now that the new one is open). fs.mu is held.
func (fs *forwardSet) serve(f config.Forward, ln net.Listener) {
	if r, ok := fs.running[f.Name]; ok {
		fs.stopOne(f.Name, r)
	}
	ctx, cancel := context.WithCancel(fs.acceptCtx)
	r := &runningForward{cfg: f, addr: ln.Addr(), cancel: cancel, done: make(chan struct{})}
	fs.running[f.Name] = r
	fields := []any{"forward", f.Name, "listen", ln.Addr().String(), "service", f.Service}
	if f.Client != "" {
		fields = append(fields, "client", f.Client)
	}
	fs.log.Info("forward listening", fields...)
	streamCtx := fs.streamCtx
	go func() {
		defer close(r.done)
		// At most MaxConns connections in progress through this forward;
		// beyond that new ones are closed at once (and logged, rarely).
		slots := make(chan struct{}, max(f.MaxConns, 1))
		err := forward.Serve(ctx, ln, fs.log, func(local net.Conn) {
			select {
			case slots <- struct{}{}:
			default:
				fs.metrics.LocalRefused(f.Name, admin.RefusedMaxConns)
				fs.limited.Warn("max_conns:"+f.Name, "connection refused: forward at its connection limit", "forward", f.Name, "max_conns", f.MaxConns)
				forward.Reset(local)
				return
			}
			fs.conns.Go(func() {
				defer func() { <-slots }()
				fs.handle(streamCtx, f, local)
			})
		})
		if err != nil {
			fs.log.Error("forward stopped accepting", "forward", f.Name, "error", err)
		}
	}()
}

// stop stops every listener and waits for the accept loops.
func (fs *forwardSet) stop() { _ = fs.apply(nil, origin{}) }

// addr is the bound address of a forward, or nil.
func (fs *forwardSet) addr(name string) net.Addr {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if r, ok := fs.running[name]; ok {
		return r.addr
	}
	return nil
}

// problem says why a forward does not run as the file says ("" when it
// does): its listener could not be opened at the last start or reload.
func (fs *forwardSet) problem(name string) string {
	if fs == nil {
		return "" // not started
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.stale[name]
}
