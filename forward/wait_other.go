//go:build !unix

package forward

import (
	"net"
	"sync"
)

// socketWaiter cannot wait without a buffer here: the caller's Read
// waits instead.
type socketWaiter struct{}

func newSocketWaiter(net.Conn) *socketWaiter { return nil }

func (*socketWaiter) read(*sync.Pool) (*[]byte, int, error) { return nil, 0, nil }
