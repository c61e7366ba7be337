package tunnelbench

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// perfEvents are what -perf counts on a path's processes during its
// throughput rows: all system calls, the ones that move bytes, the ones
// that only park and wake threads, and the context switches. A Go agent
// makes fewer system calls per GB than the peers but wakes more threads
// (bench/README.md, issue 17's seventh part): these rows show which.
var perfEvents = []string{
	"raw_syscalls:sys_enter",
	"syscalls:sys_enter_write",
	"syscalls:sys_enter_read",
	"syscalls:sys_enter_epoll_pwait",
	"syscalls:sys_enter_futex",
	"context-switches",
}

// perfLabel is how the report names an event.
func perfLabel(event string) string {
	switch event {
	case "raw_syscalls:sys_enter":
		return "system calls"
	case "context-switches":
		return "context switches"
	}
	return "`" + strings.TrimPrefix(event, "syscalls:sys_enter_") + "`"
}

// perfCounter is one `perf stat` attached to some processes, counting
// until stop.
type perfCounter struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // perf stat writes its counts to stderr
	done chan error
}

// checkPerf fails, saying why, when perf cannot count perfEvents here (not
// installed, or tracepoints closed by perf_event_paranoid).
func checkPerf() error {
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("perf is not installed (Debian: apt-get install linux-perf)")
	}
	out, err := exec.Command("perf", "stat", "-x", ",", "-e", strings.Join(perfEvents, ","), "--", "true").CombinedOutput()
	if err == nil {
		_, err = parsePerfCSV(string(out))
	}
	if err != nil {
		return fmt.Errorf("perf cannot count %s: %v (as root, or with kernel.perf_event_paranoid = -1): %s", strings.Join(perfEvents, ","), err, firstLine(strings.TrimSpace(string(out))))
	}
	return nil
}

// startPerf attaches perf stat to pids.
func startPerf(pids []int) (*perfCounter, error) {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	pc := &perfCounter{done: make(chan error, 1)}
	pc.cmd = exec.Command("perf", "stat", "-x", ",", "-e", strings.Join(perfEvents, ","), "-p", strings.Join(ps, ","))
	pc.cmd.Stderr = &pc.out
	if err := pc.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf stat: %w", err)
	}
	go func() { pc.done <- pc.cmd.Wait() }()
	// perf counts from when it has attached; give it that moment before
	// the measured transfer starts.
	time.Sleep(100 * time.Millisecond)
	return pc, nil
}

// stop ends the count (SIGINT makes perf stat print it) and returns each
// event's count.
func (pc *perfCounter) stop() (map[string]float64, error) {
	if err := interruptPerf(pc.cmd, pc.done, "perf stat"); err != nil {
		return nil, err
	}
	return parsePerfCSV(pc.out.String())
}

// parsePerfCSV reads perf stat -x, output: "count,unit,event,…" per event.
// An event perf could not count is an error.
func parsePerfCSV(s string) (map[string]float64, error) {
	counts := map[string]float64{}
	for line := range strings.SplitSeq(s, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || !slices.Contains(perfEvents, f[2]) {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %s", f[2], f[0]) // "<not counted>", "<not supported>"
		}
		counts[f[2]] = v
	}
	for _, e := range perfEvents {
		if _, ok := counts[e]; !ok {
			return nil, fmt.Errorf("no count for %s", e)
		}
	}
	return counts, nil
}

// perGB divides counts by the GB moved while they were counted.
func perGB(counts map[string]float64, bytes int64) map[string]float64 {
	out := make(map[string]float64, len(counts))
	for e, v := range counts {
		out[e] = v / (float64(bytes) / 1e9)
	}
	return out
}

// countedThroughput is throughput with p's processes counted by perf
// stat when count is set (nil counts otherwise, or without processes).
func countedThroughput(p *path, streams int, d time.Duration, count bool) (gbps float64, moved int64, perf map[string]float64, err error) {
	var pc *perfCounter
	if count && len(p.sinkPids) > 0 {
		if pc, err = startPerf(p.sinkPids); err != nil {
			return 0, 0, nil, err
		}
	}
	gbps, moved, err = throughput(p.sink, streams, d)
	if pc == nil {
		return gbps, moved, nil, err
	}
	counts, perr := pc.stop()
	if err != nil {
		return 0, 0, nil, err
	}
	if perr != nil {
		return 0, 0, nil, fmt.Errorf("perf stat: %w", perr)
	}
	return gbps, moved, perGB(counts, moved), nil
}

// medianByKey is, for each key, the median over the runs that measured
// (a run's map is nil when it did not; a key missing from a run's map
// counts as 0 there); nil when no run measured.
func medianByKey(runs []map[string]float64, keys []string) map[string]float64 {
	var out map[string]float64
	for _, k := range keys {
		var v []float64
		for _, r := range runs {
			if r != nil {
				v = append(v, r[k])
			}
		}
		if len(v) == 0 {
			return nil
		}
		if out == nil {
			out = map[string]float64{}
		}
		out[k] = median(v)
	}
	return out
}

// perPathColumns is the paths that have figures of a table (has), after
// writing the table's heading, intro and header row for them; nil, and
// nothing written, when none has.
func perPathColumns(b *strings.Builder, paths []*path, has func(*path) bool, heading, intro, corner string) []*path {
	var cols []*path
	for _, p := range paths {
		if has(p) {
			cols = append(cols, p)
		}
	}
	if len(cols) == 0 {
		return nil
	}
	fmt.Fprintf(b, "## %s\n\n%s\n\n| %s |", heading, intro, corner)
	for _, p := range cols {
		name := p.name
		if name == relayName {
			name = "relay floor"
		}
		fmt.Fprintf(b, " %s |", name)
	}
	b.WriteString("\n| --- |" + strings.Repeat(" ---: |", len(cols)) + "\n")
	return cols
}

// writePerf is the -perf table: per GB moved in the throughput rows, each
// event on the processes of each path that has some.
func writePerf(b *strings.Builder, paths []*path) {
	cols := perPathColumns(b, paths, func(p *path) bool { return p.fig.perf1 != nil || p.fig.perf8 != nil },
		"System calls and context switches per GB moved (-perf)",
		"`perf stat` attached to each path's processes (both sides) for the whole of its throughput rows, the count divided by the bytes moved; medians of the runs.",
		"per GB moved")
	if cols == nil {
		return
	}
	for _, set := range []struct {
		name string
		get  func(*figures) map[string]float64
	}{{"1 stream", func(f *figures) map[string]float64 { return f.perf1 }}, {"8 streams", func(f *figures) map[string]float64 { return f.perf8 }}} {
		for _, e := range perfEvents {
			fmt.Fprintf(b, "| %s: %s |", set.name, perfLabel(e))
			for _, p := range cols {
				if m := set.get(&p.fig); m != nil {
					fmt.Fprintf(b, " %.1fk |", m[e]/1000)
				} else {
					b.WriteString(" — |")
				}
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n")
}

// interruptPerf stops a perf process with SIGINT (it then writes its
// output) and waits for it to exit (done gets Wait's result), killing it if it has not
// within waitLimit.
func interruptPerf(cmd *exec.Cmd, done <-chan error, name string) error {
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
		return nil
	case <-time.After(waitLimit):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not stop on SIGINT", name)
	}
}
