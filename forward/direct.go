package forward

import "net"

// deliverer is a stream whose session can hand small frames straight to a
// function of ours while the pipe waits with nothing in hand (resume's
// and mux's SetDeliver): one goroutine wake fewer per message received.
type deliverer interface {
	SetDeliver(f func(p []byte) int) bool
}

// directDelivery writes frames from src's session straight to dst, for a
// pipe parked with nothing in hand: every byte it read is written, so
// these cannot overtake any.
type directDelivery struct {
	src     deliverer
	deliver func(p []byte) int
	moved   int64 // bytes written by deliver since the last stop
	err     error // the write error that ended delivery, for the pipe
}

// newDirectDelivery returns nil when src cannot deliver directly or dst
// cannot take a write without blocking.
func newDirectDelivery(dst, src net.Conn, count func(int)) *directDelivery {
	d, ok := src.(deliverer)
	if !ok {
		return nil
	}
	write := nonBlockingWriter(dst)
	if write == nil {
		return nil
	}
	dd := &directDelivery{src: d}
	dd.deliver = func(p []byte) int {
		if dd.err != nil {
			return 0
		}
		n, err := write(p)
		if err != nil {
			dd.err = err // the bytes wait in src; the pipe fails with err
			return 0
		}
		if n > 0 {
			dd.moved += int64(n)
			count(n)
		}
		return n
	}
	return dd
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
