package tunnelbench

import (
	"bytes"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// startRelayChain and startRemoteTargets run their own executable
	// (this test binary) with -relay or -targets.
	if IsChild(os.Args[1:]) {
		os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// One relay chain carries two targets, each to its own: the echo answers
// every ping byte for byte, the sink counts and verifies a bulk stream.
func TestRelayChainCarriesEachTarget(t *testing.T) {
	tg, err := startTargets()
	if err != nil {
		t.Fatal(err)
	}
	defer tg.close()
	rc, err := startRelayChain(tg.echo, tg.sink)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.close()
	if len(rc.pids()) != 2 {
		t.Fatalf("%d relay processes, want 2", len(rc.pids()))
	}
	rtts, err := pingPong(rc.dialer(0), 100, 64, time.Now().Add(10*time.Second))
	if err != nil || len(rtts) != 100 {
		t.Fatalf("ping through the relays: %d round trips, %v", len(rtts), err)
	}
	if _, moved, err := throughput(rc.dialer(1), 1, 200*time.Millisecond); err != nil || moved == 0 {
		t.Fatalf("bulk through the relays: %d bytes, %v", moved, err)
	}
}

// The targets in a process of their own answer as the in-process ones do,
// and go away with close.
func TestRemoteTargetsServeEchoAndSink(t *testing.T) {
	rt, err := startRemoteTargets()
	if err != nil {
		t.Fatal(err)
	}
	if rt.cmd.Process.Pid == os.Getpid() {
		t.Fatal("targets run in this process")
	}
	rtts, err := pingPong(tcpDialer(rt.echo), 100, 64, time.Now().Add(10*time.Second))
	if err != nil || len(rtts) != 100 {
		t.Fatalf("ping: %d round trips, %v", len(rtts), err)
	}
	if _, moved, err := throughput(tcpDialer(rt.sink), 1, 200*time.Millisecond); err != nil || moved == 0 {
		t.Fatalf("bulk: %d bytes, %v", moved, err)
	}
	rt.close()
	if rt.cmd.ProcessState == nil {
		t.Fatal("targets process not ended and waited for by close")
	}
	if _, err := pingPong(tcpDialer(rt.echo), 1, 64, time.Now().Add(2*time.Second)); err == nil {
		t.Fatal("echo still answers after close")
	}
}

func TestRelayBadSpec(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{relayFlag, "127.0.0.1:0=127.0.0.1:1,nonsense"}, &out, &errb); code != 2 {
		t.Errorf("exit %d, want 2 (stderr %q)", code, errb.String())
	}
	if !bytes.Contains(errb.Bytes(), []byte("want LISTEN=TARGET")) || out.Len() != 0 {
		t.Errorf("stdout %q, stderr %q: want only the usage on stderr", out.String(), errb.String())
	}
}

func TestBadCommandLine(t *testing.T) {
	for _, args := range [][]string{{"-scenario", "moon"}, {"extra"}, {"-idle", "0"}, {"-nope"}} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.99, 10}, {1, 10}, {0.1, 1}} {
		if got := percentile(d, c.q); got != c.want {
			t.Errorf("p%v = %v, want %v", c.q*100, got, c.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

func TestRowTargets(t *testing.T) {
	for _, c := range []struct {
		r    row
		want string
	}{
		{row{base: 10, tunnel: 3, higherBetter: true, ratio: 0.28}, "ok"},
		{row{base: 10, tunnel: 2, higherBetter: true, ratio: 0.28}, "FAIL"},
		{row{base: 10, tunnel: 40, ratio: 5}, "ok"},
		{row{base: 10, tunnel: 60, ratio: 5}, "FAIL"},
		{row{base: -1, tunnel: 39, abs: true, ratio: 40}, "ok"},
		{row{base: -1, tunnel: 41, abs: true, ratio: 40}, "FAIL"},
		{row{base: 1, tunnel: 1}, ""},
	} {
		if got := c.r.pass(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.r, got, c.want)
		}
	}
}
