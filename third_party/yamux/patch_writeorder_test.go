package yamux

// Tests for the tunnelworks patch "frames take turns by stream" (see
// PATCHED.md).

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
)

// held reports whether a frame is being written.
func (q *writeQueue) held() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.busy
}

// numWaiting is how many writers wait for their turn.
func (q *writeQueue) numWaiting() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiting)
}

// flowState is what flow f has in the queue: copies of frames (patch
// 19), and whether its writer waits for a turn.
func (q *writeQueue) flowState(f *writeFlow) (queued int, waiting bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, t := range q.waiting {
		if t == &f.turn {
			waiting = true
		}
	}
	return f.queued, waiting
}

// wireFrame is a frame as it left the connection.
type wireFrame struct {
	typ    uint8
	flags  uint16
	stream uint32
	length uint32
}

// frameRecorder is a stallConn that records the frames written through
// it, in the order they reach the TCP connection.
type frameRecorder struct {
	*stallConn
	mu      sync.Mutex
	pending []byte // bytes of an incomplete header
	body    uint32 // body bytes still to skip
	frames  []wireFrame
}

func (r *frameRecorder) Write(b []byte) (int, error) {
	n, err := r.stallConn.Write(b)
	r.mu.Lock()
	defer r.mu.Unlock()
	p := b[:n]
	for len(p) > 0 {
		if r.body > 0 {
			k := min(uint32(len(p)), r.body)
			r.body -= k
			p = p[k:]
			continue
		}
		k := headerSize - len(r.pending)
		if k > len(p) {
			k = len(p)
		}
		r.pending = append(r.pending, p[:k]...)
		p = p[k:]
		if len(r.pending) < headerSize {
			continue
		}
		h := header(r.pending)
		f := wireFrame{typ: h.MsgType(), flags: h.Flags(), stream: h.StreamID(), length: h.Length()}
		r.frames = append(r.frames, f)
		if f.typ == typeData {
			r.body = f.length
		}
		r.pending = r.pending[:0]
	}
	return n, err
}

func (r *frameRecorder) recorded() []wireFrame {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]wireFrame(nil), r.frames...)
}

// recordedPair is a client session whose frames are recorded, and its
// server, over loopback TCP.
func recordedPair(t *testing.T) (client, server *Session, rec *frameRecorder) {
	t.Helper()
	c, s := tcpPair(t)
	rec = &frameRecorder{stallConn: &stallConn{Conn: c, closed: make(chan struct{})}}
	var err error
	if client, err = Client(rec, patchConf()); err != nil {
		t.Fatal(err)
	}
	if server, err = Server(s, patchConf()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rec.release()
		client.Close()
		server.Close()
	})
	return client, server, rec
}

// TestWriteQueue_QuietStreamGoesNext: three streams write 128 KiB each
// while the connection is stalled (one frame of the first inside
// conn.Write, the other two waiting for their turn); then a ping and a
// 64-byte write on a fourth stream. Once the connection takes writes
// again, the ping and the small frame go next, before the frames that
// waited longer; the bulk streams take turns frame by frame, no frame is
// longer than maxDataFrame, every stream's FIN follows its data, and the
// far side reads every byte in order. First come, first served (before
// the patch) sent the small frame after a frame of each bulk stream.
func TestWriteQueue_QuietStreamGoesNext(t *testing.T) {
	client, server, rec := recordedPair(t)
	const bulkSize = 128 << 10
	bulk := pattern(bulkSize)
	small := bytes.Repeat([]byte{'p'}, 64)

	var streams []*Stream
	var received []chan []byte
	for i := 0; i < 4; i++ {
		cs, ss := openPair(t, client, server)
		streams = append(streams, cs)
		got := make(chan []byte, 1)
		go func() {
			b, err := io.ReadAll(ss)
			if err != nil {
				t.Errorf("stream %d: read: %v", ss.StreamID(), err)
			}
			got <- b
		}()
		received = append(received, got)
	}
	a, b, c, p := streams[0], streams[1], streams[2], streams[3]

	var wg sync.WaitGroup
	write := func(s *Stream, data []byte) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Write(data); err != nil {
				t.Errorf("stream %d: write: %v", s.StreamID(), err)
				return
			}
			if err := s.Close(); err != nil {
				t.Errorf("stream %d: close: %v", s.StreamID(), err)
			}
		}()
	}

	start := len(rec.recorded())
	rec.stall()
	write(a, bulk)
	waitFor(t, "a's first frame inside conn.Write", func() bool { return rec.waiting.Load() == 1 })
	// Patch 19: b's and c's frames and FINs wait as copies in the queue
	// (or, were it full, their writers for a turn).
	write(b, bulk)
	write(c, bulk)
	for _, s := range []*Stream{b, c} {
		waitFor(t, "a bulk stream's frames and FIN in the queue", func() bool {
			n, waiting := client.writes.flowState(&s.flow)
			return n == 3 || waiting
		})
	}
	entries := client.writes.numWaiting()
	pinged := make(chan error, 1)
	go func() { _, err := client.Ping(); pinged <- err }()
	waitFor(t, "the ping waiting for its turn", func() bool { return client.writes.numWaiting() == entries+1 })
	write(p, small)
	waitFor(t, "p's message and FIN queued", func() bool { n, _ := client.writes.flowState(&p.flow); return n == 2 })
	rec.release()

	wg.Wait()
	if err := <-pinged; err != nil {
		t.Fatalf("ping: %v", err)
	}
	for i, want := range [][]byte{bulk, bulk, bulk, small} {
		if got := <-received[i]; !bytes.Equal(got, want) {
			t.Fatalf("stream %d: read %d bytes, not the %d written", streams[i].StreamID(), len(got), len(want))
		}
	}

	frames := rec.recorded()[start:]
	var order []string // what left, from the stall on
	name := map[uint32]string{a.StreamID(): "a", b.StreamID(): "b", c.StreamID(): "c", p.StreamID(): "p"}
	sent := map[uint32]uint32{}
	finished := map[uint32]bool{}
	for _, f := range frames {
		switch {
		case f.typ == typePing && f.flags&flagSYN != 0:
			order = append(order, "ping")
		case f.typ == typeData && f.length > 0:
			if finished[f.stream] {
				t.Fatalf("stream %s: data frame after its FIN: %v", name[f.stream], order)
			}
			if f.length > maxDataFrame {
				t.Fatalf("stream %s: data frame of %d bytes, over %d", name[f.stream], f.length, maxDataFrame)
			}
			sent[f.stream] += f.length
			order = append(order, name[f.stream])
		}
		if f.flags&flagFIN != 0 {
			finished[f.stream] = true
		}
	}
	for _, s := range streams {
		if !finished[s.StreamID()] {
			t.Fatalf("stream %s: no FIN on the wire", name[s.StreamID()])
		}
	}
	if sent[a.StreamID()] != bulkSize || sent[p.StreamID()] != 64 {
		t.Fatalf("data on the wire: %v", sent)
	}
	if len(order) < 4 || fmt.Sprint(order[:3]) != "[a ping p]" {
		t.Fatalf("order %v: want a's frame (in conn.Write when stalled), then the ping and p, then the rest", order)
	}
	// The bulk streams take turns: at every point, no one has sent two
	// frames more than another (a's first frame counts).
	count := map[string]int{"a": 1}
	for i, who := range order[3:] {
		count[who]++
		lo, hi := count["a"], count["a"]
		for _, k := range []string{"b", "c"} {
			if count[k] < lo {
				lo = count[k]
			}
			if count[k] > hi {
				hi = count[k]
			}
		}
		if hi-lo > 1 && i < len(order)-4 {
			t.Fatalf("order %v: bulk streams did not take turns (at frame %d: %v)", order, i+3, count)
		}
	}
}

// TestWriteQueue_LargeWriteInFrames: one Write larger than maxDataFrame
// leaves in frames of at most maxDataFrame and arrives whole.
func TestWriteQueue_LargeWriteInFrames(t *testing.T) {
	client, server, rec := recordedPair(t)
	cs, ss := openPair(t, client, server)
	data := pattern(200 << 10) // within the initial window
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(ss); got <- b }()
	if _, err := cs.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("read %d bytes, not the %d written", len(b), len(data))
	}
	var n int
	for _, f := range rec.recorded() {
		if f.typ == typeData && f.length > 0 {
			n++
			if f.length > maxDataFrame {
				t.Fatalf("data frame of %d bytes, over %d", f.length, maxDataFrame)
			}
		}
	}
	if want := (len(data) + maxDataFrame - 1) / maxDataFrame; n != want {
		t.Fatalf("%d data frames, want %d", n, want)
	}
}
