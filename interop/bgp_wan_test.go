package interop

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/tunnelworks/tunnel/bench/linkemu"
)

// BGP with 3 s keepalives and a 9 s hold time, through the tunnel over an
// emulated 2 Mbit/s, 40 ms RTT link (one shared FIFO bottleneck, as a WAN
// link) while a bulk transfer saturates it: the BGP forward is in the
// control class, so its keepalives never queue behind the bulk data, the
// session never flaps and routes still propagate.
func TestBGPOverSaturatedSlowLink(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 30 s")
	}
	const (
		asnA, asnB = 65001, 65002
		prefix     = "10.98.0.0/24"
		saturate   = 30 * time.Second
	)
	emu := linkemu.New(linkemu.Config{RateBitsPerSec: 2e6, OneWayDelay: 20 * time.Millisecond})
	t.Cleanup(func() { emu.Close() })

	portA := freePort(t)
	a := startSpeaker(t, "speaker-a", asnA, "10.0.0.1", portA)
	a.addNeighbor(t, asnB, &api.Transport{PassiveMode: true})

	// A sink for the bulk transfer on the server's side.
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var sinkWG sync.WaitGroup
	sinkWG.Go(func() {
		for {
			c, err := sinkLn.Accept()
			if err != nil {
				return
			}
			sinkWG.Go(func() { io.Copy(io.Discard, c); c.Close() })
		}
	})
	t.Cleanup(func() { sinkLn.Close(); sinkWG.Wait() })

	dir := pkiDir(t)
	srv := startAgent(t, "tunnel-server", dir, serverConfig(fmt.Sprintf(`ping_after = "2s"
dead_after = "8s"
service "bgp" {
  target = "127.0.0.1:%d"
  allow  = ["client-a"]
  class  = "control"
}
service "sink" {
  target = %q
  allow  = ["client-a"]
}
`, portA, sinkLn.Addr().String())))
	srvAddr := srv.must(reServerListening)
	relay, err := emu.Relay(srvAddr)
	if err != nil {
		t.Fatal(err)
	}
	cli := startAgent(t, "tunnel-client", dir, clientConfig(relay, `ping_after = "2s"
dead_after = "8s"
forward "bgp" {
  listen = "127.0.0.1:0"
  class  = "control"
}
forward "sink" {
  listen = "127.0.0.1:0"
  class  = "bulk"
}
`))
	cli.waitCount(sessionUp{}, 2) // one session per class (its first lane)
	_, port, _ := net.SplitHostPort(cli.must(forwardListening("bgp")))
	remotePort, _ := strconv.ParseUint(port, 10, 16)
	b := startSpeaker(t, "speaker-b", asnB, "10.0.0.2", -1)
	b.addNeighbor(t, asnA, &api.Transport{RemotePort: uint32(remotePort)})
	established := func(ctx context.Context) (bool, string) {
		sa, errA := a.sessionState(ctx)
		sb, errB := b.sessionState(ctx)
		return sa == api.PeerState_ESTABLISHED && sb == api.PeerState_ESTABLISHED, fmt.Sprintf("A: %v (%v), B: %v (%v)", sa, errA, sb, errB)
	}
	if ok, desc := poll(bgpTimeout, established); !ok {
		t.Fatalf("BGP not established over the slow link: %s", desc)
	}

	// Saturate the link.
	bulk, err := net.Dial("tcp", cli.must(forwardListening("sink")))
	if err != nil {
		t.Fatal(err)
	}
	var sent int64
	var bulkWG sync.WaitGroup
	stop := make(chan struct{})
	bulkWG.Go(func() {
		buf := make([]byte, 32<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = bulk.SetWriteDeadline(time.Now().Add(time.Second))
			n, err := bulk.Write(buf)
			sent += int64(n)
			if err != nil && !isTimeoutErr(err) {
				return
			}
		}
	})
	time.Sleep(3 * time.Second) // the bottleneck queue is full by now

	// A route announced while the link is saturated still propagates.
	ctx, cancel := context.WithTimeout(context.Background(), bgpTimeout)
	defer cancel()
	if _, err := b.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: ipv4Path(t, "10.98.0.0", 24, "127.0.0.1")}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	ok, desc := poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		got, err := a.prefixes(ctx)
		if err != nil {
			return false, err.Error()
		}
		_, has := got[prefix]
		return has, fmt.Sprint(got)
	})
	if !ok {
		t.Fatalf("route did not cross the saturated link: %s", desc)
	}
	t.Logf("route crossed the saturated link in %s", time.Since(start).Round(time.Millisecond))

	// Stay Established for the whole saturation, checked every half second.
	deadline := time.Now().Add(saturate)
	for time.Now().Before(deadline) {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok, desc := established(cctx)
		ccancel()
		if !ok {
			t.Fatalf("BGP session left Established under load: %s", desc)
		}
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	bulkWG.Wait()
	bulk.Close()
	t.Logf("bulk pushed %.1f MB in %s alongside BGP (2 Mbit/s link)", float64(sent)/1e6, saturate+3*time.Second)
	for _, sp := range []*speaker{a, b} {
		if strings.Contains(sp.log.String(), "Peer Down") {
			t.Errorf("%s saw the BGP session go down", sp.log.name)
		}
	}
	if n := cli.count("session ended"); n > 0 {
		t.Errorf("the client's tunnel session was torn down %d times under load", n)
	}
	if err := b.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		t.Fatal(err)
	}
	poll(bgpTimeout, func(ctx context.Context) (bool, string) {
		st, err := a.sessionState(ctx)
		return err == nil && st != api.PeerState_ESTABLISHED, ""
	})
	cli.stop()
	srv.stop()
}

func isTimeoutErr(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
