package agent

import (
	"net"
	"time"

	"github.com/tunnelworks/tunnel/mux"
)

// notePathRTT tells rtt, a ping's round trip on a session to the peer
// with certificate key peerKey at remote, to every session in sessions on
// the same path: to that peer, at that host. The least round trip sizes
// the window a session's bulk streams share beside a message stream
// (yamux patch 13), and a bulk session's own pings wait behind its bulk
// data: one that came up under load (agents starting, resumed streams
// moving onto it at once) measured several times the path's round trip
// and kept that for as long as its bulk ran, so a message beside that
// bulk waited several times as long. The peer's control session, which
// carries small messages, finds the path quiet.
//
// Every session on the path is told the least of rtt and of what each of
// them holds, so a session that came up after another's best ping learns
// it at the next ping of any.
func notePathRTT(sessions []*mux.Session, peerKey, remote string, rtt time.Duration) {
	host := remoteHost(remote)
	same := sessions[:0:0]
	least := rtt
	for _, s := range sessions {
		if s.Peer.Key() != peerKey || remoteHost(s.RemoteAddr()) != host {
			continue
		}
		same = append(same, s)
		if l := s.LeastRTT(); l > 0 && l < least {
			least = l
		}
	}
	for _, s := range same {
		s.NotePathRTT(least)
	}
}

// remoteHost is the host of a "host:port" address (all of it if it has
// no port).
func remoteHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}
