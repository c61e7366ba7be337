// Package linkemu is a userspace link emulator for loopback TCP: a relay
// whose connections all cross ONE emulated link, like a WAN path between
// two hosts. Each direction of the link has one rate cap, one FIFO
// bottleneck queue and one delay line, shared by every connection relayed
// through the Link (a per-connection cap would hide exactly the
// head-of-line effects worth measuring).
//
// TCP cannot lose data, so a full bottleneck queue does not drop: it stops
// reading from the sending connection (back-pressure), which the sender
// sees as a slow network. Segments are forwarded whole and in order; the
// emulator adds no randomness, so two runs of the same traffic behave alike.
//
//	l := linkemu.New(linkemu.Config{RateBitsPerSec: 10e6, OneWayDelay: 20 * time.Millisecond})
//	defer l.Close()
//	addr, err := l.Relay(serverAddr) // dial addr instead of serverAddr
package linkemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Config describes the emulated link. Zero values take the defaults.
type Config struct {
	// RateBitsPerSec is the link rate of each direction (required, > 0).
	RateBitsPerSec float64
	// OneWayDelay is the propagation delay of each direction; the round
	// trip time is twice this plus serialization and queueing.
	OneWayDelay time.Duration
	// QueueBytes bounds the bottleneck queue of each direction. Default:
	// one bandwidth-delay product (rate × round trip), at least 4 segments.
	QueueBytes int
	// SegmentBytes is the largest chunk the link moves as one unit (the
	// "packet"). Default 1448, a TCP segment on a 1500-byte MTU path.
	SegmentBytes int
	// ConnWindow bounds, per connection and direction, the bytes taken from
	// the sender and not yet delivered to the receiver (standing in for
	// the receiver's TCP window, so a receiver that stops reading stops its
	// sender rather than growing memory). Default 4 MiB.
	ConnWindow int
	// SocketBuffer is SO_RCVBUF of the relay's own sockets. On loopback a
	// sender's window and send buffer would otherwise grow to megabytes
	// and hide a queue in the kernel that no real path of this rate would
	// build; a small receive buffer keeps the sender's unsent data in its
	// own send buffer, where TCP_NOTSENT_LOWAT and friends act as on a
	// real path. Default 64 KiB; negative leaves the system default.
	SocketBuffer int
	// DialTimeout bounds each relayed connection's dial to its target.
	// Default 5s.
	DialTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.SegmentBytes <= 0 {
		c.SegmentBytes = 1448
	}
	if c.QueueBytes <= 0 {
		c.QueueBytes = int(c.RateBitsPerSec / 8 * (2 * c.OneWayDelay).Seconds())
		c.QueueBytes = max(c.QueueBytes, 4*c.SegmentBytes)
	}
	if c.ConnWindow <= 0 {
		c.ConnWindow = 4 << 20
	}
	c.ConnWindow = max(c.ConnWindow, c.SegmentBytes)
	if c.SocketBuffer == 0 {
		c.SocketBuffer = 64 << 10
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	return c
}

// ErrClosed is returned by Relay after Close.
var ErrClosed = errors.New("linkemu: link closed")

// Link is one emulated link and the relays that share it.
type Link struct {
	cfg    Config
	up     *link // from the side that dials the relay towards the target
	down   *link // back
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	lns    []net.Listener
	pairs  map[*pair]struct{}
}

// New starts an emulated link. It panics if cfg.RateBitsPerSec is not
// positive: a link without a rate is a configuration mistake.
func New(cfg Config) *Link {
	if !(cfg.RateBitsPerSec > 0) {
		panic("linkemu: RateBitsPerSec must be > 0")
	}
	cfg = cfg.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	e := &Link{cfg: cfg, ctx: ctx, cancel: cancel, pairs: map[*pair]struct{}{}}
	e.up = newLink(cfg)
	e.down = newLink(cfg)
	e.wg.Go(func() { e.up.serialize(ctx) })
	e.wg.Go(func() { e.down.serialize(ctx) })
	return e
}

// Config is the link's configuration with defaults filled in.
func (e *Link) Config() Config { return e.cfg }

// Relay listens on a new loopback port and relays every accepted
// connection to target across the emulated link; it returns the address to
// dial instead of target. Every relay of one Link shares the same link:
// one rate cap, one bottleneck queue and one delay line per direction.
func (e *Link) Relay(target string) (addr string, err error) {
	listen := "127.0.0.1:0"
	if host, _, err := net.SplitHostPort(target); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
			listen = "[::1]:0"
		}
	}
	lc := net.ListenConfig{Control: e.control}
	ln, err := lc.Listen(e.ctx, "tcp", listen)
	if err != nil {
		return "", fmt.Errorf("linkemu: listen: %w", err)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		ln.Close()
		return "", ErrClosed
	}
	e.lns = append(e.lns, ln)
	e.mu.Unlock()
	e.wg.Go(func() { e.accept(ln, target) })
	return ln.Addr().String(), nil
}

// Close stops every relay, closes every relayed connection and waits for
// all of the link's goroutines.
func (e *Link) Close() error {
	e.mu.Lock()
	e.closed = true
	lns := e.lns
	e.lns = nil
	pairs := make([]*pair, 0, len(e.pairs))
	for p := range e.pairs {
		pairs = append(pairs, p)
	}
	e.mu.Unlock()
	e.cancel()
	for _, ln := range lns {
		ln.Close()
	}
	for _, p := range pairs {
		p.abort()
	}
	e.up.close()
	e.down.close()
	e.wg.Wait()
	return nil
}

func (e *Link) accept(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if e.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// Out of descriptors and the like: back off briefly, bounded.
			select {
			case <-e.ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		e.wg.Go(func() { e.serve(c, target) })
	}
}

func (e *Link) serve(a net.Conn, target string) {
	d := net.Dialer{Timeout: e.cfg.DialTimeout, Control: e.control}
	b, err := d.DialContext(e.ctx, "tcp", target)
	if err != nil {
		reset(a)
		return
	}
	p := &pair{a: a, b: b, done: make(chan struct{})}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		reset(a)
		reset(b)
		return
	}
	e.pairs[p] = struct{}{}
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.pairs, p)
		e.mu.Unlock()
	}()

	ab := newFlow(p, b, e.cfg.ConnWindow)
	ba := newFlow(p, a, e.cfg.ConnWindow)
	var wg sync.WaitGroup
	wg.Go(func() { e.read(p, a, ab, e.up) })
	wg.Go(func() { e.read(p, b, ba, e.down) })
	wg.Go(func() { e.deliver(p, ab) })
	wg.Go(func() { e.deliver(p, ba) })
	// Closing the flows wakes any writer waiting for data once the pair
	// has failed.
	stop := context.AfterFunc(e.ctx, p.abort)
	wg.Go(func() { <-p.done; ab.close(); ba.close() })
	wg.Wait()
	stop()
	a.Close()
	b.Close()
}

// read takes segments from src and queues them on the link.
func (e *Link) read(p *pair, src net.Conn, f *flow, l *link) {
	size := e.cfg.SegmentBytes
	for {
		buf := make([]byte, size)
		n, err := src.Read(buf)
		if n > 0 {
			if !f.acquire(n) || !l.enqueue(&segment{f: f, b: buf[:n]}) {
				return
			}
		}
		if err == io.EOF {
			l.enqueue(&segment{f: f, eof: true})
			return
		}
		if err != nil {
			p.abort()
			return
		}
	}
}

// deliver writes a flow's segments to its destination when they arrive.
func (e *Link) deliver(p *pair, f *flow) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s := f.next()
		if s == nil {
			return
		}
		if d := time.Until(s.at); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-p.done:
				return
			}
		}
		if s.eof {
			if cw, ok := f.dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			p.halfDone()
			return
		}
		if _, err := f.dst.Write(s.b); err != nil {
			p.abort()
			return
		}
		f.release(len(s.b))
	}
}

// pair is one relayed connection: a (accepted) and b (dialed).
type pair struct {
	a, b      net.Conn
	mu        sync.Mutex
	halves    int
	failed    bool
	done      chan struct{}
	closeOnce sync.Once
}

// halfDone counts a direction that ended cleanly; after both the pair
// is done.
func (p *pair) halfDone() {
	p.mu.Lock()
	p.halves++
	both := p.halves == 2
	p.mu.Unlock()
	if both {
		p.finish()
	}
}

func (p *pair) finish() { p.closeOnce.Do(func() { close(p.done) }) }

// abort fails the pair: both ends are reset so neither application sees a
// clean end of data that was not one.
func (p *pair) abort() {
	p.mu.Lock()
	first := !p.failed
	p.failed = true
	p.mu.Unlock()
	if first {
		reset(p.a)
		reset(p.b)
	}
	p.finish()
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// segment is one chunk crossing the link.
type segment struct {
	f   *flow
	b   []byte
	eof bool
	enq time.Time // entered the bottleneck queue
	at  time.Time // arrives at the far end
}

// flow is one direction of one pair: the segments in flight to dst and
// the window that bounds them.
type flow struct {
	p       *pair
	dst     net.Conn
	window  int
	mu      sync.Mutex
	cond    *sync.Cond
	held    int // bytes taken from the sender and not yet written to dst
	pending []*segment
	closed  bool
}

func newFlow(p *pair, dst net.Conn, window int) *flow {
	f := &flow{p: p, dst: dst, window: window}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// acquire waits for n bytes of window; false once the flow is closed.
func (f *flow) acquire(n int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.held > 0 && f.held+n > f.window && !f.closed {
		f.cond.Wait()
	}
	f.held += n
	return !f.closed
}

func (f *flow) release(n int) {
	f.mu.Lock()
	f.held -= n
	f.mu.Unlock()
	f.cond.Broadcast()
}

// arrive hands a segment that left the link to the flow's writer.
func (f *flow) arrive(s *segment) {
	f.mu.Lock()
	if !f.closed {
		f.pending = append(f.pending, s)
	}
	f.mu.Unlock()
	f.cond.Broadcast()
}

// next waits for the next segment; nil once the flow is closed.
func (f *flow) next() *segment {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.pending) == 0 && !f.closed {
		f.cond.Wait()
	}
	if f.closed {
		return nil
	}
	s := f.pending[0]
	f.pending[0] = nil
	f.pending = f.pending[1:]
	return s
}

func (f *flow) close() {
	f.mu.Lock()
	f.closed = true
	f.pending = nil
	f.mu.Unlock()
	f.cond.Broadcast()
}

// link is one direction of the emulated path: a FIFO bottleneck queue in
// front of a serializer at the link rate, then the delay line.
type link struct {
	bytesPerSec float64
	delay       time.Duration
	limit       int

	mu     sync.Mutex
	cond   *sync.Cond
	q      []*segment
	queued int
	closed bool
}

func newLink(cfg Config) *link {
	l := &link{bytesPerSec: cfg.RateBitsPerSec / 8, delay: cfg.OneWayDelay, limit: cfg.QueueBytes}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// enqueue waits for room in the queue (back-pressure on the sender) and
// appends s. A segment always fits an empty queue. False once closed.
func (l *link) enqueue(s *segment) bool {
	n := len(s.b)
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.queued > 0 && l.queued+n > l.limit && !l.closed {
		l.cond.Wait()
	}
	if l.closed {
		return false
	}
	s.enq = time.Now()
	l.q = append(l.q, s)
	l.queued += n
	l.cond.Broadcast()
	return true
}

func (l *link) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cond.Broadcast()
}

// serialize sends the queue's head segments one at a time at the link
// rate. Transmission times follow a virtual clock (a segment starts when
// both it has arrived and the link is free), so timer lateness does not
// accumulate into a lower rate.
func (l *link) serialize(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var free time.Time // when the link finishes its current segment
	for {
		l.mu.Lock()
		for len(l.q) == 0 && !l.closed {
			l.cond.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			return
		}
		s := l.q[0]
		l.mu.Unlock()

		start := s.enq
		if free.After(start) {
			start = free
		}
		end := start.Add(time.Duration(float64(len(s.b)) / l.bytesPerSec * float64(time.Second)))
		if d := time.Until(end); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
		free = end
		s.at = end.Add(l.delay)

		l.mu.Lock()
		l.q[0] = nil
		l.q = l.q[1:]
		l.queued -= len(s.b)
		l.mu.Unlock()
		l.cond.Broadcast()
		s.f.arrive(s)
	}
}
