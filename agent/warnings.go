package agent

import (
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/hashicorp/go-hclog"
)

// SetupWarnings are what a configuration allows but an operator should
// hear about: a private key file that group or others can read, and an
// admin listener served beyond loopback without authentication. validate
// prints them, run logs them at start and on every reload; neither fails.
func SetupWarnings(keyFile, adminAddr string, adminPublic bool) []string {
	var out []string
	// Windows has no mode bits to speak of: os.Stat reports 0666 for any
	// writable file.
	if runtime.GOOS != "windows" {
		if st, err := os.Stat(keyFile); err == nil && st.Mode().Perm()&0o077 != 0 {
			out = append(out, fmt.Sprintf("private key %s is readable or writable by group or others (mode %04o): run chmod 600 %s", keyFile, st.Mode().Perm(), keyFile))
		}
	}
	if adminAddr != "" && adminPublic && !loopbackAddr(adminAddr) {
		out = append(out, fmt.Sprintf("admin { public = true }: /metrics, /healthz and /status (peer names and addresses) are served on %s without authentication to anyone who can reach it; restrict it with a firewall or listen on loopback behind an authenticating proxy", adminAddr))
	}
	return out
}

func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func logSetupWarnings(log hclog.Logger, keyFile, adminAddr string, adminPublic bool) {
	for _, w := range SetupWarnings(keyFile, adminAddr, adminPublic) {
		log.Warn(w)
	}
}
