package sockopt

import (
	"net"
	"time"
)

// MinRTT is the least round trip the kernel measured lately on TCP
// connection c, 0 if it does not tell (another system, another kind of
// connection, no sample yet). On Linux it is tcpi_min_rtt: the least
// round trip of the connection's acknowledgements over a window
// (net.ipv4.tcp_min_rtt_wlen, 300 s by default), so unlike a least-ever
// it rises when the path lengthens under the connection.
func MinRTT(c net.Conn) time.Duration {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var d time.Duration
	if err := raw.Control(func(fd uintptr) { d = minRTT(fd) }); err != nil {
		return 0
	}
	return d
}
