package sockopt

import (
	"time"

	"golang.org/x/sys/unix"
)

// minRTT reads tcpi_min_rtt (µs); the kernel starts it at ^0 until the
// first sample.
func minRTT(fd uintptr) time.Duration {
	info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || info.Min_rtt == 0 || info.Min_rtt == ^uint32(0) {
		return 0
	}
	return time.Duration(info.Min_rtt) * time.Microsecond
}
