package agent

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/internal/echocheck"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// bulkSessions are the server's bulk sessions, by lane.
func bulkSessions(s *Server) map[int]*mux.Session {
	out := map[int]*mux.Session{}
	for k, sess := range s.sessions.snapshot() {
		if k.class == classBulk {
			out[k.lane] = sess
		}
	}
	return out
}

// With bulk_connections = 3 the client holds three bulk sessions. Every
// stream starts on lane 0; one that turns heavy moves to the least busy
// of lanes 1 and 2, its old carrier freed at both ends, while a light
// stream stays on lane 0, every byte checked throughout. When a lane's
// session dies the others carry on, and its streams resume on that lane's
// next session.
func TestBulkLanesCarryHeavyStreams(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "bulk_connections = 3\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "three bulk lanes", func() bool {
		lanes := cli.Lanes(classBulk)
		return len(lanes) == 3 && lanes[0] != nil && lanes[1] != nil && lanes[2] != nil
	})
	waitFor(t, "three lanes on the server", func() bool { return len(bulkSessions(f.srv)) == 3 })
	if got := len(cli.keeperList()[classControl]); got != 0 {
		t.Fatalf("%d control keepers for a client without control forwards", got)
	}
	lanes := cli.Lanes(classBulk)
	if !lanes[0].PeerHello.Has(mux.CapLanes) {
		t.Fatal("the server did not announce lanes")
	}
	srvLanes := bulkSessions(f.srv)

	addr := cli.Addr("echo").String()
	light := dialMessages(t, addr)
	streams := startEchoStreams(t, addr, 4)
	if n := lanes[0].NumStreams(); n != 5 {
		t.Fatalf("lane 0 holds %d streams, want all 5 at their start", n)
	}

	burstUntilMoved(t, streams, lanes[0], 5)
	waitFor(t, "four moves counted", func() bool { return cli.resume.Stats().Moved == 4 })
	light.exchange(t, 100)
	for _, s := range streams {
		s.Advance(t, 64<<10)
	}
	for lane, want := range []int{1, 2, 2} {
		if n := lanes[lane].NumStreams(); n != want {
			t.Errorf("lane %d holds %d streams, want %d", lane, n, want)
		}
		// yamux also holds each side's control stream.
		if n := lanes[lane].WireStreams(); n != want+2 {
			t.Errorf("lane %d: yamux holds %d streams, want %d and the 2 control streams (a moved stream's old carrier not freed)", lane, n, want)
		}
		waitFor(t, "the server's lanes to match", func() bool {
			return srvLanes[lane].NumStreams() == want && srvLanes[lane].WireStreams() == want+2
		})
	}
	if st := cli.resume.Stats(); st.Resumed != 0 {
		t.Errorf("moves counted as resumes: %+v", st)
	}
	// The server counts a move once its resend is done, which may be
	// after its lanes hold the streams.
	waitFor(t, "the server to count four moves", func() bool { return f.srv.resume.Stats().Moved == 4 })
	if st := f.srv.resume.Stats(); st.Moved != 4 || st.Resumed != 0 {
		t.Errorf("server counts %d moves and %d resumes, want 4 and 0", st.Moved, st.Resumed)
	}
	st := cli.status()
	seen := map[int]bool{}
	for _, s := range st.Sessions {
		if s.Class == classBulk {
			seen[s.Lane] = true
		}
	}
	if !seen[0] || !seen[1] || !seen[2] || !st.Healthy {
		t.Errorf("status: %+v", st.Sessions)
	}

	// Lane 1 dies: the other lanes' streams carry on and new streams go
	// to lane 0; lane 1's come back on its next session.
	dead := lanes[1]
	dead.Close()
	light.exchange(t, 100)
	late := dialMessages(t, addr)
	late.exchange(t, 10)
	if n := cli.Lanes(classBulk)[0].NumStreams(); n != 2 {
		t.Errorf("lane 0 holds %d streams, want the light one and the late one", n)
	}
	waitFor(t, "lane 1's streams resumed on its next session", func() bool {
		s := cli.Lanes(classBulk)[1]
		return s != nil && s != dead && cli.resume.Stats().Resumed >= 2
	})
	if n := cli.resume.Stats().Resumed; n != 2 {
		t.Errorf("%d streams resumed, want lane 1's 2", n)
	}
	if s := cli.Lanes(classBulk)[1]; s.NumStreams() != 2 {
		t.Errorf("lane 1's new session holds %d streams, want its 2 back", s.NumStreams())
	}
	for _, s := range streams {
		s.Advance(t, 16<<10)
	}
	for _, s := range streams {
		s.Finish(t)
	}
	light.exchange(t, 10)
	late.exchange(t, 10)
	if n := cli.Lanes(classBulk)[0].NumStreams(); n != 2 {
		t.Errorf("lane 0 holds %d streams, want the two message streams still", n)
	}
	if got := len(bulkSessions(f.srv)); got != 3 {
		t.Errorf("server holds %d bulk sessions, want 3", got)
	}
}

// With bulk_spread, while the client carries nothing but heavy streams,
// nobody waits behind them: they spread over both bulk lanes, lane 0 too,
// two on each (one TLS connection is one core of crypto). The first
// stream to open afterwards sends them off lane 0, and it alone stays
// there; every byte checked throughout. (Without it they all move to
// lane 1: the e2e TestMetricsAndStatusWhileStreaming.)
func TestHeavyStreamsSpreadWhileNothingElseRides(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "bulk_connections = 2\nbulk_spread = true\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "two bulk lanes", func() bool {
		lanes := cli.Lanes(classBulk)
		return len(lanes) == 2 && lanes[0] != nil && lanes[1] != nil
	})
	waitFor(t, "two lanes on the server", func() bool { return len(bulkSessions(f.srv)) == 2 })
	lanes := cli.Lanes(classBulk)
	srvLanes := bulkSessions(f.srv)
	addr := cli.Addr("echo").String()

	streams := startEchoStreams(t, addr, 4)
	// Each turns heavy in turn: while others are still light it moves
	// off lane 0; once all are heavy they balance, two and two.
	for i, s := range streams {
		for burst := 0; len(cli.heavy.list()) < i+1; burst++ {
			if burst == 8 {
				t.Fatalf("stream %d not heavy after %d MiB echoed", i, 2*burst)
			}
			s.Burst(2 << 20)
			s.Advance(t, 2<<20)
		}
	}
	spread := func(want0, want1 int) func() bool {
		return func() bool {
			return lanes[0].NumStreams() == want0 && lanes[1].NumStreams() == want1 &&
				srvLanes[0].NumStreams() == want0 && srvLanes[1].NumStreams() == want1
		}
	}
	waitFor(t, "the heavy streams two on each lane", spread(2, 2))
	for _, s := range streams {
		s.Burst(1 << 20)
		s.Advance(t, 1<<20)
	}
	if !spread(2, 2)() {
		t.Fatalf("lanes hold %d and %d streams after more bulk, want 2 and 2", lanes[0].NumStreams(), lanes[1].NumStreams())
	}

	light := dialMessages(t, addr)
	waitFor(t, "lane 0 left to the new stream", spread(1, 4))
	light.exchange(t, 100)
	for _, s := range streams {
		s.Burst(1 << 20)
		s.Advance(t, 1<<20)
	}
	if !spread(1, 4)() {
		t.Errorf("lanes hold %d and %d streams beside a light one, want 1 and 4", lanes[0].NumStreams(), lanes[1].NumStreams())
	}
	for lane := range 2 {
		// yamux also holds each side's control stream; moved streams'
		// old carriers are freed.
		want := []int{1, 4}[lane] + 2
		waitFor(t, "old carriers freed", func() bool {
			return lanes[lane].WireStreams() == want && srvLanes[lane].WireStreams() == want
		})
	}
	if st := cli.resume.Stats(); st.Resumed != 0 {
		t.Errorf("moves counted as resumes: %+v", st)
	}
	for _, s := range streams {
		s.Finish(t)
	}
	light.exchange(t, 10)
}

// The streams the server opens (its forwards to a client's services) do
// as the client's: each starts on the client's lane 0 and one that turns
// heavy moves, by the server, to the least busy other lane, its old
// carrier freed at both ends, while a light stream stays on lane 0; every
// byte checked throughout.
func TestServerOpenedHeavyStreamsMove(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: `forward "back" {
  listen  = "127.0.0.1:0"
  client  = "edge"
  service = "echo-here"
}
`})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, fmt.Sprintf(`bulk_connections = 3
service "echo-here" {
  target = %q
}
`, echoServer(t)))
	waitFor(t, "three lanes on the server", func() bool { return len(bulkSessions(f.srv)) == 3 })
	waitFor(t, "three lanes on the client", func() bool {
		lanes := cli.Lanes(classBulk)
		return len(lanes) == 3 && lanes[0] != nil && lanes[1] != nil && lanes[2] != nil
	})
	srvLanes := bulkSessions(f.srv)
	cliLanes := cli.Lanes(classBulk)

	addr := f.srv.Addr("back").String()
	light := dialMessages(t, addr)
	streams := startEchoStreams(t, addr, 3)
	if n := srvLanes[0].NumStreams(); n != 4 {
		t.Fatalf("lane 0 holds %d streams, want all 4 at their start", n)
	}
	burstUntilMoved(t, streams, srvLanes[0], 4)
	waitFor(t, "three moves counted", func() bool { return f.srv.resume.Stats().Moved == 3 })
	light.exchange(t, 100)
	for _, s := range streams {
		s.Advance(t, 64<<10)
	}
	for lane, want := range []int{1, 2, 1} {
		waitFor(t, "both sides' lanes to hold the streams (yamux also holds each side's control stream)", func() bool {
			return srvLanes[lane].NumStreams() == want && srvLanes[lane].WireStreams() == want+2 &&
				cliLanes[lane].NumStreams() == want && cliLanes[lane].WireStreams() == want+2
		})
	}
	if st := f.srv.resume.Stats(); st.Moved != 3 || st.Resumed != 0 {
		t.Errorf("server counts %d moves and %d resumes, want 3 and 0", st.Moved, st.Resumed)
	}
	// The client counts a move once its Move returns, which may be after
	// the server has counted it.
	waitFor(t, "the client to count three moves", func() bool { return cli.resume.Stats().Moved == 3 })
	if st := cli.resume.Stats(); st.Moved != 3 || st.Resumed != 0 {
		t.Errorf("client counts %d moves and %d resumes, want 3 and 0", st.Moved, st.Resumed)
	}
	for _, s := range streams {
		s.Finish(t)
	}
	light.exchange(t, 10)
}

// A server that does not speak lanes (as one before them) gets one bulk
// session: a second of the same certificate and class would replace the
// first there.
func TestBulkLanesNeedTheServersWord(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, noLanes: true})
	cli, log, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "bulk_connections = 3\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "the client to see the server speaks no lanes", func() bool {
		return strings.Contains(log.String(), "the server does not speak lanes")
	})
	addr := cli.Addr("echo").String()
	streams := startEchoStreams(t, addr, 4)
	for _, s := range streams {
		s.Finish(t)
	}
	if got := len(bulkSessions(f.srv)); got != 1 {
		t.Errorf("server holds %d bulk sessions, want 1", got)
	}
	lanes := cli.Lanes(classBulk)
	if len(lanes) != 3 || lanes[0] == nil || lanes[1] != nil || lanes[2] != nil {
		t.Errorf("client lanes %v, want lane 0 alone", lanes)
	}
	if n := strings.Count(log.String(), "the server does not speak lanes"); n != 1 {
		t.Errorf("said %d times that the server speaks no lanes, want once per interval", n)
	}
	if s := f.srvLog.String(); strings.Contains(s, "reconnected") {
		t.Errorf("the server replaced a session:\n%s", s)
	}
}

// An extra lane the server refuses (max_sessions_per_identity) refuses no
// local connection and is logged once per interval; the class's first
// session carries everything.
func TestBulkLaneRefusedRefusesNothing(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`, extra: "max_sessions_per_identity = 1\n"})
	cli, log, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "bulk_connections = 2\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "lane 1 refused", func() bool {
		return strings.Contains(log.String(), "cannot open an extra session of the class")
	})
	for range 3 {
		if err := roundTrip(cli.Addr("echo").String(), []byte("through lane 0")); err != nil {
			t.Fatal(err)
		}
	}
	if refused := bulkRefusal(cli); refused != nil {
		t.Fatalf("a refused lane refuses local connections: %v", refused)
	}
	if !cli.healthy() {
		t.Error("unhealthy with the class's first session up")
	}
	if n := strings.Count(log.String(), "cannot open an extra session of the class"); n != 1 {
		t.Errorf("the refused lane was logged %d times, want once per interval", n)
	}
}

func TestLaneKeys(t *testing.T) {
	for _, tc := range []struct {
		class string
		lane  int
		key   string
	}{{classBulk, 0, "bulk"}, {classBulk, 1, "bulk/1"}, {classControl, 0, "control"}, {classBulk, 7, "bulk/7"}} {
		if got := laneKey(tc.class, tc.lane); got != tc.key {
			t.Errorf("laneKey(%q, %d) = %q, want %q", tc.class, tc.lane, got, tc.key)
		}
		if class, lane := splitLaneKey(tc.key); class != tc.class || lane != tc.lane {
			t.Errorf("splitLaneKey(%q) = %q, %d", tc.key, class, lane)
		}
	}
	if class, lane := splitLaneKey("bulk/x"); class != "bulk/x" || lane != 0 {
		t.Errorf("splitLaneKey of a bad lane: %q, %d", class, lane)
	}
}

// After a handover, the previous process's streams may ride lanes that a
// lowered bulk_connections leaves out: those lanes are kept (started at
// once on a running client) until the next start.
func TestKeepLanesOfHandedStreams(t *testing.T) {
	f := startFleet(t, fleetOptions{allow: `"edge"`})
	cli, _, _ := f.startClient(t, pki.Options{CommonName: "edge"}, "bulk_connections = 1\nforward \"echo\" {\n  listen = \"127.0.0.1:0\"\n}\n")
	waitFor(t, "the bulk session", func() bool { return cli.Session() != nil })
	if got := len(cli.Lanes(classBulk)); got != 1 {
		t.Fatalf("%d bulk lanes with bulk_connections = 1", got)
	}
	cli.keepLanes([]string{"bulk", "bulk/2", "control", "bulk/99"})
	waitFor(t, "lanes 1 and 2 up", func() bool {
		lanes := cli.Lanes(classBulk)
		return len(lanes) == 3 && lanes[1] != nil && lanes[2] != nil
	})
	waitFor(t, "three bulk sessions on the server", func() bool { return len(bulkSessions(f.srv)) == 3 })
	if got := len(cli.keeperList()[classControl]); got != 0 {
		t.Errorf("a control stream's lane key started %d control keepers", got)
	}
}

// messages is a connection through an echo forward that exchanges small
// messages, as a protocol's control channel does: never heavy.
type messages struct {
	c    net.Conn
	sent int
}

func dialMessages(t *testing.T, addr string) *messages {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	m := &messages{c: c}
	m.exchange(t, 1)
	return m
}

// exchange sends n 64-byte messages, each after the echo of the last,
// and checks every echo.
func (m *messages) exchange(t *testing.T, n int) {
	t.Helper()
	msg, got := make([]byte, 64), make([]byte, 64)
	for range n {
		m.sent++
		for i := range msg {
			msg[i] = byte(m.sent + i)
		}
		_ = m.c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := m.c.Write(msg); err != nil {
			t.Fatalf("message %d: %v", m.sent, err)
		}
		if _, err := io.ReadFull(m.c, got); err != nil {
			t.Fatalf("echo of message %d: %v", m.sent, err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echo of message %d differs", m.sent)
		}
	}
}

// startEchoStreams starts n checked echo streams through addr, one after
// the other, each open (4 KiB echoed) before the next starts.
func startEchoStreams(t *testing.T, addr string, n int) []*echocheck.Stream {
	t.Helper()
	var streams []*echocheck.Stream
	for range n {
		s := echocheck.Start(t, addr, 20*time.Second)
		s.Advance(t, 4096)
		streams = append(streams, s)
	}
	return streams
}

// burstUntilMoved echoes bursts through each of streams in turn until it
// leaves lane0, which holds n streams at the start (heavy is 1 MiB both
// ways within a second). One at a time, so that each move sees the last.
func burstUntilMoved(t *testing.T, streams []*echocheck.Stream, lane0 *mux.Session, n int) {
	t.Helper()
	for i, s := range streams {
		for burst := 0; lane0.NumStreams() == n-i; burst++ {
			if burst == 8 {
				t.Fatalf("stream %d still on lane 0 after %d MiB echoed", i, 2*burst)
			}
			s.Burst(2 << 20)
			s.Advance(t, 2<<20)
		}
	}
}

// bulkRefusal is the definite refusal the client's first bulk keeper
// holds (local connections are refused while it is set), or nil.
func bulkRefusal(cli *Client) error {
	k := cli.keeperList()[classBulk][0]
	k.current.mu.Lock()
	defer k.current.mu.Unlock()
	return k.current.refused
}
