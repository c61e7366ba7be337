package forward

import (
	"net"
	"os"
	"syscall"

	"github.com/tunnelworks/tunnel/transport/sockopt"
)

// deliverer is a stream whose session can hand small frames straight to a
// function of ours while the pipe waits with nothing in hand (resume's
// and mux's SetDeliver): one goroutine wake fewer per message received.
type deliverer interface {
	SetDeliver(f func(p []byte) int) bool
}

// largeDeliverer is a deliverer that says when its session hands it large
// frames too (mux's and resume's DeliversLarge): only then does a pipe
// holding a large buffer gain from parking to let it.
type largeDeliverer interface {
	DeliversLarge() bool
}

// directDelivery writes frames from src's session straight to dst's
// socket, for a pipe parked with nothing in hand: every byte it read is
// written, so these cannot overtake any. Its functions are bound once per
// pipe: an idle stream sits parked with them set.
type directDelivery struct {
	src     deliverer
	dst     net.Conn
	rc      syscall.RawConn
	count   func(int)
	deliver func(p []byte) int    // dd.write
	onFD    func(fd uintptr) bool // dd.writeFD
	p       []byte                // the write in progress
	wrote   int
	werr    error
	moved   int64 // bytes written since the last stop
	err     error // the write error that ended delivery, for the pipe
}

// newDirectDelivery returns nil when src cannot deliver directly or dst
// has no socket to write without waiting.
func newDirectDelivery(dst, src net.Conn, count func(int)) *directDelivery {
	d, ok := src.(deliverer)
	if !ok || !canWriteFD {
		return nil
	}
	rc := sockopt.RawSocket(dst)
	if rc == nil {
		return nil
	}
	dd := &directDelivery{src: d, dst: dst, rc: rc, count: count}
	dd.deliver, dd.onFD = dd.write, dd.writeFD
	return dd
}

// forBulk says whether a pipe holding a large buffer gains from parking:
// src's session now hands it large frames too.
func (dd *directDelivery) forBulk() bool {
	r, ok := dd.src.(largeDeliverer)
	return ok && r.DeliversLarge()
}

// start lets src's session deliver; false if it cannot now.
func (dd *directDelivery) start() bool { return dd.src.SetDeliver(dd.deliver) }

// stop ends delivery, waiting for a write in progress, and returns the
// bytes delivered since start, and the error of a write that failed.
func (dd *directDelivery) stop() (int64, error) {
	dd.src.SetDeliver(nil)
	n := dd.moved
	dd.moved = 0
	return n, dd.err
}

// write is the deliver function: what dst's socket takes now, never
// waiting (0 when it is full).
func (dd *directDelivery) write(p []byte) int {
	if dd.err != nil {
		return 0
	}
	dd.p, dd.wrote, dd.werr = p, 0, nil
	err := dd.rc.Write(dd.onFD)
	dd.p = nil
	if err == nil && dd.werr != nil {
		// The write took the socket's pending error (a reset): keep it
		// for the pipe, whose own write would only see EPIPE now.
		err = &net.OpError{Op: "write", Net: "tcp", Source: dd.dst.LocalAddr(), Addr: dd.dst.RemoteAddr(), Err: os.NewSyscallError("write", dd.werr)}
	}
	if err != nil {
		dd.err = err // the bytes wait in src; the pipe fails with err
		return 0
	}
	if dd.wrote > 0 {
		dd.moved += int64(dd.wrote)
		dd.count(dd.wrote)
	}
	return dd.wrote
}

func (dd *directDelivery) writeFD(fd uintptr) bool {
	dd.wrote, dd.werr = writeNoWait(fd, dd.p)
	return true // done either way: never wait in the poller
}
