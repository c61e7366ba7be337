package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// openFailures is how many local connections each test below makes
// that the agent cannot open a stream for.
const openFailures = 20

// serverForward is a server's forward block: name, on an ephemeral
// loopback port, to the service "anything" of client.
func serverForward(name, client string) string {
	return fmt.Sprintf("forward %q {\n  listen  = \"127.0.0.1:0\"\n  client  = %q\n  service = \"anything\"\n}\n", name, client)
}

// refusedLocally connects n times to addr and waits for each connection
// to be refused (closed or reset without a byte).
func refusedLocally(t *testing.T, addr string, n int) {
	t.Helper()
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			continue // reset before the dial returned
		}
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if k, err := c.Read(make([]byte, 1)); err == nil || k > 0 {
			t.Fatalf("local connection %d was served, want it refused", i)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("local connection %d neither served nor refused", i)
		}
		c.Close()
	}
}

// A client whose session to the server stays up but takes no streams
// (it said it drains, and keeps the session) makes every connection to a
// server forward naming it fail to open: one line per interval, however
// many connections.
func TestServerForwardOpenFailuresLoggedOnce(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: serverForward("to-hostile", "hostile")})
	sess := hostileClient(t, f, "hostile")
	waitFor(t, "the client's session on the server", func() bool {
		held, _ := f.srv.sessions.find(clientMatcher("hostile"), classBulk)
		return held != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sess.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server to see the client drain", func() bool {
		held, _ := f.srv.sessions.find(clientMatcher("hostile"), classBulk)
		if held == nil {
			return false
		}
		select {
		case <-held.PeerDraining():
			return true
		default:
			return false
		}
	})
	refusedLocally(t, f.srv.Addr("to-hostile").String(), openFailures)
	if c := warnLines(f.srvLog.String(), "connection refused: cannot open stream"); c != 1 {
		t.Errorf("%d lines for %d local connections refused, want 1", c, openFailures)
	}
	// Each is counted; refusedLocally returns once the agent reset it,
	// after the count.
	if n := metricValue(t, f.srv.metrics.StreamsFailed.WithLabelValues("forward", "to-hostile", "open_failed")); n != openFailures {
		t.Errorf("%v refusals counted, want %d", n, openFailures)
	}
}

// A local application that holds as many connections through a client's
// forward as the client may hold resumable streams to the server has
// every further one refused: one line per interval, however many.
func TestClientForwardOpenFailuresLoggedOnce(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	// Two streams per session: a bound of resumable streams a test can
	// reach (resumeBound), and room for both control streams.
	cli, log, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "max_streams_per_session = 2\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "the session", func() bool { return cli.Session() != nil })
	addr := cli.Addr("echo").String()
	bound := cli.resumeBound()
	for i := range bound {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoOnce(c, "held"); err != nil {
			t.Fatalf("held connection %d of %d: %v", i, bound, err)
		}
	}
	refusedLocally(t, addr, openFailures)
	if c := warnLines(log.String(), "connection refused: cannot open stream"); c != 1 {
		t.Errorf("%d lines for %d local connections refused, want 1", c, openFailures)
	}
	if n := metricValue(t, cli.metrics.StreamsFailed.WithLabelValues("forward", "echo", "open_failed")); n != openFailures {
		t.Errorf("%v refusals counted, want %d", n, openFailures)
	}
}

// A server that drains every session of ours as soon as it is up (one
// stopping, or hostile) is not reconnected to at once in a loop with two
// lines per session: from the second such drain in a row the client
// backs off, and says so once per interval.
func TestServerDrainingEverySessionLoggedOnce(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	addr, sessions := hostileServer(t, f)
	stop := make(chan struct{})
	var draining sync.WaitGroup
	draining.Go(func() {
		for {
			select {
			case sess := <-sessions:
				draining.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_ = sess.Drain(ctx)
				})
			case <-stop:
				return
			}
		}
	})
	t.Cleanup(func() { close(stop); draining.Wait() })
	_, log, _ := f.startClientOf(t, addr, pki.Options{CommonName: "edge"}, "bulk_connections = 1\n")
	const drained = 5
	waitFor(t, "sessions to come up and be drained", func() bool {
		return strings.Count(log.String(), "session up") > drained
	})
	s := log.String()
	if n := strings.Count(s, "server is draining") + strings.Count(s, "server drained the new session too"); n > 2 {
		t.Errorf("%d lines about the server draining for %d sessions, want at most 2", n, strings.Count(s, "session up"))
	}
}

// A certificate's holder that connects and closes sessions in a loop
// gets at most sessionLineBurst "session up" and "session ended" lines on
// the server (within a minute), not one each per session; the metrics
// count every session.
func TestSessionLoopLogsABurst(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "")
	// Sessions of a keeper that is not run (control class, which the
	// client does not use): with the client's certificate, as its holder.
	hostile := newKeeper(cli, classControl, 0, nil)
	addr := f.srv.Addr("tunnel").String()
	held := func() float64 { return metricValue(t, f.srv.metrics.Sessions.WithLabelValues(classControl)) }
	const loops = 3 * sessionLineBurst
	for i := range loops {
		sess, err := hostile.connect(f.ctx, addr)
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		// Up on the server (its line logged, or not) before it ends.
		waitFor(t, "the server to hold the session", func() bool { return held() == 1 })
		sess.Close()
		// The gauge drops after the server's line about the end.
		waitFor(t, "the server to end the session", func() bool { return held() == 0 })
	}
	if n := metricValue(t, f.srv.metrics.SessionsUp.WithLabelValues(classControl)); n != loops {
		t.Errorf("%v control sessions counted, want %d", n, loops)
	}
	log := f.srvLog.String()
	up, ended := strings.Count(log, "session up:"), strings.Count(log, "session ended:")
	if up > sessionLineBurst || ended > sessionLineBurst {
		t.Errorf("%d session up and %d session ended lines for %d sessions, want at most %d each", up, ended, loops, sessionLineBurst)
	}
	if up < sessionLineBurst/2 {
		t.Errorf("%d session up lines: the first sessions of a minute are each logged", up)
	}
}

// A forward at its max_conns refuses the connections past it at once,
// counts each and logs one line; a connection it held ending frees a
// slot.
func TestForwardMaxConnsRefusesCountsLogsOnce(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	cli, log, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "forward \"echo\" {\n  listen = \"127.0.0.1:0\"\n  max_conns = 2\n}\n")
	waitFor(t, "the session", func() bool { return cli.Session() != nil })
	addr := cli.Addr("echo").String()
	var held []net.Conn
	for i := range 2 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoOnce(c, "held"); err != nil {
			t.Fatalf("held connection %d: %v", i, err)
		}
		held = append(held, c)
	}
	refusedLocally(t, addr, openFailures)
	if c := warnLines(log.String(), "connection refused: forward at its connection limit"); c != 1 {
		t.Errorf("%d lines for %d local connections refused, want 1", c, openFailures)
	}
	if n := metricValue(t, cli.metrics.StreamsFailed.WithLabelValues("forward", "echo", "max_conns")); n != openFailures {
		t.Errorf("%v refusals counted, want %d", n, openFailures)
	}
	if st := cli.status(); len(st.Forwards) != 1 || st.Forwards[0].Refused != openFailures {
		t.Errorf("status forwards %+v, want echo with %d refused", st.Forwards, openFailures)
	}
	held[0].Close()
	// The slot is freed once the stream's goroutine ends: retry until a
	// connection is served (each refused one is counted, not logged).
	waitFor(t, "a connection served after one held ended", func() bool {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		return echoOnce(c, "after") == nil
	})
}

// A server forward whose client is not connected refuses each local
// connection at once: each counted, one line.
func TestServerForwardNoClientCountsLogsOnce(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: serverForward("to-nobody", "nobody")})
	refusedLocally(t, f.srv.Addr("to-nobody").String(), openFailures)
	if c := warnLines(f.srvLog.String(), "connection refused: client not connected"); c != 1 {
		t.Errorf("%d lines for %d local connections refused, want 1", c, openFailures)
	}
	if n := metricValue(t, f.srv.metrics.StreamsFailed.WithLabelValues("forward", "to-nobody", "no_session")); n != openFailures {
		t.Errorf("%v refusals counted, want %d", n, openFailures)
	}
}
