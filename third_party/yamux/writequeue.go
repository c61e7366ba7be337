package yamux

import (
	"container/heap"
	"sync"
	"time"
)

// maxDataFrame bounds the body of a data frame: the longest a writer holds
// the connection before another stream's frame may go. Patched for
// tunnelworks (see PATCHED.md, patch 15): 64 KiB, not 32. Each frame costs
// both ends a turn on the connection, a hand-off between goroutines and a
// system call; bulk streams beside small messages are held to smaller
// frames by the window they then share (patch 12).
const maxDataFrame = 64 * 1024

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
// it sends the next.
type writeQueue struct {
	mu      sync.Mutex
	busy    bool      // a frame is being written
	now     uint64    // virtual time: the start of the frame being written
	seq     uint64    // arrival order, for ties
	waiting writeHeap // by end, then arrival
}

// writeFlow is one flow's place in the queue: the virtual time at which
// its last frame ends, and its turn when it waits (one at a time). Only
// the queue touches it, under mu.
type writeFlow struct {
	end  uint64
	turn writeTurn
}

// writeTurn is a waiting writer.
type writeTurn struct {
	start, end, seq uint64
	index           int           // in the heap
	ready           chan struct{} // gets a value when the turn is granted
	granted         bool
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

// release ends the current frame and hands the connection to the waiter
// whose frame ends first.
func (q *writeQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) == 0 {
		q.busy = false
		return
	}
	t := heap.Pop(&q.waiting).(*writeTurn)
	q.now = later(q.now, t.start)
	t.granted = true
	t.ready <- struct{}{}
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
