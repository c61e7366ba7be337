package yamux

// Tests for the tunnelworks patch "writers that do not wait for the
// connection" (patch 19, see PATCHED.md).

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holdConn stalls the client's connection with a frame of stream a inside
// conn.Write, and returns a channel that gets a's Write result.
func holdConn(t *testing.T, rec *frameRecorder, a *Stream) <-chan error {
	t.Helper()
	rec.stall()
	done := make(chan error, 1)
	go func() {
		_, err := a.Write(pattern(maxDataFrame))
		done <- err
	}()
	waitFor(t, "a's frame inside conn.Write", func() bool { return rec.waiting.Load() == 1 })
	return done
}

// within runs f and fails the test if it has not returned after
// patchBound.
func within(t *testing.T, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(patchBound):
		t.Fatalf("%s: still waiting after %v, for a connection another stream holds", what, patchBound)
	}
}

// TestWriteQueue_WriterDoesNotWaitForTheConnection: while another
// stream's frame is inside conn.Write, a stream's Writes and its Close
// return at once, their frames queued; once the connection takes writes,
// the peer reads every byte in order and then the FIN, which went after
// the data on the wire.
func TestWriteQueue_WriterDoesNotWaitForTheConnection(t *testing.T) {
	client, server, rec := recordedPair(t)
	a, sa := openPair(t, client, server)
	m, sm := openPair(t, client, server)
	start := len(rec.recorded())
	aDone := holdConn(t, rec, a)

	first, second := bytes.Repeat([]byte{'x'}, 100), pattern(3000)
	within(t, "first message", func() error { _, err := m.Write(first); return err })
	within(t, "second message", func() error { _, err := m.Write(second); return err })
	within(t, "close", m.Close)
	if n, _ := client.writes.flowState(&m.flow); n != 3 {
		t.Fatalf("%d of m's frames queued, want 3 (two messages and the FIN)", n)
	}
	rec.release()
	if err := <-aDone; err != nil {
		t.Fatalf("a's write: %v", err)
	}

	got, err := io.ReadAll(sm)
	if err != nil {
		t.Fatalf("read m: %v", err)
	}
	if want := append(append([]byte(nil), first...), second...); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes of m, not the %d written in order", len(got), len(want))
	}
	buf := make([]byte, maxDataFrame)
	if _, err := io.ReadFull(sa, buf); err != nil || !bytes.Equal(buf, pattern(maxDataFrame)) {
		t.Fatalf("read a: %v", err)
	}
	waitFor(t, "the queue empty and the connection free", func() bool {
		return client.writes.queuedBytes() == 0 && !client.writes.held()
	})
	fin := false
	for _, f := range rec.recorded()[start:] {
		if f.stream != m.StreamID() {
			continue
		}
		if f.typ == typeData && f.length > 0 && fin {
			t.Fatal("a data frame of m after its FIN")
		}
		fin = fin || f.flags&flagFIN != 0
	}
	if !fin {
		t.Fatal("no FIN of m on the wire")
	}
}

// TestWriteQueue_ResetDropsQueuedFrames: frames of a stream still queued
// when it is reset never reach the wire (the peer would count them as
// stray, behind the RST); the RST does.
func TestWriteQueue_ResetDropsQueuedFrames(t *testing.T) {
	client, server, rec := recordedPair(t)
	a, _ := openPair(t, client, server)
	r, _ := openPair(t, client, server)
	start := len(rec.recorded())
	aDone := holdConn(t, rec, a)

	for i := 0; i < 3; i++ {
		within(t, "a message", func() error { _, err := r.Write(pattern(1000)); return err })
	}
	if n, _ := client.writes.flowState(&r.flow); n != 3 {
		t.Fatalf("%d of r's frames queued, want 3", n)
	}
	if err := r.Reset(); err != nil {
		t.Fatalf("reset: %v", err)
	}
	if n, _ := client.writes.flowState(&r.flow); n != 0 {
		t.Fatalf("%d of r's frames still queued after its reset", n)
	}
	rec.release()
	if err := <-aDone; err != nil {
		t.Fatalf("a's write: %v", err)
	}
	waitFor(t, "the RST on the wire", func() bool {
		for _, f := range rec.recorded()[start:] {
			if f.stream == r.StreamID() && f.flags&flagRST != 0 {
				return true
			}
		}
		return false
	})
	for _, f := range rec.recorded()[start:] {
		if f.stream == r.StreamID() && f.typ == typeData && f.length > 0 {
			t.Fatal("a data frame of r reached the wire after its reset")
		}
	}
	if client.writes.queuedBytes() != 0 {
		t.Fatalf("%d bytes still counted as queued", client.writes.queuedBytes())
	}
}

// failingConn fails every write once failing is set; its Close waits
// for closeGate to be closed, if set.
type failingConn struct {
	*stallConn
	failing   atomic.Bool
	closeGate chan struct{}
}

func (c *failingConn) Close() error {
	if c.closeGate != nil {
		<-c.closeGate
	}
	return c.stallConn.Close()
}

var errWriteFailed = errors.New("the connection failed")

func (c *failingConn) Write(b []byte) (int, error) {
	if c.failing.Load() {
		return 0, errWriteFailed
	}
	return c.stallConn.Write(b)
}

// TestWriteQueue_FailedQueuedWriteEndsSession: sendLoop holds the
// connection (a ping) when a stream queues a frame; writing that frame
// fails. The session ends with that error, its send loop exits (it must
// not wait for itself in Close), and the stream's next write fails, only
// once the session is closed: a caller must see a lost session, not a
// failed stream, as when its own frame fails (the connection's Close is
// held back so that the session ends well after the failure).
func TestWriteQueue_FailedQueuedWriteEndsSession(t *testing.T) {
	c, s := tcpPair(t)
	closeGate := make(chan struct{})
	var openGate sync.Once
	conn := &failingConn{stallConn: &stallConn{Conn: c, closed: make(chan struct{})}, closeGate: closeGate}
	t.Cleanup(func() { openGate.Do(func() { close(closeGate) }) })
	client, err := Client(conn, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.release()
		client.Close()
		server.Close()
	})
	m, _ := openPair(t, client, server)

	conn.stall()
	go client.Ping()
	waitFor(t, "the ping inside conn.Write", func() bool { return conn.waiting.Load() == 1 })
	within(t, "a message", func() error { _, err := m.Write([]byte("hello")); return err })
	conn.failing.Store(true) // the ping, past the check, is written; the message is not
	conn.release()
	waitFor(t, "the queued frame's write failed", func() bool {
		client.writes.mu.Lock()
		defer client.writes.mu.Unlock()
		return client.writes.failed != nil
	})
	type result struct {
		err    error
		closed bool
	}
	again := make(chan result, 1)
	go func() {
		_, err := m.Write([]byte("again"))
		again <- result{err, client.IsClosed()}
	}()
	openGate.Do(func() { close(closeGate) })
	if r := <-again; r.err == nil || !r.closed {
		t.Fatalf("a write after the failure: %v, session closed when it returned: %v; want an error from a closed session", r.err, r.closed)
	}

	select {
	case <-client.CloseChan():
	case <-time.After(patchBound):
		t.Fatal("the session still open after a queued frame failed to be written")
	}
	select {
	case <-client.sendDoneCh:
	case <-time.After(patchBound):
		t.Fatal("sendLoop did not exit: it waits for itself")
	}
	client.shutdownErrLock.Lock()
	cause := client.shutdownErr
	client.shutdownErrLock.Unlock()
	if !errors.Is(cause, errWriteFailed) {
		t.Fatalf("session ended with %v, want the failed write's error", cause)
	}
}

// TestWriteQueue_SmallFramesCountTheirBuffers: the bound counts what the
// copies hold, not their length: with the connection held, a stream's
// 10-byte messages queue until their 4 KiB buffers reach maxQueuedBytes
// (not 80,000 of them); the next waits for its turn. Once the connection
// takes writes, the peer reads every message in order.
func TestWriteQueue_SmallFramesCountTheirBuffers(t *testing.T) {
	client, server, rec := recordedPair(t)
	a, _ := openPair(t, client, server)
	m, sm := openPair(t, client, server)
	aDone := holdConn(t, rec, a)

	fit := maxQueuedBytes / frameCost(10)
	total := fit + 20
	written := make(chan error, 1)
	go func() {
		for i := 0; i < total; i++ {
			msg := []byte(fmt.Sprintf("message %2d", i%100))
			if _, err := m.Write(msg); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	waitFor(t, "m's writer waiting for a turn, the queue full", func() bool {
		_, waiting := client.writes.flowState(&m.flow)
		return waiting
	})
	if n, _ := client.writes.flowState(&m.flow); n != fit {
		t.Fatalf("%d messages queued before the writer waited, want %d (4 KiB each counted)", n, fit)
	}
	if q := client.WriteQueued(); q > maxQueuedBytes {
		t.Fatalf("WriteQueued = %d, over %d", q, maxQueuedBytes)
	}
	rec.release()
	if err := <-aDone; err != nil {
		t.Fatalf("a's write: %v", err)
	}
	if err := <-written; err != nil {
		t.Fatalf("m's writes: %v", err)
	}
	buf := make([]byte, 10*total)
	if _, err := io.ReadFull(sm, buf); err != nil {
		t.Fatalf("read m: %v", err)
	}
	for i := 0; i < total; i++ {
		if got, want := string(buf[10*i:10*i+10]), fmt.Sprintf("message %2d", i%100); got != want {
			t.Fatalf("message %d: %q, want %q", i, got, want)
		}
	}
	waitFor(t, "nothing queued", func() bool { return client.WriteQueued() == 0 })
}
