package mux

import (
	"encoding/binary"
	"net"
)

// yamux writes every frame as two conn.Write calls, header then body: on a
// TLS connection that is two records and two syscalls per frame, and a
// small message pays twice. frameJoiner holds back the 12-byte header of a
// data frame and sends it with the body in one Write, so a small message is
// one TLS record and one syscall.
//
// It relies on yamux's framing (v0.1.2, a frozen protocol): header =
// version(1) type(1) flags(2) stream(4) length(4); type 0 is data, and a
// data header with length > 0 is always followed by exactly that body: our
// copy of yamux (third_party/yamux) writes a frame's header and body while
// holding its write slot, from sendLoop or from the writing stream.
//
// It also holds a stream-opening window update (flag SYN) for the frame
// after it: our Open always writes the stream header right behind the SYN,
// so the two leave in one record and one syscall, and the peer wakes once
// per new stream instead of twice.
type frameJoiner struct {
	net.Conn
	held    []byte // headers waiting for what follows them
	bodyDue bool   // held ends with a data header whose body is next
	joined  []byte
	maxBody int
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	yamuxTypeWindow = 1
	yamuxFlagSYN    = 1
	maxHeldHeaders  = 4 * yamuxHeaderSize
	// Bodies up to this size are joined with their header; above it the
	// copy costs more than the separate 12-byte record saves.
	maxJoinedBody = 64 * 1024
)

func newFrameJoiner(c net.Conn) *frameJoiner {
	return &frameJoiner{Conn: c, maxBody: maxJoinedBody, held: make([]byte, 0, maxHeldHeaders)}
}

func (f *frameJoiner) Write(p []byte) (int, error) {
	if !f.bodyDue && len(p) == yamuxHeaderSize && len(f.held)+yamuxHeaderSize <= maxHeldHeaders {
		switch {
		case p[1] == yamuxTypeData:
			if n := binary.BigEndian.Uint32(p[8:]); n > 0 && int(n) <= f.maxBody {
				f.held = append(f.held, p...)
				f.bodyDue = true
				return len(p), nil
			}
		case p[1] == yamuxTypeWindow && binary.BigEndian.Uint16(p[2:])&yamuxFlagSYN != 0:
			f.held = append(f.held, p...)
			return len(p), nil
		}
	}
	if len(f.held) == 0 {
		return f.Conn.Write(p)
	}
	f.joined = append(append(f.joined[:0], f.held...), p...)
	f.held, f.bodyDue = f.held[:0], false
	if _, err := f.Conn.Write(f.joined); err != nil {
		return 0, err
	}
	if cap(f.joined) > maxHeldHeaders+f.maxBody {
		f.joined = nil // don't pin an unusually large buffer
	}
	return len(p), nil
}
