//go:build !unix

package forward

import "net"

// waitSocketReadable cannot peek here: the caller's Read waits instead.
func waitSocketReadable(net.Conn) error { return nil }
