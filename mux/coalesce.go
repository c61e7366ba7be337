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
//
// A body too large for one TLS record with its header is not copied: the
// header and the body go to a pairWriter (the TLS connection), which seals
// them as records of their own and sends them in one system call. A 32 KiB
// body takes three records either way ([12][16384][16384] against
// [16384][16384][12] joined), and the copy was a memmove of every byte
// sent.
type frameJoiner struct {
	net.Conn
	now     nowWriter  // nil: never writable at once
	pair    pairWriter // nil: join every body
	held    []byte     // headers waiting for what follows them
	bodyDue bool       // held ends with a data header whose body is next
	joined  []byte
	maxBody int
}

// pairWriter writes two buffers as one Write would write them joined
// (transport/ssl.Conn).
type pairWriter interface {
	WritePair(a, b []byte) (int, error)
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
	// With a pairWriter, bodies up to this size are joined: header and
	// body fit one TLS record (16 KiB of data), one record fewer than
	// apart. Larger ones are written as a pair.
	maxPairJoinedBody = 16*1024 - maxHeldHeaders
)

// newFrameJoiner joins frames written to c; pair, if not nil, is c's
// way to write a header and a large body without joining them.
func newFrameJoiner(c net.Conn, pair pairWriter) *frameJoiner {
	now, _ := pair.(nowWriter)
	return &frameJoiner{Conn: c, now: now, pair: pair, maxBody: maxJoinedBody, held: make([]byte, 0, maxHeldHeaders)}
}

// nowWriter says whether a small write would leave without waiting
// (transport/ssl.Conn).
type nowWriter interface {
	WritableNow() bool
}

// WritableNow passes on the connection's: yamux's receive loop writes a
// window update itself when it is true (patch 21), and a write goes
// straight to the connection when no header is held, as an update's does.
func (f *frameJoiner) WritableNow() bool { return f.now != nil && f.now.WritableNow() }

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
	if f.pair != nil && f.bodyDue && len(p) > maxPairJoinedBody {
		held := f.held
		f.held, f.bodyDue = f.held[:0], false
		if _, err := f.pair.WritePair(held, p); err != nil {
			return 0, err
		}
		return len(p), nil
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
