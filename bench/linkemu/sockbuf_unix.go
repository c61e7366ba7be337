//go:build unix

package linkemu

import "syscall"

// control sets the relay sockets' receive buffer before they connect
// (accepted sockets inherit the listener's).
func (e *Link) control(_, _ string, rc syscall.RawConn) error {
	if e.cfg.SocketBuffer < 0 {
		return nil
	}
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, e.cfg.SocketBuffer)
	})
	if err != nil {
		return err
	}
	return serr
}
