package e2e

import (
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
