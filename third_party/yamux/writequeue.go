package yamux

import (
	"container/heap"
	"sync"
	"time"
)

// maxDataFrame bounds the body of a data frame: the longest a writer holds
// the connection before another stream's frame may go.
const maxDataFrame = 32 * 1024

// writeQueue decides who writes the next frame to the connection: a
// stream writing its own data frame (Session.writeData) or sendLoop.
// Patched for tunnelworks (see PATCHED.md): it replaces a one-slot channel
// whose waiters went first come, first served, so a stream with one small
// frame waited behind a frame of every busy stream queued before it.
//
// Each stream is a flow, and sendLoop (window updates, pings, opens and
// closes) is one more. A frame starts at virtual time max(now, the end of
// its flow's last frame) and ends its length in bytes later; the waiter
// whose frame ends first goes next (ties: first come), and now becomes
// its start. Flows that all send share the connection by bytes, frame by
// frame; a flow that has been quiet starts at now, so its small frame ends
// before the next frame of any busy flow and goes next. A flow's frames
// keep their order: its writer waits for each frame to be written before
// it sends the next, or queues it (patch 14).
//
// Queued frames (patch 14): a writer that finds the connection busy may
// leave a copy of its frame in its turn's place and return; release writes
// the queued frames ahead of the first waiting writer from the goroutine
// that holds the connection, so no goroutine has to be woken before they
// leave. Bounded by maxQueuedFrames per flow and maxQueuedBytes in all.
type writeQueue struct {
	mu      sync.Mutex
	busy    bool      // a frame is being written
	now     uint64    // virtual time: the start of the frame being written
	seq     uint64    // arrival order, for ties
	waiting writeHeap // by end, then arrival

	// write sends a queued frame (header and body) on the connection; the
	// writer that holds the connection calls it for the frames queued
	// behind it (see queue).
	write func(frame []byte) error
	// queuedBytes counts the queued frames' bytes, within maxQueuedBytes.
	queuedBytes int
}

const (
	// maxQueuedFrames is how many frames one flow may queue without
	// waiting for them to be written.
	maxQueuedFrames = 2
	// maxQueuedBytes bounds the queued frames of a session.
	maxQueuedBytes = 1 << 20
)

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, headerSize+maxDataFrame); return &b }}

// writeFlow is one flow's place in the queue: the virtual time at which
// its last frame ends, and its turn when it waits (one at a time). Only
// the queue touches it, under mu.
type writeFlow struct {
	end  uint64
	turn writeTurn
	// queued counts this flow's frames waiting in the queue with nobody
	// waiting for them; drained, if not nil, is closed when it drops to 0.
	queued  int
	drained chan struct{}
}

// writeTurn is a waiting writer.
type writeTurn struct {
	start, end, seq uint64
	index           int           // in the heap
	ready           chan struct{} // gets a value when the turn is granted
	granted         bool
	// A queued frame instead of a waiting writer: written by whoever
	// holds the connection when its turn comes.
	frame *[]byte
	flow  *writeFlow
}

// tryTake takes the connection for a frame of n bytes of f if nobody
// writes or waits.
func (q *writeQueue) tryTake(f *writeFlow, n int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.busy || len(q.waiting) > 0 {
		return false
	}
	q.busy = true
	q.now = later(q.now, f.end)
	f.end = q.now + uint64(n)
	return true
}

// take waits for f's turn to write a frame of n bytes, until done is
// closed (errDone) or timeout fires (errTimeout; a nil timeout never
// does).
func (q *writeQueue) take(f *writeFlow, n int, done <-chan struct{}, errDone error, timeout <-chan time.Time, errTimeout error) error {
	q.mu.Lock()
	if !q.busy && len(q.waiting) == 0 {
		q.busy = true
		q.now = later(q.now, f.end)
		f.end = q.now + uint64(n)
		q.mu.Unlock()
		return nil
	}
	t := &f.turn
	if t.ready == nil {
		t.ready = make(chan struct{}, 1)
	}
	t.start = later(q.now, f.end)
	t.end = t.start + uint64(n)
	t.seq = q.seq
	q.seq++
	t.granted = false
	f.end = t.end
	heap.Push(&q.waiting, t)
	q.mu.Unlock()

	var err error
	select {
	case <-t.ready:
		return nil
	case <-done:
		err = errDone
	case <-timeout:
		err = errTimeout
	}
	q.mu.Lock()
	if t.granted {
		// Granted as we gave up: take it and pass it on.
		q.mu.Unlock()
		<-t.ready
		q.release()
		return err
	}
	heap.Remove(&q.waiting, t.index)
	q.mu.Unlock()
	return err
}

// queue takes the connection for a frame of f (as tryTake) when nobody
// writes or waits; otherwise it queues a copy of the frame, to be written
// by whoever holds the connection when its turn comes, and returns at once
// (queued). It does neither (false, false) when f or the session has
// queued as much as it may: the caller then waits its turn.
func (q *writeQueue) queue(f *writeFlow, hdr, body []byte) (took, queued bool) {
	n := len(hdr) + len(body)
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.busy && len(q.waiting) == 0 {
		q.busy = true
		q.now = later(q.now, f.end)
		f.end = q.now + uint64(n)
		return true, false
	}
	if q.write == nil || f.queued >= maxQueuedFrames || q.queuedBytes+n > maxQueuedBytes || n > headerSize+maxDataFrame {
		return false, false
	}
	buf := framePool.Get().(*[]byte)
	*buf = append(append((*buf)[:0], hdr...), body...)
	t := &writeTurn{frame: buf, flow: f}
	t.start = later(q.now, f.end)
	t.end = t.start + uint64(n)
	t.seq = q.seq
	q.seq++
	f.end = t.end
	f.queued++
	q.queuedBytes += n
	heap.Push(&q.waiting, t)
	return false, true
}

// hasQueued says whether f has frames queued.
func (q *writeQueue) hasQueued(f *writeFlow) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return f.queued > 0
}

// waitQueued returns when f has no frames queued, or done is closed.
func (q *writeQueue) waitQueued(f *writeFlow, done <-chan struct{}) {
	q.mu.Lock()
	if f.queued == 0 {
		q.mu.Unlock()
		return
	}
	if f.drained == nil {
		f.drained = make(chan struct{})
	}
	ch := f.drained
	q.mu.Unlock()
	select {
	case <-ch:
	case <-done:
	}
}

// release ends the current frame, writes the frames queued ahead of the
// first waiting writer, and hands the connection to that writer.
func (q *writeQueue) release() {
	q.mu.Lock()
	for {
		if len(q.waiting) == 0 {
			q.busy = false
			q.mu.Unlock()
			return
		}
		t := heap.Pop(&q.waiting).(*writeTurn)
		q.now = later(q.now, t.start)
		if t.frame == nil {
			t.granted = true
			t.ready <- struct{}{}
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		_ = q.write(*t.frame) // a failed write ends the session; the rest fail fast
		q.mu.Lock()
		q.queuedBytes -= len(*t.frame)
		framePool.Put(t.frame)
		f := t.flow
		f.queued--
		if f.queued == 0 && f.drained != nil {
			close(f.drained)
			f.drained = nil
		}
	}
}

// writeHeap orders waiting turns by end, then arrival.
type writeHeap []*writeTurn

func (h writeHeap) Len() int { return len(h) }
func (h writeHeap) Less(i, j int) bool {
	if h[i].end != h[j].end {
		return h[i].end < h[j].end
	}
	return h[i].seq < h[j].seq
}
func (h writeHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *writeHeap) Push(x any) {
	t := x.(*writeTurn)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *writeHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*h = old[:len(old)-1]
	return t
}

// later is the larger of two virtual times (this module is go 1.20: no
// built-in max).
func later(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}
