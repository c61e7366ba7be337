//go:build unix

package ssl

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketWritable polls rc for room to write, without waiting. A socket
// that polls writable takes a small write whole: the kernel reports
// POLLOUT only with a third of the send buffer free and, with
// TCP_NOTSENT_LOWAT, less than that many bytes unsent.
func socketWritable(rc syscall.RawConn) bool {
	if rc == nil {
		return false
	}
	ready := false
	err := rc.Control(func(fd uintptr) {
		p := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(p[:], 0)
		ready = err == nil && n == 1 && p[0].Revents&unix.POLLOUT != 0 && p[0].Revents&(unix.POLLERR|unix.POLLHUP) == 0
	})
	return err == nil && ready
}
