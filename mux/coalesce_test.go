package mux

import (
	"bytes"
	"net"
	"testing"
)

// recordingConn records each Write as one element.
type recordingConn struct {
	net.Conn
	writes [][]byte
}

func (r *recordingConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

func frameHeader(typ byte, length uint32) []byte {
	return []byte{0, typ, 0, 0, 0, 0, 0, 1, byte(length >> 24), byte(length >> 16), byte(length >> 8), byte(length)}
}

func TestFrameJoiner(t *testing.T) {
	rec := &recordingConn{}
	f := newFrameJoiner(rec)
	small := []byte("hello")
	f.Write(frameHeader(yamuxTypeData, 5))
	f.Write(small)
	f.Write(frameHeader(1, 1000)) // window update: alone
	big := make([]byte, maxJoinedBody+1)
	f.Write(frameHeader(yamuxTypeData, uint32(len(big))))
	f.Write(big)
	f.Write(frameHeader(yamuxTypeData, 0)) // data header without body (FIN): alone
	if len(rec.writes) != 5 {
		t.Fatalf("%d writes, want 5", len(rec.writes))
	}
	if !bytes.Equal(rec.writes[0], append(frameHeader(yamuxTypeData, 5), small...)) {
		t.Fatal("small frame not joined")
	}
	if len(rec.writes[1]) != 12 || len(rec.writes[2]) != 12 || len(rec.writes[3]) != len(big) || len(rec.writes[4]) != 12 {
		t.Fatal("frames split wrongly")
	}
}

// A stream's SYN waits for the frame behind it (our stream header): one
// write for both. Other window updates still go alone.
func TestFrameJoinerHoldsSYN(t *testing.T) {
	rec := &recordingConn{}
	f := newFrameJoiner(rec)
	syn := frameHeader(yamuxTypeWindow, 1<<20)
	syn[3] = yamuxFlagSYN
	f.Write(syn)
	f.Write(frameHeader(yamuxTypeData, 3))
	f.Write([]byte("hdr"))
	f.Write(frameHeader(yamuxTypeWindow, 1000))
	if len(rec.writes) != 2 {
		t.Fatalf("%d writes, want 2", len(rec.writes))
	}
	want := append(append(syn, frameHeader(yamuxTypeData, 3)...), "hdr"...)
	if !bytes.Equal(rec.writes[0], want) {
		t.Fatalf("SYN, header and body not joined: % x", rec.writes[0])
	}
}
