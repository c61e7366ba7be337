package handover

import (
	"fmt"
	"net"
	"os"
)

// NotifyReady tells systemd that the process is ready (READY=1) when it
// asked (NOTIFY_SOCKET): for a process that runs without a Handover,
// whose Ready says it otherwise.
func NotifyReady() error { return notify("READY=1") }

// notify sends state to the service manager when it asked for it
// (sd_notify(3)): a Type=notify systemd unit sets NOTIFY_SOCKET, a unix
// datagram socket ("@" is the abstract namespace). Without it, nothing.
func notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] != '/' && path[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%s: only unix socket paths are supported", path)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("NOTIFY_SOCKET=%s: %w", path, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("NOTIFY_SOCKET=%s: %w", path, err)
	}
	return nil
}
