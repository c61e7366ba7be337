//go:build !unix

package forward

import "net"

// socketWaiter cannot peek here: the caller's Read waits instead.
type socketWaiter struct{}

func newSocketWaiter(net.Conn) *socketWaiter { return nil }

func (*socketWaiter) wait() error { return nil }
