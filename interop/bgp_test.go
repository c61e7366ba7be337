package interop

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	bgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// bgpTimeout bounds each wait on the BGP speakers (session, route).
const bgpTimeout = 30 * time.Second

// Session timers: short, so that a tunnel dropping keepalives shows quickly.
const (
	connectRetry = 1 * time.Second
	holdTime     = 9 * time.Second
	keepalive    = 3 * time.Second
)

var ipv4Unicast = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// bgpLogger collects GoBGP's log in memory; the test prints it on failure.
// (The speakers' goroutines outlive the test, so they must not use t.Log.)
type bgpLogger struct {
	name  string
	mu    sync.Mutex
	lines []string
	level bgplog.LogLevel
}

func (l *bgpLogger) add(level, msg string, fields bgplog.Fields) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf("%s %s %s: %s %v", time.Now().Format("15:04:05.000"), l.name, level, msg, fields))
}

func (l *bgpLogger) Panic(msg string, f bgplog.Fields) { l.add("PANIC", msg, f); panic(msg) }
func (l *bgpLogger) Fatal(msg string, f bgplog.Fields) { l.add("FATAL", msg, f); panic(msg) }
func (l *bgpLogger) Error(msg string, f bgplog.Fields) { l.add("ERROR", msg, f) }
func (l *bgpLogger) Warn(msg string, f bgplog.Fields)  { l.add("WARN", msg, f) }
func (l *bgpLogger) Info(msg string, f bgplog.Fields)  { l.add("INFO", msg, f) }
func (l *bgpLogger) Debug(msg string, f bgplog.Fields) {
	if l.GetLevel() >= bgplog.DebugLevel {
		l.add("DEBUG", msg, f)
	}
}

func (l *bgpLogger) SetLevel(level bgplog.LogLevel) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.level = level
}

func (l *bgpLogger) GetLevel() bgplog.LogLevel {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level
}

func (l *bgpLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// speaker is one in-process GoBGP instance.
type speaker struct {
	*server.BgpServer
	log *bgpLogger
}

// startSpeaker starts GoBGP with asn and routerID, listening on
// 127.0.0.1:listenPort (or nowhere when listenPort is -1).
func startSpeaker(t *testing.T, name string, asn uint32, routerID string, listenPort int32) *speaker {
	t.Helper()
	l := &bgpLogger{name: name, level: bgplog.InfoLevel}
	s := server.NewBgpServer(server.LoggerOption(l))
	go s.Serve() // GoBGP's main loop has no way to stop; it idles once StopBgp is done.
	g := &api.Global{Asn: asn, RouterId: routerID, ListenPort: listenPort}
	if listenPort > 0 {
		g.ListenAddresses = []string{"127.0.0.1"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		t.Fatalf("%s: start BGP: %v", name, err)
	}
	sp := &speaker{BgpServer: s, log: l}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
		defer cancel()
		stopped := make(chan error, 1)
		go func() { stopped <- s.StopBgp(ctx, &api.StopBgpRequest{}) }()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("%s: stop BGP: %v", name, err)
			}
		case <-ctx.Done():
			t.Errorf("%s: StopBgp did not return within %s", name, bgpTimeout)
		}
		if t.Failed() {
			t.Logf("%s GoBGP log:\n%s", name, l)
		}
	})
	return sp
}

// addNeighbor adds 127.0.0.1 as an eBGP neighbor with short timers.
func (s *speaker) addNeighbor(t *testing.T, peerASN uint32, transport *api.Transport) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: peerASN},
		Transport: transport,
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry:           uint64(connectRetry / time.Second),
			HoldTime:               uint64(holdTime / time.Second),
			KeepaliveInterval:      uint64(keepalive / time.Second),
			IdleHoldTimeAfterReset: 1,
		}},
		AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: ipv4Unicast, Enabled: true}}},
	}})
	if err != nil {
		t.Fatalf("%s: add neighbor: %v", s.log.name, err)
	}
}

// sessionState is the state of the session with neighbor 127.0.0.1.
func (s *speaker) sessionState(ctx context.Context) (api.PeerState_SessionState, error) {
	var state api.PeerState_SessionState
	err := s.ListPeer(ctx, &api.ListPeerRequest{Address: "127.0.0.1"}, func(p *api.Peer) {
		state = p.GetState().GetSessionState()
	})
	return state, err
}

// prefixes lists the IPv4 unicast prefixes in the global RIB, with the next
// hop and AS path of the best path of each.
func (s *speaker) prefixes(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	err := s.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast}, func(d *api.Destination) {
		for _, p := range d.GetPaths() {
			if !p.GetBest() {
				continue
			}
			var nextHop string
			var asPath []string
			for _, a := range p.GetPattrs() {
				m, err := a.UnmarshalNew()
				if err != nil {
					continue
				}
				switch attr := m.(type) {
				case *api.NextHopAttribute:
					nextHop = attr.GetNextHop()
				case *api.AsPathAttribute:
					for _, seg := range attr.GetSegments() {
						for _, n := range seg.GetNumbers() {
							asPath = append(asPath, strconv.FormatUint(uint64(n), 10))
						}
					}
				}
			}
			out[d.GetPrefix()] = fmt.Sprintf("nexthop=%s aspath=[%s]", nextHop, strings.Join(asPath, " "))
		}
	})
	return out, err
}

// poll calls cond every 100 ms until it returns true or timeout passes,
// and returns the last description cond gave.
func poll(timeout time.Duration, cond func(ctx context.Context) (bool, string)) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		ok, desc := cond(ctx)
		if ok {
			return true, desc
		}
		last = desc
		select {
		case <-ctx.Done():
			return false, last
		case <-tick.C:
		}
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int32 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return int32(ln.Addr().(*net.TCPAddr).Port)
}

func ipv4Path(t *testing.T, prefix string, length uint32, nextHop string) *api.Path {
	t.Helper()
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: prefix, PrefixLen: length})
	if err != nil {
		t.Fatal(err)
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		t.Fatal(err)
	}
	nh, err := anypb.New(&api.NextHopAttribute{NextHop: nextHop})
	if err != nil {
		t.Fatal(err)
	}
	return &api.Path{Family: ipv4Unicast, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}
}

// TestBGP runs an eBGP session between two GoBGP speakers through the
// tunnel. Speaker B (AS 65002) dials the tunnel client's forward; the tunnel
// server dials speaker A (AS 65001) from 127.0.0.1, which A knows as its
// passive neighbor. B announces and then withdraws 10.99.0.0/24.
func TestBGP(t *testing.T) {
	const (
		asnA, asnB = 65001, 65002
		prefix     = "10.99.0.0/24"
	)
	portA := freePort(t)
	a := startSpeaker(t, "speaker-a", asnA, "10.0.0.1", portA)
	a.addNeighbor(t, asnB, &api.Transport{PassiveMode: true})

	dir := pkiDir(t)
	tn := startTunnel(t, dir,
		fmt.Sprintf(`service "bgp" {
  target = "127.0.0.1:%d"
  allow  = ["client-a"]
}
`, portA),
		`forward "bgp" {
  listen  = "127.0.0.1:0"
  service = "bgp"
}
`)
	fwd := tn.client.must(forwardListening("bgp"))
	_, fwdPort, err := net.SplitHostPort(fwd)
	if err != nil {
		t.Fatalf("forward address %q: %v", fwd, err)
	}
	remotePort, err := strconv.ParseUint(fwdPort, 10, 16)
	if err != nil {
		t.Fatalf("forward port %q: %v", fwdPort, err)
	}

	b := startSpeaker(t, "speaker-b", asnB, "10.0.0.2", -1)
	b.addNeighbor(t, asnA, &api.Transport{RemotePort: uint32(remotePort)})

	established := func(ctx context.Context) (bool, string) {
		sa, errA := a.sessionState(ctx)
		sb, errB := b.sessionState(ctx)
		desc := fmt.Sprintf("A: %v (%v), B: %v (%v)", sa, errA, sb, errB)
		return sa == api.PeerState_ESTABLISHED && sb == api.PeerState_ESTABLISHED, desc
	}
	start := time.Now()
	if ok, desc := poll(bgpTimeout, established); !ok {
		t.Fatalf("BGP session not established within %s: %s", bgpTimeout, desc)
	}
	t.Logf("BGP session established through the tunnel in %s", time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	added, err := b.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: ipv4Path(t, "10.99.0.0", 24, "127.0.0.1")})
	if err != nil {
		t.Fatalf("B: add path: %v", err)
	}

	want := fmt.Sprintf("nexthop=127.0.0.1 aspath=[%d]", asnB)
	ok, desc := poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		got, err := a.prefixes(ctx)
		if err != nil {
			return false, err.Error()
		}
		return got[prefix] == want, fmt.Sprint(got)
	})
	if !ok {
		t.Fatalf("A's RIB did not get %s %s within %s; it has %s", prefix, want, bgpTimeout, desc)
	}

	if err := b.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast, Uuid: added.GetUuid()}); err != nil {
		t.Fatalf("B: delete path: %v", err)
	}
	ok, desc = poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		got, err := a.prefixes(ctx)
		if err != nil {
			return false, err.Error()
		}
		_, present := got[prefix]
		return !present, fmt.Sprint(got)
	})
	if !ok {
		t.Fatalf("A still has %s %s after B withdrew it", prefix, desc)
	}

	// Outlive the hold time: only keepalives crossing the tunnel keep the
	// session up that long.
	hold := time.NewTimer(holdTime + 2*time.Second)
	defer hold.Stop()
	<-hold.C
	ctx, cancel = context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	if ok, desc := established(ctx); !ok {
		t.Fatalf("BGP session dropped after the hold time: %s", desc)
	}
	for _, sp := range []*speaker{a, b} {
		if strings.Contains(sp.log.String(), "Peer Down") {
			t.Errorf("%s saw the session go down", sp.log.name)
		}
	}

	// Applications first, then the tunnel: B's stop sends a CEASE and
	// closes the one forwarded connection, so the agents have nothing to
	// drain when they get SIGTERM.
	if err := b.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatalf("B: stop BGP: %v", err)
	}
	ok, desc = poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		st, err := a.sessionState(ctx)
		return err == nil && st != api.PeerState_ESTABLISHED, fmt.Sprintf("A: %v (%v)", st, err)
	})
	if !ok {
		t.Fatalf("A did not see the session end after B stopped: %s", desc)
	}
	if !strings.Contains(a.log.String(), "received notification") {
		t.Errorf("A did not receive B's CEASE notification through the tunnel before the connection closed")
	}
	tn.client.waitCount(regexp.MustCompile(`tunnel-client: stream closed: .*\bforward=bgp\b`), 1)
	tn.server.waitCount(regexp.MustCompile(`tunnel-server: stream closed: .*\bservice=bgp\b`), 1)
	tn.stop()
}
