//go:build !unix

package linkemu

import "syscall"

// control leaves the socket buffers at the system default where the
// receive buffer cannot be set through a Unix descriptor.
func (e *Link) control(_, _ string, _ syscall.RawConn) error { return nil }
