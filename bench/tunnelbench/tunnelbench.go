// Package tunnelbench is the tunnel-bench command (bench/cmd/tunnel-bench):
// it measures tunnel-server and tunnel-client as real processes on
// loopback, every figure beside the same measurement over direct loopback
// TCP in the same run, and prints a table with the ratios and the targets;
// with -scenario wan it runs them across a bench/linkemu link.
//
//	go run ./bench/cmd/tunnel-bench [-quick] [-scenario loopback|wan|all] [-peers stunnel,ghostunnel|none] [-duration 20s] [-agents LABEL=DIR,...] [-out FILE]
//
// See bench/README.md for what each row means.
package tunnelbench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// options are the command line.
type options struct {
	quick    bool
	scenario string
	out      string
	wanDur   time.Duration
	idle     int
	rtts     int
	runs     int      // interleaved runs of every timed row; scalars are their median
	peers    []string // the peer tunnels to measure beside ours
	others   []agentBuild
	perf     bool // count system calls and context switches with perf stat
	profile  bool // sample the 8-stream row with perf record, CPU by kind
}

// Main runs the benchmark; 0 on success (targets missed are reported, not
// failed), 1 if a measurement failed (a check failed, an agent died), 2 on
// a bad command line.
func Main(args []string, stdout, stderr io.Writer) int {
	if IsChild(args) {
		return runChild(args, stdout, stderr)
	}
	var o options
	fs := flag.NewFlagSet("tunnel-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.quick, "quick", false, "short runs (CI smoke test, under a minute per scenario)")
	fs.StringVar(&o.scenario, "scenario", "loopback", "loopback (the table), wan (through the link emulator) or all")
	fs.StringVar(&o.out, "out", "", "also write the report (markdown) to this file")
	fs.DurationVar(&o.wanDur, "duration", 0, "length of each wan run (default 20s, quick 5s)")
	fs.IntVar(&o.idle, "idle", 1000, "idle streams for the RSS measurement")
	fs.IntVar(&o.rtts, "rtts", 0, "round trips per latency measurement (default 5000; half that under load)")
	fs.IntVar(&o.runs, "runs", 0, "interleaved runs of every timed row, each path once per run; the table gives medians (default 3, quick 1)")
	peers := fs.String("peers", strings.Join(peerNames, ","), "peer tunnels to measure beside ours (comma-separated: "+strings.Join(peerNames, ", ")+"), or none")
	fs.BoolVar(&o.perf, "perf", false, "also count system calls and context switches per GB moved on each path's processes with perf stat during the throughput rows (Linux perf; as root)")
	fs.BoolVar(&o.profile, "profile", false, "also sample each path's processes with perf record during the 8-stream row and give their CPU per GB by kind of work (AES, copies, Go runtime, kernel scheduling, ...) (Linux perf; as root)")
	agents := fs.String("agents", "", "other agent builds to measure beside this tree's in the same run (loopback: interleaved; wan: the fat-link table): LABEL=DIR,... where DIR holds tunnel-server and tunnel-client")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *agents != "" {
		var err error
		if o.others, err = parseAgentBuilds(*agents); err != nil {
			fmt.Fprintf(stderr, "tunnel-bench: -agents: %v\n", err)
			return 2
		}
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tunnel-bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	switch o.scenario {
	case "loopback", "wan", "all":
	default:
		fmt.Fprintf(stderr, "tunnel-bench: -scenario %q: want loopback, wan or all\n", o.scenario)
		return 2
	}
	if *peers != "none" && *peers != "" {
		for name := range strings.SplitSeq(*peers, ",") {
			if !slices.Contains(peerNames, name) || slices.Contains(o.peers, name) {
				fmt.Fprintf(stderr, "tunnel-bench: -peers %q: want a list of %s, or none\n", *peers, strings.Join(peerNames, ", "))
				return 2
			}
			o.peers = append(o.peers, name)
		}
	}
	if o.wanDur <= 0 {
		o.wanDur = pick(o.quick, 5*time.Second, 20*time.Second)
	}
	if o.rtts <= 0 {
		o.rtts = 5000
	}
	if o.runs == 0 {
		o.runs = pick(o.quick, 1, 3)
	}
	if o.runs < 1 || o.runs > 9 {
		fmt.Fprintf(stderr, "tunnel-bench: -runs %d: want 1..9\n", o.runs)
		return 2
	}
	if o.idle < 1 || o.idle > 5000 {
		fmt.Fprintf(stderr, "tunnel-bench: -idle %d: want 1..5000\n", o.idle)
		return 2
	}
	if o.perf {
		if err := checkPerf(); err != nil {
			fmt.Fprintf(stderr, "tunnel-bench: -perf: %v\n", err)
			return 2
		}
	}
	if o.profile {
		if err := checkProfile(os.TempDir()); err != nil {
			fmt.Fprintf(stderr, "tunnel-bench: -profile: %v\n", err)
			return 2
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	load0 := loadAvg()
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "tunnel-bench: "+format+"\n", a...) }
	logf("building the agents")
	w, err := newWorkspace(ctx)
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer w.remove()

	var report strings.Builder
	fmt.Fprintf(&report, "# tunnel-bench %s\n\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&report, "%s\n\n", machine())
	failed := false
	if o.scenario == "loopback" || o.scenario == "all" {
		if err := runLoopback(ctx, w, o, &report, logf); err != nil {
			logf("loopback: %v", err)
			failed = true
		}
	}
	if (o.scenario == "wan" || o.scenario == "all") && ctx.Err() == nil {
		if err := runWAN(ctx, w, o, &report, logf); err != nil {
			logf("wan: %v", err)
			failed = true
		}
	}
	fmt.Fprintf(&report, "Total time: %s. Load average (1, 5, 15 min) at the start: %s; at the end: %s (other work on the machine shares its CPUs with the bench and both agents).\n", time.Since(start).Round(time.Second), load0, loadAvg())
	fmt.Fprint(stdout, report.String())
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(report.String()), 0o644); err != nil {
			logf("write %s: %v", o.out, err)
			return 1
		}
	}
	if failed || ctx.Err() != nil {
		return 1
	}
	return 0
}

func pick[T any](quick bool, q, full T) T {
	if quick {
		return q
	}
	return full
}

// machine describes where the numbers come from.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("Machine: %s, %d CPUs visible to Go; agents built without -race, log_level info.", model, numCPU())
}

// loadAvg is the first three fields of /proc/loadavg, or "unknown".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}
