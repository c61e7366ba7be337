package agent

import (
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// The sessions on one path (a client's bulk lanes, on both sides) end up
// with the same least round trip, the least of all their pings: each
// ping's is told to the others. A second client's sessions keep their own.
func TestSessionsOnOnePathShareLeastRTT(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge", "other"`, extra: "ping_after = \"50ms\"\n"})
	body := "ping_after = \"50ms\"\nbulk_connections = 2\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n"
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, body)
	other, _, _ := f.startClient(t, pki.Options{CommonName: "other"}, "ping_after = \"50ms\"\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	// The client's sessions to the server, and the server's of the client.
	edgeSessions := func() (client, server []*mux.Session) {
		for _, s := range cli.Lanes(classBulk) {
			if s != nil {
				client = append(client, s)
			}
		}
		for _, s := range f.srv.sessions.snapshot() {
			if s.Peer.Is("edge") {
				server = append(server, s)
			}
		}
		return client, server
	}
	sameLeast := func(ss []*mux.Session) bool {
		if len(ss) != 2 {
			return false
		}
		a, b := ss[0].LeastRTT(), ss[1].LeastRTT()
		return a > 0 && a == b
	}
	waitFor(t, "both of the client's lanes, on both sides, with one least round trip", func() bool {
		c, s := edgeSessions()
		return sameLeast(c) && sameLeast(s)
	})
	c, s := edgeSessions()
	for _, sess := range append(c, s...) {
		if rtt := sess.LeastRTT(); rtt > 10*time.Second {
			t.Fatalf("least round trip %s over loopback", rtt)
		}
	}

	// The other client: its own path, told nothing of edge's, on either
	// side, through 40 of the pings (every 50 ms).
	otherServerSession := func() *mux.Session {
		for _, s := range f.srv.sessions.snapshot() {
			if s.Peer.Is("other") {
				return s
			}
		}
		return nil
	}
	waitFor(t, "the other client's session and its least round trip, on both sides", func() bool {
		c, s := other.Session(), otherServerSession()
		return c != nil && s != nil && c.LeastRTT() > 0 && s.LeastRTT() > 0
	})
	for range 40 {
		c, s := edgeSessions()
		if o := other.Session().LeastRTT(); o == c[0].LeastRTT() {
			t.Fatalf("the other client's least round trip %s is edge's: told across peers", o)
		}
		if o := otherServerSession().LeastRTT(); o == s[0].LeastRTT() {
			t.Fatalf("the server's least round trip to the other client %s is edge's: told across peers", o)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Every session knows its connection's least round trip lately, as the
// kernel measured it (the floor its windows are sized by if the path
// lengthens: yamux patch 18), and shows it in /status on both sides.
func TestSessionsShowTheKernelsMinRTT(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: "ping_after = \"50ms\"\n"})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "ping_after = \"50ms\"\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	for side, status := range map[string]func() admin.Status{"client": cli.status, "server": f.srv.status} {
		waitFor(t, side+"'s sessions with the kernel's least round trip", func() bool {
			st := status()
			for _, s := range st.Sessions {
				if s.TCPMinRTTMicros <= 0 {
					return false
				}
				if s.TCPMinRTTMicros > int64(time.Second/time.Microsecond) {
					t.Fatalf("%s: a session over loopback with a TCP least round trip of %d µs", side, s.TCPMinRTTMicros)
				}
			}
			return len(st.Sessions) > 0
		})
	}
}
