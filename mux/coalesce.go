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
// data header with length > 0 is always followed by exactly that body, from
// the one goroutine (sendLoop) that writes.
type frameJoiner struct {
	net.Conn
	hdr     [yamuxHeaderSize]byte
	held    bool
	joined  []byte
	maxBody int
}

const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	// Bodies up to this size are joined with their header; above it the
	// copy costs more than the separate 12-byte record saves.
	maxJoinedBody = 64 * 1024
)

func newFrameJoiner(c net.Conn) *frameJoiner {
	return &frameJoiner{Conn: c, maxBody: maxJoinedBody}
}

func (f *frameJoiner) Write(p []byte) (int, error) {
	if f.held {
		f.held = false
		f.joined = append(append(f.joined[:0], f.hdr[:]...), p...)
		if _, err := f.Conn.Write(f.joined); err != nil {
			return 0, err
		}
		if cap(f.joined) > yamuxHeaderSize+f.maxBody {
			f.joined = nil // don't pin an unusually large buffer
		}
		return len(p), nil
	}
	if len(p) == yamuxHeaderSize && p[1] == yamuxTypeData {
		if n := binary.BigEndian.Uint32(p[8:]); n > 0 && int(n) <= f.maxBody {
			copy(f.hdr[:], p)
			f.held = true
			return len(p), nil
		}
	}
	return f.Conn.Write(p)
}
