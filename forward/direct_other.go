//go:build !unix

package forward

import "net"

// nonBlockingWriter: no direct delivery here.
func nonBlockingWriter(net.Conn) func(p []byte) (int, error) { return nil }
