package yamux

// Tests for the tunnelworks patch "receive buffer in chunks" (see
// PATCHED.md, patch 11).

import (
	"bytes"
	"io"
	"testing"
)

// Writes and reads of every size across the chunk boundaries: every byte
// comes out once, in order; a small first write takes a small chunk; a
// drained buffer holds no chunk.
func TestRecvBuffer_ChunksInOrder(t *testing.T) {
	b := newRecvBuffer(newChunkPools())
	b.Write(pattern(64))
	if got := b.Cap(); got != smallChunk {
		t.Fatalf("64 bytes buffered hold %d bytes of chunks, want one small chunk (%d)", got, smallChunk)
	}
	var want, got bytes.Buffer
	want.Write(pattern(64))
	sizes := []int{1, smallChunk - 65, smallChunk, smallChunk + 1, largeChunk, 100_000, 7, largeChunk - 1, 3 * largeChunk}
	reads := []int{1, 777, 40_000, smallChunk, 3}
	src := pattern(4 * largeChunk)
	for i, n := range sizes {
		p := src[i*13 : i*13+n]
		want.Write(p)
		if i%2 == 0 {
			b.Write(p)
		} else if m, err := b.readFrom(bytes.NewReader(p), n); m != n || err != nil {
			t.Fatalf("readFrom %d bytes: %d, %v", n, m, err)
		}
		// Read part of what is there, so writes land behind a partly read head.
		buf := make([]byte, reads[i%len(reads)])
		m := b.Read(buf)
		got.Write(buf[:m])
		if b.Len() != want.Len()-got.Len() {
			t.Fatalf("after write %d: Len %d, want %d", i, b.Len(), want.Len()-got.Len())
		}
	}
	buf := make([]byte, 5000)
	for b.Len() > 0 {
		m := b.Read(buf)
		if m == 0 {
			t.Fatalf("Read returned nothing with %d bytes buffered", b.Len())
		}
		got.Write(buf[:m])
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("read %d bytes, not the %d written, in order", got.Len(), want.Len())
	}
	if b.Cap() != 0 || len(b.chunks) != 0 {
		t.Fatalf("drained buffer holds %d chunks (%d bytes)", len(b.chunks), b.Cap())
	}
	// A short source: the bytes read count and stay, the error is returned.
	if m, err := b.readFrom(bytes.NewReader(pattern(10)), 20); m != 10 || err == nil {
		t.Fatalf("readFrom a 10-byte source for 20 bytes: %d, %v; want 10 and an error", m, err)
	}
	if b.Len() != 10 {
		t.Fatalf("Len %d after a short readFrom, want 10", b.Len())
	}
}

// A peer (upstream yamux may send a frame as large as the window) sends
// frames larger than a chunk, and tiny ones, to a stream nobody reads
// yet: all of it is buffered, read back whole and in order, and the
// drained stream holds no chunk.
func TestStream_RecvBufferFramesLargerThanChunks(t *testing.T) {
	c, s := tcpPair(t)
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	go func() { _, _ = io.Copy(io.Discard, c) }() // the server's ACK and window updates

	var sent bytes.Buffer
	src := pattern(200_000)
	frames := []int{100_000, 1, largeChunk + 3, 5, smallChunk}
	hdr := header(make([]byte, headerSize))
	for i, n := range frames {
		flags := uint16(0)
		if i == 0 {
			flags = flagSYN
		}
		hdr.encode(typeData, flags, 1, uint32(n))
		body := src[i : i+n]
		if _, err := c.Write(append(append([]byte{}, hdr...), body...)); err != nil {
			t.Fatal(err)
		}
		sent.Write(body)
	}
	st, err := server.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every frame buffered", func() bool { return buffered(st) == sent.Len() })

	var got bytes.Buffer
	buf := make([]byte, 9_000)
	for got.Len() < sent.Len() {
		n, err := st.Read(buf)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", got.Len(), err)
		}
		got.Write(buf[:n])
	}
	if !bytes.Equal(got.Bytes(), sent.Bytes()) {
		t.Fatalf("read %d bytes, not the %d sent, in order", got.Len(), sent.Len())
	}
	st.recvLock.Lock()
	held := st.recvBuf.Cap()
	st.recvLock.Unlock()
	if held != 0 {
		t.Fatalf("a drained stream holds %d bytes of chunks", held)
	}
}
