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
	f := newFrameJoiner(rec, nil)
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
	f := newFrameJoiner(rec, nil)
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

// pairRecorder is a recordingConn that also takes pairs, recording each
// as one write of both, and the body's first byte's address.
type pairRecorder struct {
	recordingConn
	pairs      int
	pairBodies []*byte
}

func (r *pairRecorder) WritePair(a, b []byte) (int, error) {
	r.pairs++
	r.pairBodies = append(r.pairBodies, &b[0])
	r.writes = append(r.writes, append(bytes.Clone(a), b...))
	return len(a) + len(b), nil
}

// With a pairWriter, a body too large to share one TLS record with its
// header goes with it as a pair, not copied; smaller bodies are joined
// as before, and a held SYN goes with the pair's header.
func TestFrameJoinerPairsLargeBodies(t *testing.T) {
	rec := &pairRecorder{}
	f := newFrameJoiner(rec, rec)
	small := make([]byte, maxPairJoinedBody)
	f.Write(frameHeader(yamuxTypeData, uint32(len(small))))
	f.Write(small)
	large := make([]byte, maxPairJoinedBody+1)
	f.Write(frameHeader(yamuxTypeData, uint32(len(large))))
	f.Write(large)
	syn := frameHeader(yamuxTypeWindow, 1<<20)
	syn[3] = yamuxFlagSYN
	f.Write(syn)
	bulk := make([]byte, 32<<10)
	f.Write(frameHeader(yamuxTypeData, uint32(len(bulk))))
	f.Write(bulk)
	if len(rec.writes) != 3 || rec.pairs != 2 {
		t.Fatalf("%d writes, %d of them pairs; want 3 and 2", len(rec.writes), rec.pairs)
	}
	if rec.pairBodies[0] != &large[0] || rec.pairBodies[1] != &bulk[0] {
		t.Fatal("a paired body was copied")
	}
	if !bytes.Equal(rec.writes[0], append(frameHeader(yamuxTypeData, uint32(len(small))), small...)) {
		t.Fatal("a body that fits one record with its header was not joined")
	}
	if want := append(append(syn, frameHeader(yamuxTypeData, uint32(len(bulk)))...), bulk...); !bytes.Equal(rec.writes[2], want) {
		t.Fatal("the held SYN did not go with the pair")
	}
}

// nowPair is a pairRecorder whose socket has room or not.
type nowPair struct {
	pairRecorder
	room bool
}

func (n *nowPair) WritableNow() bool { return n.room }

// The joiner passes on its connection's WritableNow (yamux writes a
// window update from the goroutine that makes it only when it is true,
// patch 21); over a connection that cannot tell, it says no.
func TestFrameJoinerWritableNow(t *testing.T) {
	for _, room := range []bool{true, false} {
		c := &nowPair{room: room}
		if got := newFrameJoiner(c, c).WritableNow(); got != room {
			t.Errorf("WritableNow %v over a connection saying %v", got, room)
		}
	}
	rec := &pairRecorder{}
	if newFrameJoiner(rec, rec).WritableNow() || newFrameJoiner(rec, nil).WritableNow() {
		t.Error("WritableNow true over a connection that cannot tell")
	}
}
