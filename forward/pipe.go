// Package forward moves bytes between a local TCP connection and a tunnel
// stream: the listeners that accept local connections, the dialer that
// reaches targets, and the pipe that copies both ways with half-close.
package forward

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// bufSize is the large buffer: one read's worth of bulk data is one data
// frame of the tunnel's yamux (at most 64 KiB), so each frame's fixed
// costs (a turn on the session's connection, a goroutine hand-off at each
// end, system calls) are paid once per 64 KiB.
const bufSize = 64 * 1024

// Buffers are pooled: an idle connection holds none, a busy one holds one per
// direction only while it copies.
// Two sizes: a direction starts with a small buffer, which is all an idle
// or chatty connection (BGP, OpenFlow) ever holds, and moves to a large one
// once a read fills the small one. 1,000 idle streams then hold 4 KiB per
// direction instead of 32 KiB (then the large size; measured with
// bench/cmd/tunnel-bench).
const smallBufSize = 4 * 1024

var (
	bufPool      = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}
	smallBufPool = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}
)

// Meter counts bytes as a pipe moves them (metrics of long transfers move
// while they run).
type Meter interface {
	AToB(n int)
	BToA(n int)
}

type noMeter struct{}

func (noMeter) AToB(int) {}
func (noMeter) BToA(int) {}

// ErrIdle ends a pipe through which nothing moved for its idle timeout.
var ErrIdle = errors.New("idle timeout")

// Result says what a pipe moved and how it ended.
type Result struct {
	AToB, BToA int64
	// Err is the error that ended the pipe first (the cause: the other
	// direction then fails only because we closed it), nil if both
	// directions ended with a clean EOF.
	Err error
}

// Pipe copies a→b and b→a until both directions end, then closes both.
// A clean EOF in one direction half-closes the other side's write direction
// and lets the opposite direction finish, so request/response protocols that
// half-close get their whole reply. An error in either direction aborts both.
// Cancelling ctx aborts both.
//
// m, if not nil, is told of every chunk as it is written. idle, if not
// zero, aborts the pipe when no byte has moved either way for that long
// (the reaper for streams whose peers vanished without a word).
func Pipe(ctx context.Context, a, b net.Conn, m Meter, idle time.Duration) Result {
	if m == nil {
		m = noMeter{}
	}
	var (
		res     Result
		aborted sync.Once
	)
	closeBoth := func(cause error) {
		aborted.Do(func() {
			res.Err = cause
			abort(a)
			abort(b)
		})
	}
	stop := context.AfterFunc(ctx, func() { closeBoth(ctx.Err()) })
	defer stop()

	countAToB, countBToA := m.AToB, m.BToA
	if idle > 0 {
		// The last byte's time in ns since start, by the monotonic clock:
		// a step of the wall clock is not idleness.
		start := time.Now()
		var last atomic.Int64
		countAToB = func(n int) { last.Store(int64(time.Since(start))); m.AToB(n) }
		countBToA = func(n int) { last.Store(int64(time.Since(start))); m.BToA(n) }
		var mu sync.Mutex
		var timer *time.Timer
		check := func() {
			quiet := time.Since(start) - time.Duration(last.Load())
			if quiet >= idle {
				closeBoth(ErrIdle)
				return
			}
			mu.Lock()
			timer.Reset(idle - quiet)
			mu.Unlock()
		}
		mu.Lock()
		timer = time.AfterFunc(idle, check)
		mu.Unlock()
		defer func() {
			mu.Lock()
			timer.Stop()
			mu.Unlock()
		}()
	}

	var wg sync.WaitGroup
	var bToA int64
	wg.Go(func() {
		var err error
		bToA, err = copyHalf(a, b, countBToA)
		if err != nil {
			closeBoth(err)
		}
	})
	aToB, err := copyHalf(b, a, countAToB)
	if err != nil {
		closeBoth(err)
	}
	wg.Wait()
	// Both directions are done; this Once-guarded read is ordered after
	// every write to res.Err by wg.Wait.
	aborted.Do(func() {})
	_ = a.Close()
	_ = b.Close()
	res.AToB, res.BToA = aToB, bToA
	return res
}

// copyHalf copies src to dst; on clean EOF it half-closes dst.
//
// It holds a buffer only while data moves. After a short read (an idle or
// chatty connection) it gives the buffer back and waits for the next data
// without one, then reads into a small buffer; a read that fills the small
// buffer moves it to a large one, kept while reads stay large (bulk). With
// 1,000 idle streams this took tunnel RSS from 48 to 32 KiB per stream
// (both agents; bench/cmd/tunnel-bench).
func copyHalf(dst, src net.Conn, count func(int)) (int64, error) {
	var (
		bp   *[]byte
		pool *sync.Pool
		n    int64
	)
	defer func() {
		if bp != nil {
			pool.Put(bp)
		}
	}()
	direct := newDirectDelivery(dst, src, count)
	waiter := newReadWaiter(src)
	lender, _ := dst.(bufferLender)
	drain, _ := src.(bufferedSource)
	park := false
	for {
		read := 0 // bytes the wait read into bp (a socket's)
		if bp == nil || park {
			// Everything read so far is written: while we wait, frames
			// may go straight to dst from src's session.
			on := direct != nil && direct.start()
			var err error
			if park {
				waiter.wait()
			} else {
				bp, read, err = waiter.waitRead(&smallBufPool)
				pool = &smallBufPool
			}
			park = false
			if on {
				moved, werr := direct.stop()
				n += moved
				if werr != nil {
					return n, &WriteError{Err: werr}
				}
			}
			if err == io.EOF {
				return n, closeWrite(dst)
			}
			if err != nil {
				return n, &ReadError{Err: err}
			}
			if bp == nil {
				bp = smallBufPool.Get().(*[]byte)
			}
		}
		buf := *bp
		lent := read == 0 && lender != nil && pool == &bufPool
		if lent {
			buf = lender.LendBuffer()
		}
		nr, rerr := read, error(nil)
		moved := false // the source wrote to dst itself
		switch {
		case read > 0:
		case drain != nil && pool == &bufPool && (direct == nil || !direct.forBulk()):
			// Bulk from a tunnel stream whose session does not deliver
			// its large frames directly (it shares the session with
			// other bulk streams beside a stream exchanging messages):
			// the stream writes its received chunks to dst, no copy
			// into buf.
			var werr error
			nr, rerr, werr = drain.WriteBufferedTo(dst)
			if nr > 0 {
				n += int64(nr)
				count(nr)
			}
			if werr != nil {
				return n, &WriteError{Err: werr}
			}
			moved = true
		default:
			nr, rerr = src.Read(buf)
		}
		if !moved && (nr > 0 || lent) {
			var nw int
			var werr error
			if lent {
				nw, werr = lender.WriteLent(buf[:nr]) // takes buf back
			} else {
				nw, werr = dst.Write(buf[:nr])
			}
			if nr > 0 {
				n += int64(nw)
				count(nw)
			}
			if werr != nil {
				return n, &WriteError{Err: werr}
			}
		}
		if rerr == io.EOF {
			return n, closeWrite(dst)
		}
		if rerr != nil {
			return n, &ReadError{Err: rerr}
		}
		switch {
		case nr == len(buf) && pool == &smallBufPool:
			// Bulk data: move to the large buffer for the rest.
			pool.Put(bp)
			bp, pool = bufPool.Get().(*[]byte), &bufPool
		case nr < smallBufSize:
			// Idle or chatty: wait for more without a buffer.
			pool.Put(bp)
			bp = nil
		case direct != nil && nr < len(buf) && direct.forBulk():
			// Bulk, the read drained the stream, and its session
			// delivers its large frames directly (it is the only bulk
			// receiver, or nobody in the session exchanges messages):
			// wait with the buffer in hand while the session writes its
			// frames straight to dst (one goroutine hand-off and one copy
			// fewer per frame). Otherwise it waits in Read as before.
			park = true
		}
	}
}

// A bufferLender is a destination that lends the buffer bulk data is read
// into and takes it back with the bytes read, so that it can keep them
// without a copy: a resumable stream keeps what it sends until the peer
// has it (its copy was the largest memmove of a bulk transfer).
type bufferLender interface {
	// LendBuffer returns a buffer of bufSize bytes or more.
	LendBuffer() []byte
	// WriteLent writes b, the lent buffer cut to the bytes read (maybe
	// none), as Write does, and takes the buffer back.
	WriteLent(b []byte) (int, error)
}

// A bufferedSource writes what it received to a destination itself,
// from its own buffer (a tunnel stream: see mux's WriteBufferedTo). rerr
// is what Read would have returned, werr the destination's error.
type bufferedSource interface {
	WriteBufferedTo(w io.Writer) (n int, rerr, werr error)
}

// closeWrite half-closes c: TCP FIN, or a tunnel stream's FIN.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ENOTCONN) {
			return &WriteError{Err: err}
		}
		return nil
	}
	return c.Close()
}

// Reset closes a connection that the tunnel could not serve (no session,
// refused) with a TCP RST, so the application sees a failure rather than
// an empty but clean reply.
func Reset(c net.Conn) { abort(c) }

// abort closes c so that the other end learns the connection failed
// instead of seeing a clean end of data: a TCP RST, or a tunnel stream's
// reset (Abort).
func abort(c net.Conn) {
	switch c := c.(type) {
	case interface{ Abort() error }:
		_ = c.Abort()
	case *net.TCPConn:
		_ = c.SetLinger(0)
		_ = c.Close()
	default:
		_ = c.Close()
	}
}

// ReadError and WriteError say which side of a copy failed.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "read: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// Classify names how a connection ended, for the one log line per stream.
// Routine endings are not errors.
func Classify(err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, ErrIdle):
		return "idle timeout"
	case errors.Is(err, net.ErrClosed):
		return "closed locally"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "error"
}
