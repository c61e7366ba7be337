package resume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sync/semaphore"

	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/ratelog"
)

// Config tunes a Table.
type Config struct {
	// Budget bounds the replay buffers of all streams with one peer
	// certificate (they outlive its sessions); default 256 MiB.
	Budget int64
	// Instance names this agent's stream state in its hellos; random if
	// empty (a handover passes the old one on).
	Instance string
	// MaxPeerStreams bounds the streams held for one peer certificate:
	// open, suspended, or ended and waiting for the peer to confirm our
	// end. Streams outlive their sessions, so the session limits alone
	// do not bound them: a peer that opens streams and drops its
	// connection, again and again, would leave a resume window's worth.
	// At the bound the oldest idle stream (suspended, or ended and
	// waiting for the peer's confirmation; nothing moves on either) is
	// reset to make room; with none, the new stream is refused
	// (ErrTooManyStreams). Read at each check (a reload may change it);
	// nil or 0: no bound.
	MaxPeerStreams func() int
	Logger         hclog.Logger
}

// ErrTooManyStreams refuses a stream when its peer certificate holds
// Config.MaxPeerStreams streams that are all in use.
var ErrTooManyStreams = errors.New("the peer's certificate holds as many resumable streams as the limit allows, all in use")

// Options are one stream's.
type Options struct {
	Window time.Duration // how long it may stay suspended; > 0
	Class  string        // the class of session that carries it
	// MaxReplay bounds its replay buffer; default 1 MiB. It should be at
	// least the stream's window: less slows it on a long path.
	MaxReplay int
	// OnHeavy, for a stream we open, is called once, on a goroutine of
	// the table's, when the stream turns heavy (see HeavyBytes), once
	// the peer has answered its open. The caller may then Move it to a
	// session of its own, away from the small messages of others.
	OnHeavy func(*Stream)
}

// A stream is heavy once it has carried HeavyBytes within HeavyWithin,
// both ways together (8 Mbit/s or more): a transfer, not the messages of
// a protocol, and past the size of a web page or an RPC's answer, which
// would be over before a move. On a path slower than that, once it has
// carried BackloggedBytes while our writes waited for the path (its
// window, the connection, the replay buffer) for at least half of
// HeavyWithin and half of the time since it was counted from: a transfer
// that fills the path, however slow. Moving one costs a round trip and a
// resend of what is in flight, once.
const (
	HeavyBytes      = 1 << 20
	HeavyWithin     = time.Second
	BackloggedBytes = 256 << 10
)

// Table holds an agent's resumable streams: it names them, finds them for
// the peer's resumes, and moves the ones we opened to each new session.
type Table struct {
	cfg      Config
	log      hclog.Logger
	limited  *ratelog.Log
	instance string

	mu      sync.Mutex
	streams map[mux.Token]*Stream
	budgets map[string]*peerBudget      // by peer key
	current map[sessionKey]*mux.Session // the newest session per peer key and class
	closed  bool
	wg      sync.WaitGroup // moves in progress

	resumed, expired, replayed, refused, peerLost, moved, evicted atomic.Uint64
	opened                                                        uint64 // streams made, for their age order; under mu
}

type sessionKey struct{ key, class string }

type peerBudget struct {
	sem     *semaphore.Weighted
	streams int
}

// NewTable makes an empty table.
func NewTable(cfg Config) *Table {
	if cfg.Budget <= 0 {
		cfg.Budget = 256 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	inst := cfg.Instance
	if inst == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		inst = hex.EncodeToString(b[:])
	}
	return &Table{
		cfg: cfg, log: cfg.Logger, limited: ratelog.New(cfg.Logger, time.Minute), instance: inst,
		streams: map[mux.Token]*Stream{}, budgets: map[string]*peerBudget{}, current: map[sessionKey]*mux.Session{},
	}
}

// Instance is this agent's instance name, for its hellos.
func (t *Table) Instance() string { return t.instance }

// newStream registers a stream, complete but for its carrier, which
// comes next (a Freeze may read it as soon as it is registered).
func (t *Table) newStream(token mux.Token, opener bool, sess *mux.Session, service, source string, local, remote net.Addr, o Options) (*Stream, error) {
	if o.Window <= 0 {
		return nil, errors.New("resumable stream without a resume window")
	}
	key := sess.Peer.Key()
	// At the bound the new stream takes the slot of the oldest idle one,
	// which it resets: found without the table's lock (a stream's lock
	// comes first), taken over under it, so that two opens at once never
	// take the same one. A round whose pick ended or stopped being held
	// meanwhile looks again; a few rounds cover streams ending meanwhile.
	var victim *Stream
	for range 4 {
		s, evicted, full, err := t.register(token, opener, key, sess, service, source, local, remote, o, victim)
		if evicted != nil {
			t.evicted.Add(1)
			t.limited.Warn("resume-evict:"+key, "peer's certificate at its bound of resumable streams: reset the oldest idle one to make room", "peer", sess.Peer.Name(), "key", key, "bound", t.maxPeerStreams())
			_ = evicted.Abort()
		}
		if s != nil || err != nil {
			return s, err
		}
		if victim = oldestIdle(full); victim == nil {
			return nil, ErrTooManyStreams
		}
	}
	return nil, ErrTooManyStreams
}

// register adds the stream unless the peer's certificate is at its
// bound. There it takes the slot of victim, if given and still held:
// victim leaves the table at once (evicted; the caller resets it); else
// it returns the certificate's streams (full) to pick an idle one from.
func (t *Table) register(token mux.Token, opener bool, key string, sess *mux.Session, service, source string, local, remote net.Addr, o Options, victim *Stream) (s, evicted *Stream, full []*Stream, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, nil, nil, net.ErrClosed
	}
	if _, dup := t.streams[token]; dup {
		return nil, nil, nil, ErrTokenHeld
	}
	b := t.budgets[key]
	if b == nil {
		b = &peerBudget{sem: newBudget(t.cfg.Budget)}
		t.budgets[key] = b
	}
	if lim := t.maxPeerStreams(); lim > 0 && b.streams >= lim {
		if victim == nil || t.streams[victim.token] != victim {
			return nil, nil, t.peerStreamsLocked(key), nil
		}
		// Its slot is the new stream's; its own remove finds it gone.
		delete(t.streams, victim.token)
		b.streams--
		evicted = victim
	}
	b.streams++
	t.opened++
	s = t.makeStream(token, opener, key, sess.Peer.Name(), sess.PeerHello.Instance, service, local, remote, o, b)
	s.source, s.answered, s.order = source, !opener, t.opened
	if opener {
		s.openingOn = sess
	} else if sess.PeerResumes() && sess.PeerHello.Has(mux.CapHeavy) {
		s.onHeavy, s.heavyHook, s.rateSince = tellPeerHeavy, tellPeerHeavy, time.Now()
	}
	t.streams[token] = s
	return s, evicted, nil, nil
}

func (t *Table) maxPeerStreams() int {
	if t.cfg.MaxPeerStreams == nil {
		return 0
	}
	return t.cfg.MaxPeerStreams()
}

// peerStreamsLocked lists key's streams. O(streams), only at the bound.
func (t *Table) peerStreamsLocked(key string) []*Stream {
	var list []*Stream
	for _, s := range t.streams {
		if s.peerKey == key {
			list = append(list, s)
		}
	}
	return list
}

// oldestIdle is the oldest idle stream of list (see idle), or nil. Called
// without the table's lock: idle takes the stream's, which comes first.
func oldestIdle(list []*Stream) *Stream {
	var oldest *Stream
	for _, s := range list {
		if (oldest == nil || s.order < oldest.order) && s.idle() {
			oldest = s
		}
	}
	return oldest
}

// ErrTokenHeld: a stream is opened under the token of one the table
// holds already (a peer replaying a token, or two opens racing).
var ErrTokenHeld = errors.New("a stream with this token exists already")

// Holds says whether a stream named token is held here (mux's
// Config.TokenHeld: a peer's open naming it is refused before its dial).
// A closed table holds none: its opens are served as plain streams.
func (t *Table) Holds(token mux.Token) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.closed && t.streams[token] != nil
}

func newBudget(n int64) *semaphore.Weighted { return semaphore.NewWeighted(n) }

func (t *Table) makeStream(token mux.Token, opener bool, key, peer, inst, service string, local, remote net.Addr, o Options, b *peerBudget) *Stream {
	if o.MaxReplay <= 0 {
		o.MaxReplay = 1 << 20
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Stream{
		t: t, token: token, opener: opener, peerKey: key, peer: peer, inst: inst,
		class: o.Class, home: o.Class, service: service, window: o.Window, maxReplay: o.MaxReplay, budget: b.sem,
		ctx: ctx, cancel: cancel, local: local, remote: remote,
	}
	if opener {
		s.onHeavy, s.heavyHook, s.rateSince = o.OnHeavy, o.OnHeavy, time.Now()
	}
	s.cond.L = &s.mu
	return s
}

func (t *Table) remove(s *Stream) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.streams[s.token] != s {
		return
	}
	delete(t.streams, s.token)
	if b := t.budgets[s.peerKey]; b != nil {
		if b.streams--; b.streams == 0 {
			delete(t.budgets, s.peerKey)
		}
	}
}

// Open opens a resumable stream to the peer's service on sess (whose peer
// must resume streams: sess.PeerResumes). local and remote are the
// addresses the stream reports (the local connection's).
func (t *Table) Open(ctx context.Context, sess *mux.Session, service, source string, local, remote net.Addr, o Options) (*Stream, error) {
	var token mux.Token
	_, _ = rand.Read(token[:])
	s, err := t.newStream(token, true, sess, service, source, local, remote, o)
	if err != nil {
		return nil, err
	}
	c, err := sess.OpenResumable(ctx, service, source, token)
	return s.opened(c, err)
}

// opened ends the first open of s: the carrier it got, or its error. A
// failed open ends the stream, unless a move already took it to a newer
// session (its session died while the open was on its way, and another
// came up): then it lives on there.
func (s *Stream) opened(c *mux.Stream, err error) (*Stream, error) {
	if err != nil {
		s.mu.Lock()
		moved := s.gen != 0 && s.err == nil
		s.openingOn = nil
		s.mu.Unlock()
		if moved {
			return s, nil
		}
		s.finish(err)
		return nil, err
	}
	s.attachFirst(c)
	return s, nil
}

// Accept wraps a resumable stream the peer opened to one of our services
// (c.Token says whether it is one).
func (t *Table) Accept(c *mux.Stream, local, remote net.Addr, o Options) (*Stream, error) {
	token, ok := c.Token()
	if !ok {
		return nil, errors.New("not a resumable stream")
	}
	s, err := t.newStream(token, false, c.Session(), c.Service(), "", local, remote, o)
	if err != nil {
		return nil, err
	}
	s.attachFirst(c)
	return s, nil
}

// attachFirst attaches the carrier of the stream's first open (or
// accept), unless a move got there first: a session that came up, or a
// peer that resumed, while this open was on its way. The stream then
// rides the move's carrier, and this one, which the peer has let go in
// the move, is let go here too.
func (s *Stream) attachFirst(c *mux.Stream) {
	s.mu.Lock()
	if s.gen != 0 {
		s.openingOn = nil
		s.mu.Unlock()
		c.Release()
		return
	}
	s.carrier = c
	s.gen++
	s.openingOn = nil
	s.mu.Unlock()
	c.OnDelivered(s.acknowledge)
	if s.opener {
		c.OnPeerHeavy(s.peerHeavy)
	}
}

// ServeResume is mux's Config.Resume: the peer moves the stream named
// token to the session of c.
func (t *Table) ServeResume(c *mux.Stream, token mux.Token, peerDelivered uint64) error {
	t.mu.Lock()
	s := t.streams[token]
	t.mu.Unlock()
	peer := c.Session().Peer
	if s == nil {
		t.refused.Add(1)
		return &mux.ResumeRefusal{Code: mux.CodeNoStream, Msg: "no such stream here: it ended, its resume window passed, or this agent restarted"}
	}
	if s.opener || s.peerKey != peer.Key() {
		// A stream named by its token only within one certificate's: a
		// token guessed or stolen by another gets nothing, not even
		// whether it exists.
		t.refused.Add(1)
		t.limited.Warn("resume-identity:"+peer.Key(), "resume refused: the stream belongs to another certificate", "peer", peer.Name(), "key", peer.Key())
		return &mux.ResumeRefusal{Code: mux.CodeNoStream, Msg: "no such stream here: it ended, its resume window passed, or this agent restarted"}
	}
	s.rmu.Lock()
	// A carrier whose session lives on: the peer moves the stream to
	// another of its sessions (Move), it did not lose this one. (A peer
	// that saw the session die before we did looks the same; counted as
	// a move, which is what it is from here.)
	live := s.carriedLive()
	delivered, err := s.detachForMove()
	if err != nil {
		s.rmu.Unlock()
		return &mux.ResumeRefusal{Code: mux.CodeNoStream, Msg: "the stream ended here: " + err.Error()}
	}
	if err := c.AcceptResume(delivered); err != nil {
		s.rmu.Unlock()
		return nil // the new session failed too: still suspended
	}
	resend, err := s.switchTo(c, peerDelivered)
	// The resend outside rmu: the peer may move the stream on as soon as
	// it has our answer, and then reads c no more. Its move detaches c,
	// which ends a resend waiting there for window; held under rmu, the
	// resend waited for as long as c's session lived, and every later
	// move or resume of the stream with it.
	s.rmu.Unlock()
	if err == nil {
		err = resend()
	}
	if err == nil {
		if live {
			t.moved.Add(1)
			return nil
		}
		t.resumed.Add(1)
		// Its side logs each batch; ours, once per interval per peer.
		t.limited.Log(hclog.Info, "resumed:"+peer.Key(), "peer is resuming its streams on a new session", "peer", peer.Name())
	}
	return nil
}

// SessionUp tells the table of a new session to a peer (its class: the
// one the client named). Streams of that peer whose other end was a
// previous instance (it restarted without its state) fail at once; the
// streams we opened on this peer's sessions of the class move here.
func (t *Table) SessionUp(sess *mux.Session, class string) {
	if !sess.PeerResumes() {
		return
	}
	key := sess.Peer.Key()
	inst := sess.PeerHello.Instance
	var gone, move []*Stream
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.current[sessionKey{key, class}] = sess
	for _, s := range t.streams {
		if s.peerKey != key {
			continue
		}
		switch {
		case s.inst != inst:
			gone = append(gone, s)
		case s.opener && s.class == class:
			move = append(move, s)
		}
	}
	t.mu.Unlock()
	// Only the suspended ones: a stream still live on a session of the
	// old instance (a server draining before its restart) finishes there.
	lost := 0
	for _, s := range gone {
		if s.carrierGone() {
			lost++
			t.peerLost.Add(1)
			s.fail(fmt.Errorf("%w: it came back as a new instance (restarted, not handed over)", ErrPeerLost))
		}
	}
	if lost > 0 {
		t.log.Warn("peer restarted without its streams: resetting them", "peer", sess.Peer.Name(), "streams", lost)
	}
	if len(move) > 0 {
		t.spawn(func() { t.moveAll(sess, move) })
	}
}

// spawn runs f on a goroutine Close waits for, unless closed.
// Spawn runs f on the table's goroutines (Close waits for them): for a
// caller's moves of its streams.
func (t *Table) Spawn(f func()) { t.spawn(f) }

func (t *Table) spawn(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.wg.Go(f)
	}
}

// isCurrent says whether sess is the newest session of peer key and class.
func (t *Table) isCurrent(sess *mux.Session, key, class string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current[sessionKey{key, class}] == sess
}

// SessionDown forgets sess as the current session of its peer and class.
func (t *Table) SessionDown(sess *mux.Session, class string) {
	t.mu.Lock()
	k := sessionKey{sess.Peer.Key(), class}
	if t.current[k] == sess {
		delete(t.current, k)
	}
	var away []*Stream
	for _, s := range t.streams {
		if s.opener && s.peerKey == k.key && s.class == class && s.home != class {
			away = append(away, s)
		}
	}
	t.mu.Unlock()
	// Streams moved here from their home class go home while this class
	// has no session: a lane that stays down (refused, or its path
	// broken) holds them no longer than a reconnect.
	for _, s := range away {
		if s.carrierGone() {
			t.suspended(s)
		}
	}
}

// moveParallel bounds the moves in flight on one session: each waits a
// round trip for the peer's answer.
const moveParallel = 32

// moveAll moves streams to sess and logs once for the lot.
func (t *Table) moveAll(sess *mux.Session, streams []*Stream) {
	start := time.Now()
	var (
		moved, failed atomic.Int64
		wg            sync.WaitGroup
		slots         = make(chan struct{}, moveParallel)
	)
	before := t.replayed.Load()
	for _, s := range streams {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			switch err := s.moveOpened(sess); {
			case err == nil:
				moved.Add(1)
			case errors.Is(err, ErrNotMoved):
			default:
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := moved.Load() + failed.Load(); n > 0 {
		t.log.Info("streams resumed on the new session", "peer", sess.Peer.Name(), "resumed", moved.Load(), "failed", failed.Load(),
			"bytes_replayed", t.replayed.Load()-before, "took", time.Since(start).Round(time.Millisecond))
	}
}

// ErrNotMoved: a move found the stream where it was to go, ended, or not
// to be moved (see Move); it stays where it is.
var ErrNotMoved = errors.New("stream not moved")

// Move takes a live stream we opened off its session and onto sess, the
// current session of class (another lane of the same peer): the peer
// lets its end go on the old session, the two tell each other what they
// delivered and resend the rest, as after a lost session, and the old
// carrier is freed on both sides. A stream suspended, closing, handed
// over or already on sess stays, and one that ends during the move
// returns ErrNotMoved too. If the move fails the stream goes back to its
// class and resumes as after a lost session.
func (s *Stream) Move(sess *mux.Session, class string) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.mu.Lock()
	// Answered: until the peer has taken the first open, a resume could
	// cross it and the stream be opened twice. Held: until the peer's
	// table holds it, the resume would find nothing and cut it.
	stays := !s.opener || s.err != nil || s.carrier == nil || s.closing || s.frozen || s.carrier.Session() == sess ||
		!(s.answered || s.carrier.Answered()) || !s.peerHoldsLocked()
	from := s.class
	s.mu.Unlock()
	if stays || sess.Closed() || !s.t.isCurrent(sess, s.peerKey, class) {
		return ErrNotMoved
	}
	s.setClass(class)
	err := s.resumeOn(sess)
	if err == nil {
		s.t.moved.Add(1)
		return nil
	}
	s.mu.Lock()
	ended, suspended := s.err != nil, s.err == nil && s.carrier == nil
	s.mu.Unlock()
	s.setClass(from)
	if ended {
		// Its application or the peer ended it meanwhile (its pipe says
		// so): nothing was lost by the move.
		return fmt.Errorf("%w: the stream ended: %w", ErrNotMoved, err)
	}
	if suspended {
		s.t.suspended(s) // on its old class's session, if it is up
	}
	return err
}

// setClass changes the class the stream resumes on. Written under both
// locks (s.mu, then t.mu, their order): the table reads it under t.mu.
func (s *Stream) setClass(class string) {
	s.mu.Lock()
	s.t.mu.Lock()
	s.class = class
	s.t.mu.Unlock()
	s.mu.Unlock()
}

// carrierGone: suspended, or its carrier's session has ended.
func (s *Stream) carrierGone() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.carrier == nil || s.carrier.SessionClosed()
}

func (s *Stream) wasAnswered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answered
}

// moveOpened moves a stream we opened to sess, unless it is there already
// or ended.
func (s *Stream) moveOpened(sess *mux.Session) error {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.mu.Lock()
	// here: on sess already, or its first open is on its way there (a
	// move now would only resume it at once and replay all it has sent).
	here := s.carrier != nil && s.carrier.Session() == sess || s.openingOn == sess
	ended := s.err != nil
	s.mu.Unlock()
	// Only to the newest live session of its peer and class: a move to
	// an older one (a late call) would take a live stream off a good
	// session for one that is gone.
	if here || ended || sess.Closed() || !s.t.isCurrent(sess, s.peerKey, s.class) {
		return ErrNotMoved
	}
	if err := s.resumeOn(sess); err != nil {
		return err
	}
	s.t.resumed.Add(1)
	return nil
}

// resumeOn detaches the stream from its carrier, if any, and resumes it
// on sess. Called with rmu held.
func (s *Stream) resumeOn(sess *mux.Session) error {
	delivered, err := s.detachForMove()
	if err != nil {
		return ErrNotMoved
	}
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	c, peerDelivered, err := sess.Resume(ctx, s.token, delivered)
	var no *mux.ResumeRefusal
	if errors.As(err, &no) && no.Code == mux.CodeNoStream && !s.wasAnswered() {
		// The open was lost with its session, before or after the peer
		// read it: the peer holds nothing yet, so open it again; the
		// whole replay buffer goes with it.
		c, err = sess.OpenResumable(ctx, s.service, s.source, s.token)
		peerDelivered = 0
	}
	if err != nil {
		if errors.As(err, &no) {
			s.mu.Lock()
			ended := s.err != nil
			s.mu.Unlock()
			if ended {
				// Reset here during the resume, and the peer's end
				// with it (the reset reached it first).
				return ErrNotMoved
			}
			s.t.peerLost.Add(1)
			return s.fail(fmt.Errorf("%w: %s", ErrPeerLost, no.Msg))
		}
		return err // the new session failed as well: still suspended, for the next
	}
	return s.moveTo(c, peerDelivered)
}

// suspended is told of a stream that lost its carrier: one we opened
// moves at once if its peer has a newer session of its class.
func (t *Table) suspended(s *Stream) {
	if !s.opener {
		return
	}
	t.mu.Lock()
	from := s.class
	sess := t.current[sessionKey{s.peerKey, from}]
	t.mu.Unlock()
	if sess != nil && !sess.Closed() {
		t.spawn(func() { t.moveAll(sess, []*Stream{s}) })
		return
	}
	if from != s.home {
		t.spawn(func() { s.goHomeAfter(from) })
	}
}

// homeAfter is how long a stream moved away from its home class waits
// for a session of its class before it resumes at home: longer than a
// lane's reconnect, and than the loss of every session at once takes to
// be noticed on all of them (a resume tried at home meanwhile would fail
// on a session that is going too).
const homeAfter = 2 * time.Second

// goHomeAfter puts a stream suspended on class from back on its home
// class once from has had no session up for homeAfter, and resumes it
// there, watched again for turning heavy (it moves on once heavy). It
// tries again while neither class has a session up.
func (s *Stream) goHomeAfter(from string) {
	for {
		select {
		case <-time.After(homeAfter):
		case <-s.ctx.Done():
			return
		}
		sess, retry := s.goHome(from)
		if sess != nil {
			s.t.moveAll(sess, []*Stream{s})
			return
		}
		if !retry {
			return
		}
	}
}

// goHome moves a stream still suspended on class from to its home class
// and returns the home class's session; retry says it is still suspended
// there with neither class up. Under rmu: a resume in progress decides
// first.
func (s *Stream) goHome(from string) (home *mux.Session, retry bool) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.class != from || (s.carrier != nil && !s.carrier.SessionClosed()) {
		return nil, false
	}
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	if up := s.t.current[sessionKey{s.peerKey, from}]; up != nil && !up.Closed() {
		return nil, false // its SessionUp moves it there
	}
	home = s.t.current[sessionKey{s.peerKey, s.home}]
	if home == nil || home.Closed() {
		return nil, true
	}
	s.class = s.home
	s.onHeavy, s.rate, s.waited, s.rateSince = s.heavyHook, 0, 0, time.Now()
	return home, false
}

// snapshot lists the streams; close also stops the table moving or taking
// any.
func (t *Table) snapshot(close bool) []*Stream {
	t.mu.Lock()
	defer t.mu.Unlock()
	if close {
		t.closed = true
	}
	list := make([]*Stream, 0, len(t.streams))
	for _, s := range t.streams {
		list = append(list, s)
	}
	return list
}

// Stats are the table's counts, for metrics and status.
type Stats struct {
	Streams, Suspended int
	ReplayBytes        int64 // held in replay buffers now
	Resumed            uint64
	Expired            uint64
	PeerLost           uint64 // ended because the peer no longer held them
	Refused            uint64 // the peer's resumes we refused
	ReplayedBytes      uint64 // resent after resumes
	Moved              uint64 // live streams moved to another session (Move)
	Evicted            uint64 // idle streams reset to make room under Config.MaxPeerStreams
}

// Stats counts the streams now.
func (t *Table) Stats() Stats {
	list := t.snapshot(false)
	st := Stats{Streams: len(list), Resumed: t.resumed.Load(), Expired: t.expired.Load(), PeerLost: t.peerLost.Load(),
		Refused: t.refused.Load(), ReplayedBytes: t.replayed.Load(), Moved: t.moved.Load(), Evicted: t.evicted.Load()}
	for _, s := range list {
		s.mu.Lock()
		if s.waitsForSessionLocked() {
			st.Suspended++
		}
		st.ReplayBytes += int64(s.replay.len())
		s.mu.Unlock()
	}
	return st
}

// Close stops moving streams and waits for the moves in flight. Streams
// end with their pipes.
func (t *Table) Close() {
	list := t.snapshot(true)
	for _, s := range list {
		s.cancel() // a move waiting for its answer gives up
	}
	t.wg.Wait()
}
