package sockopt

import "golang.org/x/sys/unix"

// queues reads SO_RCVBUF and SO_SNDBUF and, with ioctl(2), SIOCINQ (bytes
// unread) and SIOCOUTQ (bytes not yet acknowledged).
func queues(fd uintptr) (Queues, bool) {
	s := int(fd)
	var q Queues
	var err error
	if q.ReceiveBuffer, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF); err != nil {
		return Queues{}, false
	}
	if q.SendBuffer, err = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_SNDBUF); err != nil {
		return Queues{}, false
	}
	if q.Unread, err = unix.IoctlGetInt(s, unix.SIOCINQ); err != nil {
		return Queues{}, false
	}
	if q.SendQueue, err = unix.IoctlGetInt(s, unix.SIOCOUTQ); err != nil {
		return Queues{}, false
	}
	return q, true
}
