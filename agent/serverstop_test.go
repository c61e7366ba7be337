package agent

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// A session whose handshake and admission ended as the server began to
// stop, and that joins the server's set after its drain began: it is
// drained at once (the client hears it and connects elsewhere), not left
// to take new streams on a stopping server. Seen in CI: a client's second
// lane came up on a draining server and carried the connections meant
// for its successor.
func TestSessionUpWhileStoppingIsDrained(t *testing.T) {
	// Lane 1's session waits between its admission and joining the set.
	lane1Held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: "drain_timeout = \"30s\"\n", prepare: func(s *Server) {
		s.beforePut = func(_ string, lane int) {
			if lane == 1 {
				once.Do(func() { close(lane1Held); <-release })
			}
		}
	}})
	cli, cliLog, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "bulk_connections = 2\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	srvLog := f.srvLog
	waitFor(t, "lane 0 up", func() bool { return cli.Lanes(classBulk)[0] != nil })
	select {
	case <-lane1Held:
	case <-time.After(10 * time.Second):
		t.Fatal("lane 1 did not reach the server")
	}

	// A stream in flight keeps the server draining.
	long, err := net.Dial("tcp", cli.Addr("echo").String())
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	_ = long.SetDeadline(time.Now().Add(time.Minute))
	if _, err := long.Write([]byte("hold")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}

	f.stopServer()
	waitFor(t, "the server draining", func() bool { return strings.Contains(srvLog.String(), "stopping: draining streams") })
	releaseOnce() // lane 1's session joins the set now
	waitFor(t, "the client told that lane 1 drains", func() bool {
		for _, line := range strings.Split(cliLog.String(), "\n") {
			if strings.Contains(line, "server is draining; connecting a new session") && strings.Contains(line, "lane=1") {
				return true
			}
		}
		return false
	})
	if !strings.Contains(srvLog.String(), "session came up while stopping; draining it") {
		t.Error("the server did not say why it drains a new session")
	}
	// The stream in flight still works, then ends the drain.
	if _, err := long.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(long, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	long.Close()
}
