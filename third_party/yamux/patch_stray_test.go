package yamux

// Tests for the tunnelworks patch "frames for missing streams are counted,
// not logged" (see PATCHED.md).

import (
	"io"
	"strings"
	"testing"
	"time"
)

// A peer speaking raw yamux frames sends data and window updates for
// streams that do not exist: the session counts them all, logs one line,
// and stays up.
func TestSession_StrayFramesCounted(t *testing.T) {
	peer, s := tcpPair(t)
	conf := patchConf()
	log := captureLogs(conf)
	server, err := Server(s, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	const frames = 100
	body := make([]byte, 100)
	hdr := header(make([]byte, headerSize))
	for i := 0; i < frames; i++ {
		id := uint32(2*i + 1) // client-side ids, never opened
		hdr.encode(typeData, 0, id, uint32(len(body)))
		if _, err := peer.Write(append(append([]byte(nil), hdr...), body...)); err != nil {
			t.Fatal(err)
		}
		hdr.encode(typeWindowUpdate, 0, id, 1000)
		if _, err := peer.Write(hdr); err != nil {
			t.Fatal(err)
		}
	}
	// A ping after them: its reply shows the server handled every frame.
	hdr.encode(typePing, flagSYN, 0, 42)
	if _, err := peer.Write(hdr); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(patchBound))
	reply := header(make([]byte, headerSize))
	if _, err := io.ReadFull(peer, reply); err != nil {
		t.Fatalf("ping reply: %v", err)
	}
	if reply.MsgType() != typePing || reply.Flags() != flagACK || reply.Length() != 42 {
		t.Fatalf("reply %v, want ping ack 42", reply)
	}
	if n := server.StrayFrames(); n != 2*frames {
		t.Errorf("counted %d stray frames, want %d", n, 2*frames)
	}
	if l := log.logs(); len(l) != 1 || !strings.Contains(l[0], "Discarding data for stream: 1") {
		t.Errorf("server logged %d lines, want the first stray frame only: %q", len(l), l)
	}
	if server.IsClosed() {
		t.Error("session closed")
	}
}
