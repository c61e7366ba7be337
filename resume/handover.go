package resume

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/tunnelworks/tunnel/mux"
)

// A handover passes the streams of a running agent to its successor (a new
// process, the same or a newer binary): each stream's state and replay
// buffer, and its local connection. The old process calls Freeze, waits
// for its pipes to return, then Export; the successor makes a table with
// the old Instance and Restores each stream, suspended, and pipes it
// again; the streams resume over the successor's sessions as after a cut.
// The peer sees the same instance, so it keeps them.

// ErrHandedOver ends a pipe whose stream went to the successor process.
// Nothing is closed or reset: the local connection lives on there.
var ErrHandedOver = errors.New("stream handed over to the successor process")

// Local wraps a stream's local connection for the pipe: once the stream
// is frozen for a handover, the pipe's close, half-close and reset no
// longer touch the socket (a half-close or SO_LINGER acts on the socket
// the successor holds, not only on this process's descriptor). Freeze
// also interrupts the pipe's read of it.
func (s *Stream) Local(c net.Conn) net.Conn {
	l := &localConn{Conn: c, s: s}
	s.mu.Lock()
	s.local2 = l
	s.mu.Unlock()
	return l
}

type localConn struct {
	net.Conn
	s *Stream
}

func (l *localConn) frozen() bool {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	return l.s.frozen
}

// Read reports the interruption by Freeze as what it is.
func (l *localConn) Read(p []byte) (int, error) {
	n, err := l.Conn.Read(p)
	if err != nil && l.frozen() {
		err = ErrHandedOver
	}
	return n, err
}

func (l *localConn) Close() error {
	if l.frozen() {
		return nil
	}
	return l.Conn.Close()
}

func (l *localConn) CloseWrite() error {
	if l.frozen() {
		return nil
	}
	if cw, ok := l.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return l.Conn.Close()
}

// Abort resets the connection (TCP RST), unless frozen.
func (l *localConn) Abort() error {
	if l.frozen() {
		return nil
	}
	if tc, ok := l.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return l.Conn.Close()
}

// SyscallConn lets the pipe wait for data without a buffer.
func (l *localConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := l.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

// Freeze stops every stream for a handover: carriers are dropped (their
// sessions end with this process and the peer suspends its side), reads
// return ErrHandedOver, writes still land in the replay buffer (the pipe
// may hold bytes it already read from the local socket), local reads are
// interrupted, and Close and Abort touch nothing. Nothing moves after it.
func (t *Table) Freeze() {
	list := t.snapshot(true)
	for _, s := range list {
		s.rmu.Lock() // no move in flight
		s.mu.Lock()
		s.frozen = true
		s.cancel() // a write waiting for budget goes on without it
		if s.carrier != nil {
			s.detachLocked()
		}
		if s.expiry != nil {
			s.expiry.Stop()
		}
		if s.ackTimer != nil {
			s.ackTimer.Stop()
		}
		l := s.local2
		s.cond.Broadcast()
		s.mu.Unlock()
		s.rmu.Unlock()
		if l != nil {
			_ = l.Conn.SetReadDeadline(time.Unix(1, 0))
		}
	}
	t.wg.Wait()
}

// StreamState is one stream as it passes to the successor.
type StreamState struct {
	Token        mux.Token     `json:"token"`
	Opener       bool          `json:"opener"`
	PeerKey      string        `json:"peer_key"`
	Peer         string        `json:"peer"`
	PeerInstance string        `json:"peer_instance"`
	Class        string        `json:"class"`
	Service      string        `json:"service"`
	Source       string        `json:"source"`
	Window       time.Duration `json:"window"`
	MaxReplay    int           `json:"max_replay"`
	Answered     bool          `json:"answered"`
	Acked        uint64        `json:"acked"`
	Sent         uint64        `json:"sent"`
	FinSent      bool          `json:"fin_sent"`
	Closing      bool          `json:"closing"`
	Delivered    uint64        `json:"delivered"`
	FinDelivered bool          `json:"fin_delivered"`
	Replay       []byte        `json:"replay"` // [Acked, Sent)
}

// Handoff is a frozen stream: its state, and its local connection (whose
// descriptor the successor inherits).
type Handoff struct {
	State StreamState
	Local net.Conn // as given to Local; nil if none
}

// State is a frozen table: its instance and every stream.
type State struct {
	Instance string        `json:"instance"`
	Streams  []StreamState `json:"streams"`
}

// Marshal encodes the state for the successor.
func (st State) Marshal() ([]byte, error) { return json.Marshal(st) }

// UnmarshalState decodes what Marshal encoded.
func UnmarshalState(b []byte) (State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("read handed-over stream state: %w", err)
	}
	return st, nil
}

// Export returns every frozen stream, once their pipes have returned.
// Streams that already ended are left out.
func (t *Table) Export() (string, []Handoff) {
	list := t.snapshot(false)
	out := make([]Handoff, 0, len(list))
	for _, s := range list {
		s.mu.Lock()
		if !s.frozen || s.done {
			s.mu.Unlock()
			continue
		}
		st := StreamState{
			Token: s.token, Opener: s.opener, PeerKey: s.peerKey, Peer: s.peer, PeerInstance: s.inst, Class: s.class,
			Service: s.service, Source: s.source, Window: s.window, MaxReplay: s.maxReplay, Answered: s.answered,
			Acked: s.acked, Sent: s.sent, FinSent: s.finSent, Closing: s.closing, Delivered: s.delivered, FinDelivered: s.finDelivered,
		}
		for _, b := range s.replay.from(nil, min(s.acked, s.sent), min(s.acked, s.sent), s.sent) {
			st.Replay = append(st.Replay, b...)
		}
		var local net.Conn
		if s.local2 != nil {
			local = s.local2.Conn
		}
		s.mu.Unlock()
		out = append(out, Handoff{State: st, Local: local})
	}
	return t.instance, out
}

// Restore takes a stream handed over by the predecessor: suspended, its
// resume window starting now. local is its local connection, inherited;
// the caller pipes the returned stream to Local(local) as for a new one.
func (t *Table) Restore(st StreamState, local net.Conn) (*Stream, error) {
	if uint64(len(st.Replay)) != st.Sent-min(st.Acked, st.Sent) || st.Acked > st.Sent+1 || st.Window <= 0 {
		return nil, errors.New("handed-over stream state is inconsistent")
	}
	s, err := t.restore(st, local)
	if err != nil {
		return nil, err
	}
	t.suspended(s) // moves at once if a session to its peer is up already
	return s, nil
}

func (t *Table) restore(st StreamState, local net.Conn) (*Stream, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, net.ErrClosed
	}
	if _, dup := t.streams[st.Token]; dup {
		return nil, errors.New("a stream with this token exists already")
	}
	b := t.budgets[st.PeerKey]
	if b == nil {
		b = &peerBudget{sem: newBudget(t.cfg.Budget)}
		t.budgets[st.PeerKey] = b
	}
	b.streams++
	// The replay buffer is counted without waiting: it was within bounds
	// in the predecessor, and must not be lost.
	budgeted := b.sem.TryAcquire(int64(len(st.Replay)))
	if !budgeted {
		t.log.Warn("handed-over replay buffer is over the peer's budget; taking it anyway", "peer", st.Peer)
	}
	s := t.makeStream(st.Token, st.Opener, st.PeerKey, st.Peer, st.PeerInstance, st.Service, nil, nil,
		Options{Window: st.Window, Class: st.Class, MaxReplay: st.MaxReplay}, b)
	if budgeted {
		s.held = int64(len(st.Replay))
	}
	s.source, s.answered = st.Source, st.Answered
	s.acked, s.sent, s.finSent, s.closing = st.Acked, st.Sent, st.FinSent, st.Closing
	s.written = min(st.Acked, st.Sent)
	s.delivered, s.finDelivered, s.notified = st.Delivered, st.FinDelivered, st.Delivered
	s.replay.push(st.Replay)
	if local != nil {
		s.local, s.remote = local.LocalAddr(), local.RemoteAddr()
	}
	t.streams[st.Token] = s
	s.mu.Lock()
	s.pauseLocked()
	s.mu.Unlock()
	return s, nil
}
