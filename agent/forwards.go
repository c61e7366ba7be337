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

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/ratelog"
	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// forwardSet runs the local listeners of an agent's forwards and changes
// them on reload: a forward whose block is unchanged keeps its listener;
// a removed or changed one stops accepting (its streams in flight go on);
// a new one starts listening.
type forwardSet struct {
	log     hclog.Logger
	limited *ratelog.Log
	handle  func(ctx context.Context, f config.Forward, local net.Conn)
	listen  listenFunc
	// conns is where each accepted connection's goroutine is counted: the
	// agent's, so streams outlive a forward that a reload removed.
	conns *sync.WaitGroup

	mu        sync.Mutex
	running   map[string]*runningForward
	acceptCtx context.Context // stops accept loops (the agent stopping)
	streamCtx context.Context // given to handle (outlives acceptCtx by the drain)
}

type runningForward struct {
	cfg    config.Forward
	addr   net.Addr
	cancel context.CancelFunc
	done   chan struct{}
}

// listenFunc opens a listener (forward.Listen, or through a handover).
type listenFunc func(ctx context.Context, addr string, opts ...sockopt.Options) (net.Listener, error)

func newForwardSet(log hclog.Logger, conns *sync.WaitGroup, listen listenFunc, handle func(context.Context, config.Forward, net.Conn)) *forwardSet {
	return &forwardSet{log: log, limited: ratelog.New(log, time.Minute), handle: handle, listen: listen, conns: conns, running: map[string]*runningForward{}}
}

// start runs the first set of forwards. acceptCtx stops the accept loops;
// streamCtx is passed to handle.
func (fs *forwardSet) start(acceptCtx, streamCtx context.Context, want []config.Forward) error {
	fs.mu.Lock()
	fs.acceptCtx, fs.streamCtx = acceptCtx, streamCtx
	fs.mu.Unlock()
	return fs.apply(want)
}

// apply makes the running forwards match want. Listeners are stopped first,
// so a forward moved to another name can take over the same address. It
// returns every forward that could not start; the others run regardless.
func (fs *forwardSet) apply(want []config.Forward) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	acceptCtx, streamCtx := fs.acceptCtx, fs.streamCtx
	if acceptCtx.Err() != nil {
		want = nil // stopping: start nothing new
	}
	keep := map[string]bool{}
	for _, f := range want {
		if r, ok := fs.running[f.Name]; ok && reflect.DeepEqual(r.cfg, f) {
			keep[f.Name] = true
		}
	}
	for name, r := range fs.running {
		if !keep[name] {
			r.cancel()
			<-r.done
			delete(fs.running, name)
			fs.log.Info("forward stopped", "forward", name, "listen", r.addr.String())
		}
	}
	var errs []error
	for _, f := range want {
		if keep[f.Name] {
			continue
		}
		// The minimum TTL and DSCP sit on the listening socket, so they
		// hold for every accepted connection from its first packet.
		ln, err := fs.listen(acceptCtx, f.Listen, sockopt.Options{MinTTL: f.MinTTL, DSCP: f.DSCP})
		if err != nil {
			errs = append(errs, fmt.Errorf("forward %q: %w", f.Name, err))
			continue
		}
		ctx, cancel := context.WithCancel(acceptCtx)
		r := &runningForward{cfg: f, addr: ln.Addr(), cancel: cancel, done: make(chan struct{})}
		fs.running[f.Name] = r
		fields := []any{"forward", f.Name, "listen", ln.Addr().String(), "service", f.Service}
		if f.Client != "" {
			fields = append(fields, "client", f.Client)
		}
		fs.log.Info("forward listening", fields...)
		go func() {
			defer close(r.done)
			// At most MaxConns connections in progress through this forward;
			// beyond that new ones are closed at once (and logged, rarely).
			slots := make(chan struct{}, max(f.MaxConns, 1))
			err := forward.Serve(ctx, ln, fs.log, func(local net.Conn) {
				select {
				case slots <- struct{}{}:
				default:
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
	return errors.Join(errs...)
}

// stop stops every listener and waits for the accept loops.
func (fs *forwardSet) stop() { _ = fs.apply(nil) }

// addr is the bound address of a forward, or nil.
func (fs *forwardSet) addr(name string) net.Addr {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if r, ok := fs.running[name]; ok {
		return r.addr
	}
	return nil
}
