package sockopt

import "net"

// Queues are what the kernel holds for one TCP connection, in bytes.
// A peer decides much of it: what it sends waits in Unread until we read
// it, and what we send waits in SendQueue until it acknowledges.
type Queues struct {
	// ReceiveBuffer is the most the kernel may hold of what the peer
	// sent (SO_RCVBUF, as the kernel reports it). Linux grows it with the
	// connection's traffic, up to the last value of net.ipv4.tcp_rmem,
	// and never shrinks it: a connection that once carried a burst keeps
	// a deep queue for the rest of its life.
	ReceiveBuffer int
	// Unread: received, not yet read by us.
	Unread int
	// SendBuffer is the most the kernel may hold of what we wrote
	// (SO_SNDBUF; grown likewise, up to net.ipv4.tcp_wmem's last value).
	SendBuffer int
	// SendQueue: written by us, not yet acknowledged by the peer (sent
	// or not).
	SendQueue int
}

// ReadQueues reads c's kernel queues; false where the system does not
// tell (another system than Linux, a connection that is not TCP, or a
// closed one).
func ReadQueues(c net.Conn) (Queues, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return Queues{}, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return Queues{}, false
	}
	var q Queues
	var read bool
	if err := raw.Control(func(fd uintptr) { q, read = queues(fd) }); err != nil {
		return Queues{}, false
	}
	return q, read
}
