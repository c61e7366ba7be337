package interop

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/tunnelworks/tunnel/internal/procwatch"
)

// peerView is what shows a BGP session flapped: a new session has a new
// uptime and came with a new OPEN.
type peerView struct {
	state      api.PeerState_SessionState
	uptime     int64 // Unix seconds the session became Established
	opens      uint64
	keepalives uint64
}

func (v peerView) String() string {
	return fmt.Sprintf("%v since %s, %d OPEN and %d KEEPALIVE received", v.state, time.Unix(v.uptime, 0).Format("15:04:05"), v.opens, v.keepalives)
}

// view is the speaker's session with neighbor 127.0.0.1.
func (s *speaker) view(ctx context.Context) (peerView, error) {
	var v peerView
	err := s.ListPeer(ctx, &api.ListPeerRequest{Address: "127.0.0.1"}, func(p *api.Peer) {
		v.state = p.GetState().GetSessionState()
		v.uptime = p.GetTimers().GetState().GetUptime().GetSeconds()
		v.opens = p.GetState().GetMessages().GetReceived().GetOpen()
		v.keepalives = p.GetState().GetMessages().GetReceived().GetKeepalive()
	})
	return v, err
}

func (s *speaker) mustView(t *testing.T) peerView {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	v, err := s.view(ctx)
	if err != nil {
		t.Fatalf("%s: list peer: %v", s.log.name, err)
	}
	return v
}

// sameSession asserts that each speaker's session is still the one in
// before: Established, same uptime, no new OPEN.
func sameSession(t *testing.T, when string, sps []*speaker, before []peerView) {
	t.Helper()
	for i, sp := range sps {
		now := sp.mustView(t)
		if now.state != api.PeerState_ESTABLISHED || now.uptime != before[i].uptime || now.opens != before[i].opens {
			t.Errorf("%s: %s's session flapped: %s, before %s", when, sp.log.name, now, before[i])
		}
	}
}

// announce has b add prefix/24 to its RIB, which it sends to its peer.
func announce(t *testing.T, b *speaker, prefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	if _, err := b.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: ipv4Path(t, prefix, 24, "127.0.0.1")}); err != nil {
		t.Fatalf("%s: add path %s: %v", b.log.name, prefix, err)
	}
}

// expectRoute waits until a has prefix/24 in its RIB.
func expectRoute(t *testing.T, a *speaker, prefix string) {
	t.Helper()
	ok, desc := poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		got, err := a.prefixes(ctx)
		if err != nil {
			return false, err.Error()
		}
		_, present := got[prefix+"/24"]
		return present, fmt.Sprint(got)
	})
	if !ok {
		t.Fatalf("%s did not get %s/24 within %s; it has %s", a.log.name, prefix, bgpTimeout, desc)
	}
}

// bgpRig is an eBGP session through a relayed tunnel: speaker B dials a
// forward, the agent at the other end dials speaker A. The forward is
// the client's (the streams are opened by the client) or, reversed, the
// server's.
type bgpRig struct {
	a, b     *speaker
	srv, cli *agentProc
	fwd      *agentProc // the agent with the forward
	relay    *pathRelay
	before   []peerView // of A and B once established
}

func startBGPRig(t *testing.T, reversed bool) *bgpRig {
	t.Helper()
	const asnA, asnB = 65001, 65002
	portA := freePort(t)
	a := startSpeaker(t, "speaker-a", asnA, "10.0.0.1", portA)
	a.addNeighbor(t, asnB, &api.Transport{PassiveMode: true})

	// Liveness that notices a 5 s blackhole well within it.
	liveness := "ping_after = \"1s\"\ndead_after = \"3s\"\n"
	service := fmt.Sprintf(`service "bgp" {
  target = "127.0.0.1:%d"
  allow  = ["client-a"]
}
`, portA)
	forward := `forward "bgp" {
  listen  = "127.0.0.1:0"
  service = "bgp"
}
`
	serverBlocks, clientBlocks := service, forward
	if reversed {
		serverBlocks = strings.Replace(forward, "service =", "client  = \"client-a\"\n  service =", 1)
		clientBlocks = strings.Replace(service, "  allow  = [\"client-a\"]\n", "", 1) // optional on the client
	}
	dir := pkiDir(t)
	srv := startAgent(t, "tunnel-server", dir, serverConfig(liveness+serverBlocks))
	relay := startPathRelay(t, srv.must(reServerListening))
	cli := startAgent(t, "tunnel-client", dir, clientConfig(relay.addr(), liveness+clientBlocks))
	fwd := cli
	if reversed {
		fwd = srv
	}
	cli.must(reSessionUp)
	srv.must(reServerSession)
	_, fwdPort, err := net.SplitHostPort(fwd.must(forwardListening("bgp")))
	if err != nil {
		t.Fatal(err)
	}
	remotePort, err := strconv.ParseUint(fwdPort, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	b := startSpeaker(t, "speaker-b", asnB, "10.0.0.2", -1)
	b.addNeighbor(t, asnA, &api.Transport{RemotePort: uint32(remotePort)})

	ok, desc := poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		va, errA := a.view(ctx)
		vb, errB := b.view(ctx)
		return va.state == api.PeerState_ESTABLISHED && vb.state == api.PeerState_ESTABLISHED, fmt.Sprintf("A: %s (%v), B: %s (%v)", va, errA, vb, errB)
	})
	if !ok {
		t.Fatalf("BGP session not established within %s: %s", bgpTimeout, desc)
	}
	r := &bgpRig{a: a, b: b, srv: srv, cli: cli, fwd: fwd, relay: relay, before: []peerView{a.mustView(t), b.mustView(t)}}
	t.Logf("established: A %s; B %s", r.before[0], r.before[1])
	return r
}

func (r *bgpRig) speakers() []*speaker { return []*speaker{r.a, r.b} }

// sessionsUp counts the client's tunnel sessions so far.
func (r *bgpRig) sessionsUp() int { return r.cli.countMatching(sessionUp{}) }

// sameSessionAfterHold waits out another hold time, which only keepalives
// carried by the resumed stream survive, and checks the session is still
// the first one and never went down.
func (r *bgpRig) sameSessionAfterHold(t *testing.T) {
	t.Helper()
	time.Sleep(holdTime + 2*time.Second)
	sameSession(t, "a hold time after the outages", r.speakers(), r.before)
	for _, sp := range r.speakers() {
		if strings.Contains(sp.log.String(), "Peer Down") {
			t.Errorf("%s saw the session go down", sp.log.name)
		}
	}
}

// TestBGPResumeAcrossCutAndBlackhole: an eBGP session (3 s keepalive, 9 s
// hold) through the tunnel stays Established, the same session, across a
// reset of the tunnel connection and across a 5 s blackhole of its path
// (which the agents' liveness notices): the tunnel resumes its streams on
// a new connection. Routes announced during each outage arrive after it.
// Through a client forward and through a server forward.
func TestBGPResumeAcrossCutAndBlackhole(t *testing.T) {
	t.Run("client forward", func(t *testing.T) { bgpAcrossCutAndBlackhole(t, false) })
	t.Run("server forward", func(t *testing.T) { bgpAcrossCutAndBlackhole(t, true) })
}

func bgpAcrossCutAndBlackhole(t *testing.T, reversed bool) {
	const outage = 5 * time.Second
	r := startBGPRig(t, reversed)

	// (a) The tunnel connection is reset; B announces a route at once,
	// while the client reconnects.
	if n := r.relay.cut(); n == 0 {
		t.Fatal("the cut found no tunnel connection to reset")
	}
	announce(t, r.b, "10.97.1.0")
	r.cli.waitCount(sessionUp{}, 2)
	expectRoute(t, r.a, "10.97.1.0")
	sameSession(t, "after the cut", r.speakers(), r.before)

	// (b) A 5 s blackhole, begun when each speaker has just had a
	// keepalive: its hold timer then has about 9 s left, 4 s more than the
	// outage, for the tunnel to notice, reconnect and resend.
	freshKeepalives(t, r.a, r.b)
	r.relay.hold()
	held := time.Now()
	time.Sleep(outage / 5)
	announce(t, r.b, "10.97.2.0")
	time.Sleep(time.Until(held.Add(outage)))
	r.relay.release()
	t.Logf("blackhole of %s over", time.Since(held).Round(time.Millisecond))
	expectRoute(t, r.a, "10.97.2.0")
	sameSession(t, "after the blackhole", r.speakers(), r.before)
	if n := r.sessionsUp(); n < 3 {
		t.Errorf("the client logged %d sessions up, want a third after the blackhole (did liveness notice it?)", n)
	}
	r.sameSessionAfterHold(t)

	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	if err := r.b.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatalf("B: stop BGP: %v", err)
	}
	r.fwd.waitCount(regexp.MustCompile(r.fwd.name+`: stream closed: .*\bforward=bgp\b`), 1)
	r.cli.stop()
	r.srv.stop()
}

// TestBGPResumeAcrossHandover: SIGUSR2 hands the server, then the client,
// over to a new process; the BGP session through them stays the same
// Established session, and a route announced during each handover
// arrives.
func TestBGPResumeAcrossHandover(t *testing.T) {
	// A Go program ignores SIGUSR2 unless it asks for it: an agent without
	// a handover would just carry on.
	if !agentSourceMentions(t, "SIGUSR2") {
		t.Skip("the agents do not handle SIGUSR2 yet (no handover to test)")
	}
	r := startBGPRig(t, false)
	for i, p := range []*agentProc{r.srv, r.cli} {
		succ := p.handover(t)
		t.Cleanup(func() { p.stopSuccessor(t, succ) })
		prefix := fmt.Sprintf("10.97.%d.0", 10+i)
		announce(t, r.b, prefix)
		r.cli.waitCount(sessionUp{}, i+2)
		expectRoute(t, r.a, prefix)
		sameSession(t, "after the handover of "+p.name, r.speakers(), r.before)
	}
	r.sameSessionAfterHold(t)
}

// freshKeepalives waits for a moment when each speaker received a
// keepalive less than 1.5 s ago. Both send every 3 s, so within any 3 s
// there is such a moment, whatever their phases.
func freshKeepalives(t *testing.T, sps ...*speaker) {
	t.Helper()
	last := make([]uint64, len(sps))
	at := make([]time.Time, len(sps)) // of the last change seen: none yet
	for i, sp := range sps {
		last[i] = sp.mustView(t).keepalives
	}
	deadline := time.Now().Add(4 * keepalive)
	for {
		now := time.Now()
		fresh := true
		for i, sp := range sps {
			v := sp.mustView(t)
			if v.keepalives != last[i] {
				last[i], at[i] = v.keepalives, now
			}
			if now.Sub(at[i]) > 1500*time.Millisecond {
				fresh = false
			}
		}
		if fresh {
			return
		}
		if now.After(deadline) {
			t.Fatalf("no moment within %s when both speakers had a keepalive in the last 1.5 s", 4*keepalive)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agentSourceMentions reports whether the agents' non-test sources (cmd/
// and agent/ of the main module, one directory up) contain s.
func agentSourceMentions(t *testing.T, s string) bool {
	t.Helper()
	found := false
	for _, dir := range []string{"../cmd", "../agent"} {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || found || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, err := os.ReadFile(path)
			found = found || bytes.Contains(b, []byte(s))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return found
}

// handover sends SIGUSR2 to p, which starts the binary on disk as a
// successor that takes over (same arguments, same stderr), and returns the
// successor's pid once the old process is gone.
func (p *agentProc) handover(t *testing.T) int {
	t.Helper()
	old := p.cmd.Process.Pid
	if err := p.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatalf("SIGUSR2 %s: %v", p.name, err)
	}
	succ := 0
	for deadline := time.Now().Add(startTimeout); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.done: // nothing holds its stderr any more: no successor
			t.Fatalf("%s exited (%v) after SIGUSR2 and no successor holds its stderr", p.name, p.waitErr)
		default:
		}
		if succ == 0 {
			succ = procwatch.Find(p.cmd.Args, old)
		}
		if succ != 0 && procwatch.Gone(old) {
			t.Logf("%s handed over from pid %d to pid %d", p.name, old, succ)
			return succ
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no handover within %s of SIGUSR2 (successor pid %d, old process gone: %v)", p.name, startTimeout, succ, procwatch.Gone(old))
		}
	}
}

// stopSuccessor stops a successor with SIGTERM and waits until nothing
// holds p's stderr any more (the successor has exited).
func (p *agentProc) stopSuccessor(t *testing.T, pid int) {
	t.Helper()
	if procwatch.Gone(pid) {
		return
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM %s's successor (pid %d): %v", p.name, pid, err)
		return
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		t.Errorf("%s's successor (pid %d) did not stop within %s of SIGTERM", p.name, pid, stopTimeout)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}
