package mux

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// PeerDraining is closed once the peer has said it is draining: it accepts
// no new streams here, and the ones open are finishing.
func (s *Session) PeerDraining() <-chan struct{} { return s.peerDraining }

func (s *Session) markPeerDraining() {
	s.peerDrainingOnce.Do(func() { close(s.peerDraining) })
}

// PeerReplaced is closed once the peer has said that a newer session from
// the same certificate replaced this one (see NotifyReplaced). It is
// closed before PeerDraining when the peer sends both.
func (s *Session) PeerReplaced() <-chan struct{} { return s.peerReplaced }

func (s *Session) markPeerReplaced() {
	s.peerReplacedOnce.Do(func() { close(s.peerReplaced) })
}

// NotifyReplaced tells the peer that a newer session from its certificate
// has replaced this one (the server says it before draining the old): a
// client that did not open the new one (another host with the same key)
// then backs off instead of taking the place back at once. It may block
// up to OpenTimeout on a wedged connection: call it off any accept path.
func (s *Session) NotifyReplaced() { s.sendControl(replacedNotice) }

// Control messages, 4 bytes big endian each, on our control stream. An
// older peer read every value as the ID of a stream to abort; neither
// value is ever a yamux stream ID, so it ignores both.
const (
	// drainNotice: "I am draining". yamux never uses stream ID 0.
	drainNotice = 0
	// replacedNotice: "a newer session from your certificate replaced this
	// one". yamux refuses to open an ID above MaxUint32-2.
	replacedNotice = 0xFFFFFFFF
	// refusalNotice: "I am ending this session for the reason that
	// follows" (a refusal in its wire form).
	refusalNotice = 0xFFFFFFFE
	// deliveryNotice: "of stream ID (4 bytes) I have delivered N (8
	// bytes) to my application". Sent only to a peer with CapResume.
	deliveryNotice = 0xFFFFFFFD
	// heavyNotice: "stream ID (4 bytes), which you opened, is a transfer
	// toward you that keeps my writes waiting". Sent only to a peer with
	// CapHeavy.
	heavyNotice = 0xFFFFFFFC
)

// EndWithRefusal tells the peer why we are ending the session (its
// certificate expired, a reload revoked it), waits up to wait for the peer
// to close it (so the words arrive before our close), then closes it with
// reason. It blocks for at most a few seconds more than wait.
func (s *Session) EndWithRefusal(code RefusalCode, msg string, wait time.Duration, reason error) {
	if reason != nil {
		// The peer's close, which we wait for, ends the session for our
		// reason. Set before the notice goes out: the peer may close
		// before our write returns.
		s.reason.CompareAndSwap(nil, &reason)
	}
	var note [4]byte
	binary.BigEndian.PutUint32(note[:], refusalNotice)
	s.ctlMu.Lock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(min(s.cfg.OpenTimeout, 5*time.Second)))
	_, err := s.ctl.Write(append(note[:], encodeRefusal(code, msg)...))
	s.ctlMu.Unlock()
	if err == nil {
		t := time.NewTimer(wait)
		select {
		case <-s.closed:
		case <-t.C:
		}
		t.Stop()
	}
	s.CloseWithReason(reason)
}

// sendControl writes one control message.
func (s *Session) sendControl(m uint32) {
	var msg [4]byte
	binary.BigEndian.PutUint32(msg[:], m)
	s.ctlMu.Lock()
	defer s.ctlMu.Unlock()
	_ = s.ctl.SetWriteDeadline(time.Now().Add(s.cfg.OpenTimeout))
	if _, err := s.ctl.Write(msg[:]); err != nil {
		s.log.Debug("cannot send control message", "message", m, "error", err)
	}
}

// readControl serves the peer's control stream until the session ends.
// Values it does not know are ignored (a newer peer's notices). While it
// waits, the session's receive loop handles whole notices as it receives
// them (takeControl): a delivery notice every MiB of a transfer would
// otherwise wake this goroutine each time.
func (s *Session) readControl(ctl *yamux.Stream) {
	var msg [4]byte
	for {
		if setDeliver(ctl, s.takeControl) {
			_, _ = ctl.Read(nil) // returns once takeControl left bytes, or at the end
			setDeliver(ctl, nil)
		}
		if _, err := io.ReadFull(ctl, msg[:]); err != nil {
			return
		}
		switch m := binary.BigEndian.Uint32(msg[:]); m {
		case drainNotice:
			s.markPeerDraining()
		case replacedNotice:
			s.markPeerReplaced()
		case deliveryNotice, heavyNotice:
			if !s.cfg.Resumable {
				return // we never announced them: a peer that sends them is confused
			}
			var body [12]byte
			n := streamNoticeSize(m) - 4
			if _, err := io.ReadFull(ctl, body[:n]); err != nil {
				return
			}
			s.streamNotice(m, body[:n])
		case refusalNotice:
			// The refusal follows at once; a peer that stalls in the
			// middle of one has said enough.
			_ = ctl.SetReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
			err := readRefusal(ctl)
			var refused *RefusedError
			if errors.As(err, &refused) {
				s.log.Debug("peer ends the session", "code", refused.Code, "reason", refused.Msg)
				s.finish(refused)
			} else {
				s.finish(fmt.Errorf("peer ends the session without a readable reason: %w", err))
			}
			return
		}
	}
}

// takeControl handles the whole control messages at the front of p, a
// frame of the control stream, on the session's receive loop (it must not
// block: the handlers it calls do not), and returns how many bytes they
// took. It stops at anything else (a refusal, a value it does not know,
// a notice never announced, part of a message): those bytes and all that
// follows wait for readControl, in order.
func (s *Session) takeControl(p []byte) int {
	n := 0
	for len(p)-n >= 4 {
		switch m := binary.BigEndian.Uint32(p[n:]); m {
		case drainNotice:
			s.markPeerDraining()
			n += 4
		case replacedNotice:
			s.markPeerReplaced()
			n += 4
		case deliveryNotice, heavyNotice:
			size := streamNoticeSize(m)
			if !s.cfg.Resumable || len(p)-n < size {
				return n
			}
			s.streamNotice(m, p[n+4:n+size])
			n += size
		default:
			return n
		}
	}
	return n
}

// streamNoticeSize is the length of a notice that names a stream: its
// type, the stream ID and, for a delivery notice, the count.
func streamNoticeSize(m uint32) int {
	if m == deliveryNotice {
		return 16
	}
	return 8
}

// streamNotice passes a delivery or heavy notice (body: what follows its
// type) to the stream's handler, if it has one.
func (s *Session) streamNotice(m uint32, body []byte) {
	id := binary.BigEndian.Uint32(body)
	s.live.Lock()
	delivered, heavy := s.onDelivered[id], s.onPeerHeavy[id]
	s.live.Unlock()
	switch {
	case m == deliveryNotice && delivered != nil:
		delivered(binary.BigEndian.Uint64(body[4:]))
	case m == heavyNotice && heavy != nil:
		heavy()
	}
}

// explain replaces yamux's generic shutdown error with why the session ended.
func (s *Session) explain(err error) error {
	if errors.Is(err, yamux.ErrRemoteGoAway) {
		s.markPeerDraining()
		return ErrDraining
	}
	if errors.Is(err, yamux.ErrSessionShutdown) {
		if r := s.Err(); r != nil {
			return fmt.Errorf("session closed: %w", r)
		}
	}
	return err
}
