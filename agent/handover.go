package agent

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/handover"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/resume"
	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// handoverHost is an agent's side of a handover to a successor process
// (SIGUSR2): with a handover.Handover every listener is opened through it,
// so the successor inherits them, and the resumable streams go along with
// their local connections; without one (tests, Windows) listeners are
// plain and HandOver refuses.
type handoverHost struct {
	h     *handover.Handover
	used  bool // UseHandover was called (with h nil: a real run without handovers)
	pipes pipeSet
}

// earlyState is what a successor needs before its first session: the
// name its peers know our resumable streams by.
type earlyState struct {
	ResumeInstance string `json:"resume_instance"`
}

// handedState is what goes with the streams' local connections.
type handedState struct {
	Resume resume.State `json:"resume"`
}

// pipeWait bounds how long a handover waits for the frozen streams'
// pipes (one blocked writing to an application that does not read).
const pipeWait = 10 * time.Second

// use takes h for the agent: in a successor, the resume table must carry
// the predecessor's instance before any session starts (its peers keep
// our streams only for that instance), so table may be replaced; the
// table to use is returned.
func (hh *handoverHost) use(h *handover.Handover, table *resume.Table, newTable func(instance string) *resume.Table, log hclog.Logger) *resume.Table {
	hh.h, hh.used = h, true
	if h == nil {
		return table
	}
	if b := h.EarlyState(); b != nil {
		var es earlyState
		if err := json.Unmarshal(b, &es); err != nil || es.ResumeInstance == "" {
			log.Warn("the previous process's resume instance is unreadable; its streams will not resume", "error", err)
		} else {
			table = newTable(es.ResumeInstance)
		}
	}
	b, _ := json.Marshal(earlyState{ResumeInstance: table.Instance()})
	if err := h.SetEarlyState(b); err != nil {
		log.Warn("cannot pass the resume instance to a successor", "error", err)
	}
	return table
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
		if hh.used {
			if err := handover.NotifyReady(); err != nil {
				log.Error("cannot tell the service manager that the agent is ready", "error", err)
			}
		}
		return nil
	}
	err := hh.h.Ready()
	if err != nil && !hh.h.HasParent() {
		log.Error("cannot tell the service manager that the agent is ready", "error", err)
		return nil
	}
	return err
}

// hasParent says whether this process takes over from a previous one.
func (hh *handoverHost) hasParent() bool { return hh.h != nil && hh.h.HasParent() }

// handedOver is closed once a successor took over (never without a
// handover).
func (hh *handoverHost) handedOver() <-chan struct{} {
	if hh.h == nil {
		return nil
	}
	return hh.h.Exit()
}

// errNoHandover: the agent was started without a handover.Handover.
var errNoHandover = errors.New("this agent cannot hand over to a new process (Linux only; its start-up log says why if on Linux)")

// upgrade starts the successor and waits until it is ready. Once the
// successor has its listeners and asks, the resumable streams are frozen
// and passed on with their local connections.
func (hh *handoverHost) upgrade(ctx context.Context, table *resume.Table, log hclog.Logger) error {
	if hh.h == nil {
		return errNoHandover
	}
	var handed []resume.Handoff
	err := hh.h.Upgrade(ctx, func() error {
		var err error
		handed, err = hh.export(table, log)
		return err
	})
	if err != nil && errors.Is(err, handover.ErrExported) {
		// resume has no way back from Freeze yet: the streams frozen for
		// the successor end here, reset, and this process opens no more
		// resumable streams.
		for _, ho := range handed {
			forward.Reset(ho.Local)
		}
		return fmt.Errorf("%w: %d frozen streams reset, and new streams are not resumable until a restart", err, len(handed))
	}
	return err
}

// export freezes the resumable streams, waits for their pipes, and queues
// them for the successor.
func (hh *handoverHost) export(table *resume.Table, log hclog.Logger) ([]resume.Handoff, error) {
	if table == nil {
		return nil, nil
	}
	if n := hh.pipes.freeze(pipeWait); n > 0 {
		log.Warn("freezing while streams are still being opened", "streams", n, "waited", pipeWait)
	}
	table.Freeze()
	if stuck := hh.pipes.wait(pipeWait); stuck > 0 {
		log.Warn("handing over streams whose pipes did not stop (an application not reading?)", "streams", stuck, "waited", pipeWait)
	}
	inst, handoffs := table.Export()
	st := handedState{Resume: resume.State{Instance: inst}}
	var handed []resume.Handoff
	for _, ho := range handoffs {
		// A stream whose local connection is gone (its pipe ended and
		// closed it; the stream waits for the peer to confirm the rest)
		// goes without one, to finish in the successor.
		if ho.Local != nil {
			if err := hh.h.AddConn(streamConnName(ho.State.Token), ho.Local); err != nil {
				log.Warn("stream not handed over: its connection cannot be passed on", "service", ho.State.Service, "error", err)
				forward.Reset(ho.Local)
				continue
			}
			handed = append(handed, ho)
		}
		st.Resume.Streams = append(st.Resume.Streams, ho.State)
	}
	blob, err := json.Marshal(st)
	if err != nil {
		return handed, fmt.Errorf("encode the streams: %w", err)
	}
	hh.h.SetState(blob)
	log.Info("resumable streams frozen for the new process", "streams", len(handed))
	return handed, nil
}

func streamConnName(token mux.Token) string { return "stream:" + hex.EncodeToString(token[:]) }

// restored is a stream taken over from the previous process, to pipe.
type restored struct {
	kind, name string
	idle       time.Duration
	peer       string
	stream     *resume.Stream
	local      net.Conn
}

// restore asks the previous process for its resumable streams (it
// freezes them now) and takes them into table, suspended: they resume
// over this process's sessions. Call it once the listeners are open;
// an error means the successor cannot take over.
func (hh *handoverHost) restore(table *resume.Table, forwards []config.Forward, services []config.Service, log hclog.Logger) ([]restored, error) {
	if hh.h == nil || !hh.h.HasParent() {
		return nil, nil
	}
	blob, err := hh.h.State()
	if err != nil || blob == nil {
		return nil, err
	}
	var st handedState
	if err := json.Unmarshal(blob, &st); err != nil {
		return nil, fmt.Errorf("handed-over streams: %w", err)
	}
	var out []restored
	lost := 0
	for _, ss := range st.Resume.Streams {
		local, err := hh.h.Conn(streamConnName(ss.Token))
		switch {
		case errors.Is(err, handover.ErrNotInherited):
			// Its local connection had closed: it only finishes (the
			// peer's confirmations, a resend), no pipe.
			if _, err := table.Restore(ss, nil); err != nil {
				log.Warn("handed-over stream lost", "service", ss.Service, "error", err)
				lost++
			}
			continue
		case err != nil:
			log.Warn("handed-over stream lost: its connection did not come", "service", ss.Service, "error", err)
			lost++
			continue
		}
		rs, err := table.Restore(ss, local)
		if err != nil {
			log.Warn("handed-over stream lost", "service", ss.Service, "error", err)
			forward.Reset(local) // once the previous process closes it too
			lost++
			continue
		}
		r := restored{kind: "service", name: ss.Service, idle: serviceIdle(services, ss.Service), peer: ss.Peer, stream: rs, local: local}
		if ss.Opener {
			r.kind = "forward"
			for _, f := range forwards {
				if f.Service == ss.Service {
					r.name, r.idle = f.Name, f.IdleTimeout
					break
				}
			}
		}
		out = append(out, r)
	}
	if len(st.Resume.Streams) > 0 {
		log.Info("resumable streams taken over from the previous process", "streams", len(st.Resume.Streams)-lost, "piped", len(out), "lost", lost)
	}
	return out, nil
}

// pipeSet tracks the pipes of resumable streams, for a handover to wait
// for once it froze them, and gates the making of new ones: Freeze must
// not meet a stream still being opened, whose local connection the
// table does not know yet (its pipe would read on, and the state race).
type pipeSet struct {
	mu      sync.Mutex
	frozen  bool                             // the streams are frozen for a successor
	opening int                              // held by hold, until the pipe is counted
	pending map[*resume.Stream]bool          // opened, their pipe not counted yet
	idle    chan struct{}                    // closed when opening drops to zero while frozen
	m       map[*resume.Stream]chan struct{} // running pipes
}

// hold is called before a resumable stream is made: false once frozen
// (make a plain one). Then opened(rs) or release.
func (p *pipeSet) hold() bool {
	if p == nil {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		return false
	}
	p.opening++
	return true
}

// opened says the held stream is rs; its pipe's add ends the hold.
func (p *pipeSet) opened(rs *resume.Stream) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending == nil {
		p.pending = map[*resume.Stream]bool{}
	}
	p.pending[rs] = true
}

// release ends a hold whose stream was not made.
func (p *pipeSet) release() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.releaseLocked()
}

func (p *pipeSet) releaseLocked() {
	if p.opening--; p.opening == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
}

func (p *pipeSet) isFrozen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frozen
}

// add counts rs's pipe until the returned func is called (and ends its
// hold, if it had one).
func (p *pipeSet) add(rs *resume.Stream) (done func()) {
	ch := make(chan struct{})
	p.mu.Lock()
	if p.m == nil {
		p.m = map[*resume.Stream]chan struct{}{}
	}
	p.m[rs] = ch
	if p.pending[rs] {
		delete(p.pending, rs)
		p.releaseLocked()
	}
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		delete(p.m, rs)
		p.mu.Unlock()
		close(ch)
	}
}

// freeze makes no more resumable streams and waits up to limit for those
// being opened to reach their pipe.
func (p *pipeSet) freeze(limit time.Duration) (opening int) {
	p.mu.Lock()
	p.frozen = true
	var idle chan struct{}
	if p.opening > 0 {
		p.idle = make(chan struct{})
		idle = p.idle
	}
	p.mu.Unlock()
	if idle != nil {
		select {
		case <-idle:
		case <-time.After(limit):
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.opening
}

// wait waits up to limit for the pipes counted now and says how many are
// still running.
func (p *pipeSet) wait(limit time.Duration) (running int) {
	p.mu.Lock()
	chans := make([]chan struct{}, 0, len(p.m))
	for _, ch := range p.m {
		chans = append(chans, ch)
	}
	p.mu.Unlock()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for i, ch := range chans {
		select {
		case <-ch:
		case <-timer.C:
			for _, rest := range chans[i:] {
				select {
				case <-rest:
				default:
					running++
				}
			}
			return running
		}
	}
	return 0
}
