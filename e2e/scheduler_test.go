package e2e

import (
	"io"
	"regexp"
	"runtime"
	"strconv"
	"testing"
)

var reScheduler = regexp.MustCompile(`go scheduler: procs=(\d+) cpus=(\d+)`)

// An agent's start says how many Ps its Go scheduler runs with and how
// many CPUs it may use, so that a CPU quota or a GOMAXPROCS left from
// tuning shows at once.
func TestAgentLogsSchedulerProcs(t *testing.T) {
	p := newPKI(t)
	text := serverHCL(p.serverCert, p.serverKey, p.caFile, "", []svc{{name: "echo", target: startEcho(t), allow: []string{"c"}}}, nil)
	t.Setenv("GOMAXPROCS", "1")
	m := startServer(t, text).waitMatch(t, reScheduler)
	procs, _ := strconv.Atoi(m[1])
	cpus, _ := strconv.Atoi(m[2])
	if procs != 1 || cpus != runtime.NumCPU() {
		t.Errorf("GOMAXPROCS=1: the server logs procs=%d cpus=%d, want procs=1 cpus=%d", procs, cpus, runtime.NumCPU())
	}
}

// While every stream the agents carry is a one-way transfer, each runs
// its Go scheduler on one P (go_sched_gomaxprocs_threads in /metrics):
// a lone upload, then two. A stream that exchanges messages takes the
// default back on both at once, and so does the transfers' end. Every
// byte arrives.
func TestTransfersRunOnOneP(t *testing.T) {
	t.Parallel()
	sink, received := startSink(t)
	sink2, received2 := startSink(t)
	adminBlock := "admin {\n  listen = \"127.0.0.1:0\"\n}\n"
	tn := startTunnel(t, tunnelSpec{
		serverExtra: adminBlock,
		clientExtra: adminBlock,
		services: []svc{
			{name: "sink", target: sink, allow: []string{"client-a"}},
			{name: "sink2", target: sink2, allow: []string{"client-a"}},
			{name: "echo", target: startEcho(t), allow: []string{"client-a"}},
		},
		forwards: []fwd{{name: "sink", service: "sink"}, {name: "sink2", service: "sink2"}, {name: "echo", service: "echo"}},
	})
	m := tn.server.waitMatch(t, reScheduler)
	if procs, _ := strconv.Atoi(m[1]); procs < 2 {
		t.Skipf("the agents run on %d P by default: nothing to take away", procs)
	}
	admins := []string{tn.server.waitMatch(t, reAdmin)[1], tn.client.waitMatch(t, reAdmin)[1]}
	procsOf := func(addr string) float64 {
		return metricValue(t, string(get(t, "http://"+addr+"/metrics")), "go_sched_gomaxprocs_threads")
	}
	defaultProcs := procsOf(admins[0])
	both := func(want float64) func() bool {
		return func() bool { return procsOf(admins[0]) == want && procsOf(admins[1]) == want }
	}

	up := startUpload(t, tn.client.forwards["sink"], received)
	waitFor(t, "both agents on one P during the lone upload", both(1))

	// A stream that exchanges messages: both back to the default while
	// it is open, and its bytes come back whole.
	e := dial(t, tn.client.forwards["echo"], waitLimit)
	msg := []byte("a message beside the transfer")
	if _, err := e.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(e, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo beside the transfer: %q, %v", got, err)
	}
	waitFor(t, "both agents back to their default Ps with a message stream open", both(defaultProcs))
	// A second upload starts while they are on the default, and the
	// message stream ends: two transfers and nothing else.
	up2 := startUpload(t, tn.client.forwards["sink2"], received2)
	e.Close()
	waitFor(t, "both agents on one P with two uploads and nothing else", both(1))

	up2.finish(t)
	up.finish(t)
	waitFor(t, "both agents back to their default Ps once the transfers ended", both(defaultProcs))
}
