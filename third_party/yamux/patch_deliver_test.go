package yamux

// Tests for the tunnelworks patch "direct delivery" (see PATCHED.md).

import (
	"bytes"
	"io"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// directSink is a deliver function's destination: what it takes goes to
// out, as does what its reader reads, under one lock.
type directSink struct {
	mu     sync.Mutex
	out    bytes.Buffer
	calls  int
	direct int // bytes taken by the deliver function
	// take decides how much of the i-th frame offered the function takes.
	take func(i int, p []byte) int
}

func (d *directSink) deliver(p []byte) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.take(d.calls, p)
	d.calls++
	d.out.Write(p[:n])
	d.direct += n
	return n
}

// readAll reads st to EOF the way forward's pipe does: the deliver
// function is set only while the reader waits with nothing in hand, and
// cleared (waiting for a call in progress) before it reads and writes
// on, so direct bytes cannot overtake the ones it read.
func (d *directSink) readAll(st *Stream) error {
	buf := make([]byte, 4096)
	for {
		st.SetDeliver(d.deliver)
		_, _ = st.Read(nil) // waits until Read would not block
		st.SetDeliver(nil)
		n, err := st.Read(buf)
		d.mu.Lock()
		d.out.Write(buf[:n])
		d.mu.Unlock()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func deliverPair(t *testing.T) (cs, ss *Stream) {
	t.Helper()
	c, s := tcpPair(t)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return openPair(t, client, server)
}

// Frames of every size, some taken whole by the deliver function, some in
// part, some not at all, some too large to be offered, interleaved with
// the reader's own reads: every byte arrives once, in order.
func TestStream_DeliverKeepsOrder(t *testing.T) {
	cs, ss := deliverPair(t)
	if _, err := cs.Write([]byte("x")); err != nil { // the server's ACK reaches the client
		t.Fatal(err)
	}
	sink := &directSink{take: func(i int, p []byte) int {
		switch i % 4 {
		case 0:
			return len(p)
		case 1:
			return len(p) / 2
		case 2:
			return 0
		}
		return minInt(len(p), 7)
	}}
	done := make(chan error, 1)
	go func() { done <- sink.readAll(ss) }()

	rng := rand.New(rand.NewSource(1))
	data := append([]byte("x"), pattern(1<<20)...)
	for off := 1; off < len(data); {
		n := 1 + rng.Intn(3000)
		if rng.Intn(20) == 0 {
			n = maxDirectFrame + 1 + rng.Intn(8000) // never offered
		}
		n = minInt(n, len(data)-off)
		if _, err := cs.Write(data[off : off+n]); err != nil {
			t.Fatalf("write: %v", err)
		}
		off += n
		if rng.Intn(8) == 0 {
			// Now and then let the reader catch up and park, so the next
			// frame finds it waiting with an empty buffer.
			waitFor(t, "reader catches up", func() bool {
				sink.mu.Lock()
				defer sink.mu.Unlock()
				return sink.out.Len() == off
			})
		}
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	case <-time.After(patchBound):
		t.Fatal("reader not done")
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if !bytes.Equal(sink.out.Bytes(), data) {
		t.Fatalf("got %d bytes, want %d, or in another order", sink.out.Len(), len(data))
	}
	if sink.direct == 0 {
		t.Fatal("no byte was delivered directly")
	}
	t.Logf("%d of %d bytes delivered directly, %d calls", sink.direct, len(data), sink.calls)
}

// Bytes taken directly count as read: a transfer many times the window,
// in small frames all taken directly (the reader never reads a byte),
// completes, so the window updates flow.
func TestStream_DeliverKeepsWindowOpen(t *testing.T) {
	cs, ss := deliverPair(t)
	var got bytes.Buffer
	var mu sync.Mutex
	ss.SetDeliver(func(p []byte) int {
		mu.Lock()
		got.Write(p)
		mu.Unlock()
		return len(p)
	})
	data := pattern(16 * int(initialStreamWindow))
	_ = cs.SetWriteDeadline(time.Now().Add(patchBound))
	for off := 0; off < len(data); off += 1000 {
		if _, err := cs.Write(data[off:minInt(off+1000, len(data))]); err != nil {
			t.Fatalf("write at %d: %v (the window did not reopen?)", off, err)
		}
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	_ = ss.SetReadDeadline(time.Now().Add(patchBound))
	if n, err := ss.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read: %d bytes, %v; want io.EOF (every byte taken directly)", n, err)
	}
	ss.SetDeliver(nil)
	mu.Lock()
	defer mu.Unlock()
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("got %d bytes, want %d, or in another order", got.Len(), len(data))
	}
}

// SetDeliver(nil) returns only once a call in progress has returned.
func TestStream_SetDeliverWaitsForCall(t *testing.T) {
	cs, ss := deliverPair(t)
	entered, release := make(chan struct{}), make(chan struct{})
	var returned atomic.Bool
	ss.SetDeliver(func(p []byte) int {
		close(entered)
		<-release
		returned.Store(true)
		return len(p)
	})
	if _, err := cs.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	<-entered
	go func() {
		time.Sleep(20 * time.Millisecond) // let SetDeliver(nil) start waiting
		close(release)
	}()
	ss.SetDeliver(nil)
	if !returned.Load() {
		t.Fatal("SetDeliver(nil) returned while the deliver function ran")
	}
}

// minInt: the package's min is for uint32 (go 1.20, no built-in).
func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// A stream that receives data frames alone is offered large frames (bulk
// data then goes out from recvLoop, one hand-off and one copy fewer); once
// another stream's frames come between its own, it is offered small frames
// only, so recvLoop spends no stream's large socket write while the
// others' frames wait behind it.
func TestStream_DeliverLargeFramesOnlyWhenAlone(t *testing.T) {
	c, s := tcpPair(t)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })

	// A sink that takes whatever it is offered and notes the largest frame.
	var mu sync.Mutex
	largest := map[*directSink]int{}
	newSink := func() *directSink {
		d := &directSink{}
		d.take = func(_ int, p []byte) int {
			mu.Lock()
			if len(p) > largest[d] {
				largest[d] = len(p)
			}
			mu.Unlock()
			return len(p)
		}
		return d
	}
	largestOf := func(d *directSink) int {
		mu.Lock()
		defer mu.Unlock()
		return largest[d]
	}
	frame := pattern(32 << 10)
	read := func(d *directSink, st *Stream) chan error {
		done := make(chan error, 1)
		go func() { done <- d.readAll(st) }()
		return done
	}
	finish := func(w *Stream, done chan error, d *directSink, want []byte) {
		t.Helper()
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("read: %v", err)
			}
		case <-time.After(patchBound):
			t.Fatal("reader not done")
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if !bytes.Equal(d.out.Bytes(), want) {
			t.Fatalf("got %d bytes, want %d, or in another order", d.out.Len(), len(want))
		}
	}

	// Alone: once soleRun large frames came in a row, a 32 KiB frame that finds
	// the reader parked is offered whole. Each frame waits for the reader
	// to catch up, so the next one finds it parked (bounded tries: a frame
	// can land just before the reader parks).
	aw, ar := openPair(t, client, server)
	alone := newSink()
	aloneDone := read(alone, ar)
	// Another stream's small frames come between: they do not count.
	pw, pr := openPair(t, client, server)
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	var sent []byte
	for i := 0; i < 50 && largestOf(alone) < len(frame); i++ {
		if _, err := pw.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		if _, err := aw.Write(frame); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, frame...)
		waitFor(t, "reader catches up", func() bool {
			alone.mu.Lock()
			defer alone.mu.Unlock()
			return alone.out.Len() == len(sent)
		})
	}
	if got := largestOf(alone); got != len(frame) {
		t.Fatalf("alone, the largest frame offered in 50 was %d bytes, want %d", got, len(frame))
	}
	if !ar.DeliversLarge() {
		t.Fatal("DeliversLarge is false for the session's only bulk receiver")
	}
	finish(aw, aloneDone, alone, sent)
	_ = pw.Close()

	// Shared: two streams' frames alternate on the wire, each finding its
	// reader parked, while a third exchanges messages (pw's above count for
	// interactiveSpan large frames; one more makes it plain): neither is
	// offered more than maxSharedDirectFrame, and every byte arrives.
	mw, mr := openPair(t, client, server)
	go func() { _, _ = io.Copy(io.Discard, mr) }()
	if _, err := mw.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	defer mw.Close()
	var sinks [2]*directSink
	var dones [2]chan error
	var ws, rs [2]*Stream
	for i := range sinks {
		w, r := openPair(t, client, server)
		ws[i], rs[i], sinks[i] = w, r, newSink()
		dones[i] = read(sinks[i], r)
	}
	for i := 0; i < 2*soleRun; i++ {
		for k, w := range ws {
			if _, err := w.Write(frame); err != nil {
				t.Fatal(err)
			}
			// As above: the next frame finds this reader parked.
			waitFor(t, "reader catches up", func() bool {
				sinks[k].mu.Lock()
				defer sinks[k].mu.Unlock()
				return sinks[k].out.Len() == (i+1)*len(frame)
			})
			if rs[k].DeliversLarge() || ar.DeliversLarge() {
				t.Fatalf("stream %d: DeliversLarge is true while two streams' large frames alternate", k)
			}
		}
	}
	for i := range sinks {
		finish(ws[i], dones[i], sinks[i], bytes.Repeat(frame, 2*soleRun))
		if got := largestOf(sinks[i]); got > maxSharedDirectFrame {
			t.Fatalf("stream %d, sharing the session, was offered a %d-byte frame (limit %d)", i, got, maxSharedDirectFrame)
		}
	}
}

// Patch 16: while no stream of the session exchanges messages, nobody
// waits behind recvLoop's socket writes, so every bulk stream is offered
// its large frames (two streams alternating, each finding its reader
// parked); once a stream sends small messages, the bulk streams are
// offered small frames only again, and every byte arrives.
func TestStream_DeliverLargeFramesWhileNobodyWaits(t *testing.T) {
	c, s := tcpPair(t)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })

	var mu sync.Mutex
	largest := map[int]int{} // by stream, in the current phase
	frame := pattern(32 << 10)
	var sinks [2]*directSink
	var dones [2]chan error
	var ws, rs [2]*Stream
	for i := range sinks {
		i := i // go 1.20: one loop variable for all iterations
		w, r := openPair(t, client, server)
		d := &directSink{}
		d.take = func(_ int, p []byte) int {
			mu.Lock()
			if len(p) > largest[i] {
				largest[i] = len(p)
			}
			mu.Unlock()
			return len(p)
		}
		ws[i], rs[i], sinks[i] = w, r, d
		done := make(chan error, 1)
		dones[i] = done
		go func() { done <- d.readAll(r) }()
	}
	sent := 0 // frames each stream sent
	// alternate sends frames on both streams in turn, each after the last
	// one was read (so that it finds its reader parked), until both were
	// offered a frame of want bytes or more, at most 50 each; it returns
	// the largest frame each was offered.
	alternate := func(want int) [2]int {
		t.Helper()
		mu.Lock()
		largest = map[int]int{}
		mu.Unlock()
		var got [2]int
		for n := 0; n < 50 && (got[0] < want || got[1] < want); n++ {
			sent++
			for k, w := range ws {
				if _, err := w.Write(frame); err != nil {
					t.Fatal(err)
				}
				d := sinks[k]
				waitFor(t, "reader catches up", func() bool {
					d.mu.Lock()
					defer d.mu.Unlock()
					return d.out.Len() == sent*len(frame)
				})
			}
			mu.Lock()
			got = [2]int{largest[0], largest[1]}
			mu.Unlock()
		}
		return got
	}

	if got := alternate(len(frame)); got[0] != len(frame) || got[1] != len(frame) {
		t.Fatalf("with nobody exchanging messages, the largest frames offered were %v bytes, want %d each", got, len(frame))
	}
	if !rs[0].DeliversLarge() || !rs[1].DeliversLarge() {
		t.Fatal("DeliversLarge is false for bulk streams with nobody exchanging messages")
	}

	// A stream exchanging messages: the bulk streams' frames stay small.
	mw, mr := openPair(t, client, server)
	go func() { _, _ = io.Copy(io.Discard, mr) }()
	defer mw.Close()
	if _, err := mw.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the message counted", func() bool { return !rs[0].DeliversLarge() })
	if got := alternate(maxDirectFrame + 1); got[0] > maxSharedDirectFrame || got[1] > maxSharedDirectFrame {
		t.Fatalf("beside a stream exchanging messages, bulk streams were offered %v-byte frames (limit %d)", got, maxSharedDirectFrame)
	}
	if rs[0].DeliversLarge() || rs[1].DeliversLarge() {
		t.Fatal("DeliversLarge is true beside a stream exchanging messages")
	}
	for i, w := range ws {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-dones[i]:
			if err != nil {
				t.Fatalf("read: %v", err)
			}
		case <-time.After(patchBound):
			t.Fatal("reader not done")
		}
		sinks[i].mu.Lock()
		ok := bytes.Equal(sinks[i].out.Bytes(), bytes.Repeat(frame, sent))
		sinks[i].mu.Unlock()
		if !ok {
			t.Fatalf("stream %d: the bytes differ from the %d frames sent", i, sent)
		}
	}
}
