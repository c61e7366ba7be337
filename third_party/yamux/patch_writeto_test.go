package yamux

// Tests for the tunnelworks patch "WriteBufferedTo" (patch 14, see
// PATCHED.md).

import (
	"bytes"
	"io"
	"testing"
)

// TestStream_WriteBufferedTo: a reader that reads a little, then passes
// the bytes on with WriteBufferedTo, gets every byte in order, at most
// maxDetach per call, then io.EOF; the stream holds no chunks afterwards.
func TestStream_WriteBufferedTo(t *testing.T) {
	c, s := tcpPair(t)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	cs, ss := openPair(t, client, server)

	data := pattern(1 << 20)
	go func() {
		_, _ = cs.Write(data)
		_ = cs.Close()
	}()
	// A Read first, as the agents' pipe reads a stream's first bytes: the
	// rest starts inside a chunk.
	var got bytes.Buffer
	first := make([]byte, 1000)
	if _, err := io.ReadFull(ss, first); err != nil {
		t.Fatal(err)
	}
	got.Write(first)
	calls := 0
	for {
		n, rerr, werr := ss.WriteBufferedTo(&got, nil)
		if werr != nil {
			t.Fatalf("write: %v", werr)
		}
		if n > maxDetach {
			t.Fatalf("%d bytes in one call, over %d", n, maxDetach)
		}
		if n > 0 {
			calls++
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			t.Fatalf("read: %v", rerr)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("got %d bytes, not the %d written", got.Len(), len(data))
	}
	if calls < len(data)/maxDetach {
		t.Fatalf("%d calls for %d bytes: more than %d per call", calls, len(data), maxDetach)
	}
	if n := server.ReceiveBuffered(); n != 0 {
		t.Fatalf("%d bytes still buffered", n)
	}
}

// TestStream_WriteBufferedToCommit: commit sees the byte count before
// anything is written; refusing drops the bytes (0, no error), and the
// next call writes only what came after.
func TestStream_WriteBufferedToCommit(t *testing.T) {
	client, server, _ := recordedPair(t)
	cs, ss := openPair(t, client, server)
	if _, err := cs.Write([]byte("dropped")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bytes buffered", func() bool { return server.ReceiveBuffered() == len("dropped") })
	var out bytes.Buffer
	var told int
	n, rerr, werr := ss.WriteBufferedTo(&out, func(k int) bool { told = k; return false })
	if n != 0 || rerr != nil || werr != nil || out.Len() != 0 || told != len("dropped") {
		t.Fatalf("refused: %d, %v, %v, wrote %q, told %d", n, rerr, werr, out.String(), told)
	}
	if _, err := cs.Write([]byte("kept")); err != nil {
		t.Fatal(err)
	}
	n, rerr, werr = ss.WriteBufferedTo(&out, func(int) bool { return true })
	if n != len("kept") || rerr != nil || werr != nil || out.String() != "kept" {
		t.Fatalf("accepted: %d, %v, %v, wrote %q", n, rerr, werr, out.String())
	}
}
