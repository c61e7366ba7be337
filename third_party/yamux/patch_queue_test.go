package yamux

// Tests for the tunnelworks patch "a writer that finds the connection busy
// queues its frame" (patch 14, see PATCHED.md).

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
	"time"
)

// queuedStats is what the queue holds now: queued frames, their bytes,
// and writers waiting for their turn.
func (q *writeQueue) queuedStats() (frames, bytes, waiters int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, t := range q.waiting {
		if t.frame != nil {
			frames++
		} else {
			waiters++
		}
	}
	return frames, q.queuedBytes, waiters
}

// stallWith stalls rec's connection with a frame of stream a inside
// conn.Write. (Streams must be opened before: an open waits for its SYN
// to leave.)
func stallWith(t *testing.T, a *Stream, rec *frameRecorder) {
	t.Helper()
	rec.stall()
	go func() { _, _ = a.Write([]byte("stalled")) }()
	waitFor(t, "a frame inside conn.Write", func() bool { return rec.waiting.Load() == 1 })
}

// frameOrder is the recorded frames of stream id: "data" or "fin"/"rst".
func frameOrder(rec *frameRecorder, id uint32) []string {
	var out []string
	for _, f := range rec.recorded() {
		if f.stream != id {
			continue
		}
		if f.typ == typeData && f.length > 0 {
			out = append(out, "data")
		}
		switch {
		case f.flags&flagFIN != 0:
			out = append(out, "fin")
		case f.flags&flagRST != 0:
			out = append(out, "rst")
		}
	}
	return out
}

// TestWriteQueue_QueuedFrameIsACopy: while the connection is busy, a
// Write returns at once with its frame queued; the caller may reuse its
// buffer at once, the peer still gets the bytes written; Close sends the
// FIN only after the queued frame, and waits for it.
func TestWriteQueue_QueuedFrameIsACopy(t *testing.T) {
	client, server, rec := recordedPair(t)
	a, _ := openPair(t, client, server)
	b, bPeer := openPair(t, client, server)
	stallWith(t, a, rec)

	data := pattern(20 << 10)
	buf := append([]byte(nil), data...)
	wrote := make(chan error, 1)
	go func() { _, err := b.Write(buf); wrote <- err }()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(patchBound):
		t.Fatal("Write waited for the stalled connection: its frame was not queued")
	}
	for i := range buf {
		buf[i] = 0 // the caller's buffer is its own again
	}
	if frames, _, _ := client.writes.queuedStats(); frames != 1 {
		t.Fatalf("%d frames queued, want 1", frames)
	}

	closed := make(chan error, 1)
	go func() { closed <- b.Close() }()
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while its stream's frame was still queued", err)
	default:
	}

	got := make(chan []byte, 1)
	go func() { r, _ := io.ReadAll(bPeer); got <- r }()
	rec.release()
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
	if r := <-got; !bytes.Equal(r, data) {
		t.Fatalf("peer read %d bytes, not the %d written (a queued frame must not alias the caller's buffer)", len(r), len(data))
	}
	if order := frameOrder(rec, b.StreamID()); len(order) != 2 || order[0] != "data" || order[1] != "fin" {
		t.Fatalf("frames of the stream on the wire: %v, want [data fin]", order)
	}
}

// TestWriteQueue_ResetFollowsQueuedData: Reset does not wait for a
// stalled connection, and its RST still leaves after the stream's queued
// frames; the peer's read ends with the reset (never a clean EOF).
func TestWriteQueue_ResetFollowsQueuedData(t *testing.T) {
	client, server, rec := recordedPair(t)
	a, _ := openPair(t, client, server)
	b, bPeer := openPair(t, client, server)
	stallWith(t, a, rec)
	data := pattern(10 << 10)
	if _, err := b.Write(data); err != nil {
		t.Fatal(err)
	}
	reset := make(chan error, 1)
	go func() { reset <- b.Reset() }()
	select {
	case err := <-reset:
		if err != nil {
			t.Fatalf("reset: %v", err)
		}
	case <-time.After(patchBound):
		t.Fatal("Reset waited for the stalled connection")
	}

	type result struct {
		data []byte
		err  error
	}
	got := make(chan result, 1)
	go func() { r, err := io.ReadAll(bPeer); got <- result{r, err} }()
	// Time for the RST to be queued, were it not held for the data.
	time.Sleep(50 * time.Millisecond)
	rec.release()
	r := <-got // a reset stream drops what it had not read: the data may be gone
	if !errors.Is(r.err, ErrConnectionReset) {
		t.Fatalf("peer's read ended with %v, want %v", r.err, ErrConnectionReset)
	}
	waitFor(t, "the RST on the wire", func() bool { return len(frameOrder(rec, b.StreamID())) == 2 })
	if order := frameOrder(rec, b.StreamID()); order[0] != "data" || order[1] != "rst" {
		t.Fatalf("frames of the stream on the wire: %v, want [data rst]", order)
	}
}

// TestWriteQueue_QueueBounded: what writers may queue behind a busy
// connection is bounded per stream (maxQueuedFrames) and per session
// (maxQueuedBytes); beyond that a writer waits for its turn as before.
// Once the connection takes writes, every byte arrives in order.
func TestWriteQueue_QueueBounded(t *testing.T) {
	client, server, rec := recordedPair(t)
	a, _ := openPair(t, client, server)
	one, onePeer := openPair(t, client, server)
	per := maxDataFrame
	fit := (maxQueuedBytes - maxQueuedFrames*(headerSize+maxDataFrame)) / (headerSize + per)
	n := fit + 5
	streams := make([]*Stream, n)
	peers := make([]*Stream, n)
	for i := range streams {
		streams[i], peers[i] = openPair(t, client, server)
	}
	stallWith(t, a, rec)

	// One stream writing much: maxQueuedFrames frames queue, the next
	// waits.
	big := pattern(8 * maxDataFrame)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := one.Write(big); err != nil {
			t.Errorf("write: %v", err)
		}
		_ = one.Close()
	}()
	waitFor(t, "one stream's frames queued and its writer waiting", func() bool {
		frames, _, waiters := client.writes.queuedStats()
		return frames == maxQueuedFrames && waiters == 1
	})

	// Many streams writing a frame each: the session's bound.
	frame := pattern(per)
	for _, s := range streams {
		s := s
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Write(frame); err != nil {
				t.Errorf("stream %d: write: %v", s.StreamID(), err)
			}
			_ = s.Close()
		}()
	}
	waitFor(t, "every writer queued or waiting", func() bool {
		frames, _, waiters := client.writes.queuedStats()
		return frames+waiters == maxQueuedFrames+1+n
	})
	frames, queued, waiters := client.writes.queuedStats()
	if queued > maxQueuedBytes {
		t.Fatalf("%d bytes queued, over the bound %d", queued, maxQueuedBytes)
	}
	if frames != maxQueuedFrames+fit || waiters != 1+n-fit {
		t.Fatalf("%d frames queued and %d writers waiting, want %d and %d", frames, waiters, maxQueuedFrames+fit, 1+n-fit)
	}

	check := func(peer *Stream, want []byte) {
		defer wg.Done()
		r, err := io.ReadAll(peer)
		if err != nil || !bytes.Equal(r, want) {
			t.Errorf("stream %d: read %d bytes (%v), want the %d written", peer.StreamID(), len(r), err, len(want))
		}
	}
	wg.Add(1 + n)
	go check(onePeer, big)
	for _, p := range peers {
		go check(p, frame)
	}
	rec.release()
	wg.Wait()
	if frames, queued, waiters := client.writes.queuedStats(); frames != 0 || queued != 0 || waiters != 0 {
		t.Fatalf("after the writes: %d frames, %d bytes queued, %d waiting", frames, queued, waiters)
	}
}
