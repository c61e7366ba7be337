package interop

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
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

// TestBGPResumeAcrossCutAndBlackhole: an eBGP session (3 s keepalive, 9 s
// hold) through the tunnel stays Established, the same session, across a
// reset of the tunnel connection and across a 5 s blackhole of its path
// (which the agents' liveness notices): the tunnel resumes its streams on
// a new connection. Routes announced during each outage arrive after it.
func TestBGPResumeAcrossCutAndBlackhole(t *testing.T) {
	const (
		asnA, asnB = 65001, 65002
		outage     = 5 * time.Second
	)
	portA := freePort(t)
	a := startSpeaker(t, "speaker-a", asnA, "10.0.0.1", portA)
	a.addNeighbor(t, asnB, &api.Transport{PassiveMode: true})

	// Liveness that notices the blackhole well within it.
	liveness := "ping_after = \"1s\"\ndead_after = \"3s\"\n"
	dir := pkiDir(t)
	srv := startAgent(t, "tunnel-server", dir, serverConfig(liveness+fmt.Sprintf(`service "bgp" {
  target = "127.0.0.1:%d"
  allow  = ["client-a"]
}
`, portA)))
	relay := startPathRelay(t, srv.must(reServerListening))
	cli := startAgent(t, "tunnel-client", dir, clientConfig(relay.addr(), liveness+`forward "bgp" {
  listen  = "127.0.0.1:0"
  service = "bgp"
}
`))
	cli.must(reSessionUp)
	srv.must(reServerSession)
	tn := &tunnel{server: srv, client: cli, serverAddr: relay.addr()}
	_, fwdPort, err := net.SplitHostPort(cli.must(forwardListening("bgp")))
	if err != nil {
		t.Fatal(err)
	}
	remotePort, err := strconv.ParseUint(fwdPort, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	b := startSpeaker(t, "speaker-b", asnB, "10.0.0.2", -1)
	b.addNeighbor(t, asnA, &api.Transport{RemotePort: uint32(remotePort)})

	sps := []*speaker{a, b}
	ok, desc := poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		va, errA := a.view(ctx)
		vb, errB := b.view(ctx)
		return va.state == api.PeerState_ESTABLISHED && vb.state == api.PeerState_ESTABLISHED, fmt.Sprintf("A: %s (%v), B: %s (%v)", va, errA, vb, errB)
	})
	if !ok {
		t.Fatalf("BGP session not established within %s: %s", bgpTimeout, desc)
	}
	before := []peerView{a.mustView(t), b.mustView(t)}
	t.Logf("established: A %s; B %s", before[0], before[1])
	sessionsUp := func() int { return cli.count("tunnel-client: session up:") }

	// (a) The tunnel connection is reset; B announces a route at once,
	// while the client reconnects.
	if n := relay.cut(); n == 0 {
		t.Fatal("the cut found no tunnel connection to reset")
	}
	announce(t, b, "10.97.1.0")
	cli.waitCount(regexp.MustCompile(`tunnel-client: session up:`), 2)
	expectRoute(t, a, "10.97.1.0")
	sameSession(t, "after the cut", sps, before)

	// (b) A 5 s blackhole, begun when each speaker has just had a
	// keepalive: its hold timer then has about 9 s left, 4 s more than the
	// outage, for the tunnel to notice, reconnect and resend.
	freshKeepalives(t, a, b)
	relay.hold()
	held := time.Now()
	time.Sleep(outage / 5)
	announce(t, b, "10.97.2.0")
	time.Sleep(time.Until(held.Add(outage)))
	relay.release()
	t.Logf("blackhole of %s over", time.Since(held).Round(time.Millisecond))
	expectRoute(t, a, "10.97.2.0")
	sameSession(t, "after the blackhole", sps, before)
	if n := sessionsUp(); n < 3 {
		t.Errorf("the client logged %d sessions up, want a third after the blackhole (did liveness notice it?)", n)
	}

	// Outlive another hold time: the resumed stream carries keepalives.
	time.Sleep(holdTime + 2*time.Second)
	sameSession(t, "a hold time after the outages", sps, before)
	for _, sp := range sps {
		if strings.Contains(sp.log.String(), "Peer Down") {
			t.Errorf("%s saw the session go down", sp.log.name)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	if err := b.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatalf("B: stop BGP: %v", err)
	}
	tn.client.waitCount(regexp.MustCompile(`tunnel-client: stream closed: .*\bforward=bgp\b`), 1)
	tn.stop()
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
