package yamux

import (
	"container/heap"
	"errors"
	"io"
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
// keep their order: each starts where the flow's last one ended.
//
// Patch 19: a stream's data frame need not wait for its turn. A writer
// that finds the connection taken leaves a copy of its frame in the queue
// (queueFrame) and returns: whoever holds the connection writes it in its
// turn before letting go (release). Writers then wait only for their
// socket and their window, as a plain TLS relay's copy loop does, instead
// of readying each other frame by frame. Queued copies are bounded per
// session (maxQueuedBytes); past that a writer waits for its turn as
// before.
type writeQueue struct {
	mu      sync.Mutex
	busy    bool      // a frame is being written
	now     uint64    // virtual time: the start of the frame being written
	seq     uint64    // arrival order, for ties
	waiting writeHeap // by end, then arrival
	queued  int       // bytes the queued copies hold (frameCost)
	// conn is where release writes queued frames; failed is the first
	// error it met (queued frames are then dropped).
	conn   io.Writer
	failed error
	onFail func(error)
}

// maxQueuedBytes bounds the copies of frames queued in a session (patch
// 19): sixteen of the largest data frames, about 1 MiB. With four, bulk
// writers found the queue full and waited for their turn about as often
// as without the queue (bench/README.md, issue 17, thirteenth part).
const maxQueuedBytes = 16 * (maxDataFrame + headerSize)

// maxDrainBytes bounds what one release writes of others' queued frames
// (patch 19).
const maxDrainBytes = 2 * maxQueuedBytes

// queuedFrame is a copy of a data frame (or a FIN) that waits in the
// queue for whoever holds the connection to write it.
type queuedFrame struct {
	turn writeTurn
	flow *writeFlow
	hdr  [headerSize]byte
	body []byte // a buffer of smallFrameBody or maxDataFrame bytes
}

// Queued copies come from pools by the size of their buffer, 4 KiB to
// 64 KiB in powers of two, so that a frame never holds a buffer more than
// twice its size: the bound counts the buffers (frameCost), and a
// thousand 10-byte messages queued hold 4 KiB each, not 64.
const smallFrameBody = 4 << 10

var queuedFramePools = [...]sync.Pool{
	{New: func() any { return &queuedFrame{body: make([]byte, 0, smallFrameBody)} }},
	{New: func() any { return &queuedFrame{body: make([]byte, 0, smallFrameBody<<1)} }},
	{New: func() any { return &queuedFrame{body: make([]byte, 0, smallFrameBody<<2)} }},
	{New: func() any { return &queuedFrame{body: make([]byte, 0, smallFrameBody<<3)} }},
	{New: func() any { return &queuedFrame{body: make([]byte, 0, smallFrameBody<<4)} }},
}

// frameClass is the pool of a body of n bytes (at most maxDataFrame).
func frameClass(n int) int {
	c := 0
	for smallFrameBody<<c < n {
		c++
	}
	return c
}

// frameCost is what a queued frame with a body of n bytes counts against
// maxQueuedBytes: its header and its buffer.
func frameCost(n int) int { return headerSize + smallFrameBody<<frameClass(n) }

// queueFrame takes the connection for f's frame of hdr and body (true:
// the caller writes it and releases) or, if someone else holds it,
// leaves a copy in the queue for them to write (false). With more than
// maxQueuedBytes queued already it does neither and returns
// errQueueFull; after a failed write, the error.
func (q *writeQueue) queueFrame(f *writeFlow, hdr header, body []byte) (bool, error) {
	n := len(hdr) + len(body)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.failed != nil {
		return false, q.failed
	}
	if !q.busy && len(q.waiting) == 0 {
		q.busy = true
		q.now = later(q.now, f.end)
		f.end = q.now + uint64(n)
		return true, nil
	}
	cost := frameCost(len(body))
	if q.queued+cost > maxQueuedBytes {
		return false, errQueueFull
	}
	qf := queuedFramePools[frameClass(len(body))].Get().(*queuedFrame)
	qf.flow = f
	copy(qf.hdr[:], hdr)
	qf.body = append(qf.body[:0], body...)
	t := &qf.turn
	t.frame = qf
	t.start = later(q.now, f.end)
	t.end = t.start + uint64(n)
	t.seq = q.seq
	q.seq++
	f.end = t.end
	f.queued++
	q.queued += cost
	heap.Push(&q.waiting, t)
	return false, nil
}

var errQueueFull = errors.New("yamux: write queue full")

// queuedBytes is how many bytes the queued copies hold.
func (q *writeQueue) queuedBytes() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued
}

// WriteQueued is how many bytes the frame copies that wait in the
// session's write queue hold now (each a 4 or 64 KiB buffer and its
// header) until whoever holds the connection writes them: at most about
// 1 MiB (maxQueuedBytes). Patched for tunnelworks (PATCHED.md, patch
// 19).
func (s *Session) WriteQueued() int { return s.writes.queuedBytes() }

// drop forgets f's queued frames (its stream was reset: the peer would
// drop them). A frame being written now is not among them.
func (q *writeQueue) drop(f *writeFlow) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if f.queued == 0 {
		return
	}
	var mine []*writeTurn
	for _, t := range q.waiting {
		if t.frame != nil && t.frame.flow == f {
			mine = append(mine, t)
		}
	}
	for _, t := range mine {
		heap.Remove(&q.waiting, t.index)
		q.recycleLocked(t.frame)
	}
}

// fail records a failed write by the holder: queued frames are dropped
// from now on.
func (q *writeQueue) fail(err error) {
	q.mu.Lock()
	if q.failed == nil {
		q.failed = err
	}
	q.mu.Unlock()
}

// recycleLocked gives a written or dropped frame back to its pool.
func (q *writeQueue) recycleLocked(qf *queuedFrame) {
	n := len(qf.body)
	q.queued -= frameCost(n)
	qf.flow.queued--
	qf.flow, qf.turn.frame, qf.body = nil, nil, qf.body[:0]
	queuedFramePools[frameClass(n)].Put(qf)
}

// writeFlow is one flow's place in the queue: the virtual time at which
// its last frame ends, and its turn when it waits (one at a time). Only
// the queue touches it, under mu.
type writeFlow struct {
	end    uint64
	turn   writeTurn
	queued int // frames in the queue (patch 19)
}

// writeTurn is a waiting writer.
type writeTurn struct {
	start, end, seq uint64
	index           int           // in the heap
	ready           chan struct{} // gets a value when the turn is granted
	granted         bool
	frame           *queuedFrame // a queued copy, written by the holder (patch 19)
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
// whose frame ends first. Queued frames whose turn comes first it writes
// itself (patch 19), up to maxDrainBytes: a writer that drained for
// longer would keep its own stream from reading its socket, and sendLoop
// its window updates from going out, while other writers kept the queue
// from emptying. Past that, a goroutine of its own takes over the rest. A
// failed write drops the queued frames and is passed to onFail once.
func (q *writeQueue) release() {
	drained := 0
	q.mu.Lock()
	for len(q.waiting) > 0 {
		t := q.waiting[0]
		if t.frame != nil && drained >= maxDrainBytes && q.failed == nil {
			q.mu.Unlock()
			go q.release() // still busy: the connection is handed over
			return
		}
		heap.Pop(&q.waiting)
		q.now = later(q.now, t.start)
		if t.frame == nil {
			t.granted = true
			t.ready <- struct{}{}
			q.mu.Unlock()
			return
		}
		qf := t.frame
		if q.failed == nil {
			q.mu.Unlock()
			_, err := q.conn.Write(qf.hdr[:])
			if err == nil && len(qf.body) > 0 {
				_, err = q.conn.Write(qf.body)
			}
			drained += headerSize + len(qf.body)
			q.mu.Lock()
			if err != nil && q.failed == nil {
				q.failed = err
				q.mu.Unlock()
				q.onFail(err)
				q.mu.Lock()
			}
		}
		q.recycleLocked(qf)
	}
	q.busy = false
	q.mu.Unlock()
}

// releaseNoWrite is release for recvLoop (patch 21), which must not
// write others' queued frames: a write can wait for the peer, and the
// peer's receive loop for ours. If any wait, a goroutine of its own
// hands the connection on.
func (q *writeQueue) releaseNoWrite() {
	q.mu.Lock()
	if len(q.waiting) == 0 {
		q.busy = false
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	go q.release()
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
