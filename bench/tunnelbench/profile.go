package tunnelbench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// -profile samples each path's processes with perf record during the
// 8-stream row and sorts the samples into kinds of work, given as CPU-s
// per GB moved: where a tunnel spends more than a peer (bench/README.md,
// issue 17's eighth and ninth parts, were made with a throwaway copy of
// this).

// cpuKinds are the kinds, in the table's order.
var cpuKinds = []string{
	"AES-GCM",
	"memmove (user space)",
	"Go runtime besides memmove",
	"crypto/tls framing",
	"yamux, mux, resume, forward",
	"other user space",
	"kernel: socket copies",
	"kernel: scheduling",
	"kernel: the rest",
}

var (
	aesSymbol     = regexp.MustCompile(`(?i)aes|gcm|ghash`)
	copySymbol    = regexp.MustCompile(`memmove|memcpy|memset|memclr`)
	runtimeSymbol = regexp.MustCompile(`^(runtime\.|internal/runtime/|__vdso_)`)
	ourSymbol     = regexp.MustCompile(`hashicorp/yamux|tunnelworks/tunnel/`)
	kernelCopy    = regexp.MustCompile(`copy_(to|from)_(iter|user)`)
	// What the kernel does to put threads to sleep, wake them and switch
	// between them.
	kernelSched = regexp.MustCompile(`finish_task_switch|_raw_spin_unlock_irq|try_to_wake_up|ttwu|__schedule|schedule_|futex|select_task_rq|enqueue_|dequeue_|update_curr|pick_next|__switch_to|nanosleep|hrtimer`)
)

// cpuKind is the kind of a sample's symbol; kernel says it ran in the
// kernel.
func cpuKind(sym string, kernel bool) string {
	if kernel {
		switch {
		case kernelCopy.MatchString(sym):
			return "kernel: socket copies"
		case kernelSched.MatchString(sym):
			return "kernel: scheduling"
		}
		return "kernel: the rest"
	}
	switch {
	case aesSymbol.MatchString(sym):
		return "AES-GCM"
	case copySymbol.MatchString(sym):
		return "memmove (user space)"
	case runtimeSymbol.MatchString(sym):
		return "Go runtime besides memmove"
	case strings.HasPrefix(sym, "crypto/tls."):
		return "crypto/tls framing"
	case ourSymbol.MatchString(sym):
		return "yamux, mux, resume, forward"
	}
	return "other user space"
}

// reportLine is a line of `perf report --sort sym --stdio -g none`:
// "    10.35%  [.] crypto/internal/fips140/aes/gcm.gcmAesDec.abi0".
var reportLine = regexp.MustCompile(`^\s*([0-9.]+)%\s+\[([.k])\]\s+(.+?)\s*$`)

// parsePerfReport sums a perf report's shares (fractions of all samples)
// by kind. A report with no sample lines is an error.
func parsePerfReport(s string) (map[string]float64, error) {
	shares := map[string]float64{}
	found := false
	for line := range strings.SplitSeq(s, "\n") {
		m := reportLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		pct, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return nil, fmt.Errorf("perf report: %q: %w", line, err)
		}
		shares[cpuKind(m[3], m[2] == "k")] += pct / 100
		found = true
	}
	if !found {
		return nil, fmt.Errorf("perf report has no samples: %s", firstLine(strings.TrimSpace(s)))
	}
	return shares, nil
}

// perfRecorder is one `perf record` attached to some processes.
type perfRecorder struct {
	cmd  *exec.Cmd
	file string
	out  bytes.Buffer
	done chan error
}

// profileFrequency is the sampling rate: enough samples in a 2-s row
// for shares to a tenth of a per cent, few enough not to load the VM.
const profileFrequency = "999"

// checkProfile fails, saying why, when perf cannot record and report here.
func checkProfile(dir string) error {
	if _, err := exec.LookPath("perf"); err != nil {
		return errors.New("perf is not installed (Debian: apt-get install linux-perf)")
	}
	file := filepath.Join(dir, "check.data")
	defer os.Remove(file)
	if out, err := exec.Command("perf", "record", "-q", "-F", profileFrequency, "-o", file, "--", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done").CombinedOutput(); err != nil {
		return fmt.Errorf("perf record: %v (as root, or with kernel.perf_event_paranoid = -1): %s", err, firstLine(strings.TrimSpace(string(out))))
	}
	_, err := reportKinds(file)
	return err
}

// startProfile attaches perf record to pids, recording into file.
func startProfile(pids []int, file string) (*perfRecorder, error) {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	r := &perfRecorder{file: file, done: make(chan error, 1)}
	r.cmd = exec.Command("perf", "record", "-q", "-F", profileFrequency, "-o", file, "-p", strings.Join(ps, ","))
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf record: %w", err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	time.Sleep(100 * time.Millisecond) // attached before the transfer starts
	return r, nil
}

// stop ends the recording (SIGINT makes perf record write its file) and
// returns the shares by kind.
func (r *perfRecorder) stop() (map[string]float64, error) {
	_ = r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-r.done:
	case <-time.After(waitLimit):
		_ = r.cmd.Process.Kill()
		<-r.done
		return nil, errors.New("perf record did not stop on SIGINT")
	}
	defer os.Remove(r.file)
	return reportKinds(r.file)
}

// reportKinds reads a perf record file's samples by kind.
func reportKinds(file string) (map[string]float64, error) {
	out, err := exec.Command("perf", "report", "-i", file, "--no-children", "--sort", "sym", "--stdio", "-g", "none").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	return parsePerfReport(string(out))
}

// profiledThroughput8 is the 8-stream row of p, with -perf's counts when
// perf is set and, when dir is not empty, its processes' CPU per GB by
// kind (perf record files go to dir and are removed once read).
func profiledThroughput8(p *path, d time.Duration, perf bool, dir string) (gbps float64, counts, kinds map[string]float64, err error) {
	if dir == "" || len(p.sinkPids) == 0 {
		gbps, _, counts, err = countedThroughput(p, 8, d, perf)
		return gbps, counts, nil, err
	}
	rec, err := startProfile(p.sinkPids, filepath.Join(dir, fmt.Sprintf("%d.data", time.Now().UnixNano())))
	if err != nil {
		return 0, nil, nil, err
	}
	cpu0, cerr0 := sumOver(p.sinkPids, cpuSeconds)
	gbps, moved, counts, err := countedThroughput(p, 8, d, perf)
	cpu1, cerr1 := sumOver(p.sinkPids, cpuSeconds)
	shares, rerr := rec.stop()
	switch {
	case err != nil:
		return 0, nil, nil, err
	case rerr != nil:
		return 0, nil, nil, rerr
	case cerr0 != nil || cerr1 != nil || moved <= 0:
		return 0, nil, nil, fmt.Errorf("CPU time of %v: %v %v", p.sinkPids, cerr0, cerr1)
	}
	perGB := (cpu1 - cpu0) / (float64(moved) / 1e9)
	kinds = make(map[string]float64, len(shares))
	for k, v := range shares {
		kinds[k] = v * perGB
	}
	return gbps, counts, kinds, nil
}

// medianKinds is, for each kind, the median over the runs that profiled
// (a kind a run had no sample of counts as 0 there).
func medianKinds(runs []map[string]float64) map[string]float64 {
	var out map[string]float64
	for _, k := range cpuKinds {
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

// writeProfile is the -profile table.
func writeProfile(b *strings.Builder, paths []*path) {
	var cols []*path
	for _, p := range paths {
		if p.fig.kinds8 != nil {
			cols = append(cols, p)
		}
	}
	if len(cols) == 0 {
		return
	}
	b.WriteString("## Where the CPU goes, 8 streams (-profile)\n\n")
	b.WriteString("`perf record -F " + profileFrequency + "` attached to each path's processes (both sides) for its 8-stream row; the samples sorted by symbol into kinds, each kind's share times the processes' CPU time (`/proc`), per GB moved: CPU-s per GB, medians of the runs.\n\n| CPU-s per GB |")
	for _, p := range cols {
		name := p.name
		if name == relayName {
			name = "relay floor"
		}
		fmt.Fprintf(b, " %s |", name)
	}
	b.WriteString("\n| --- |" + strings.Repeat(" ---: |", len(cols)) + "\n")
	for _, k := range cpuKinds {
		fmt.Fprintf(b, "| %s |", k)
		for _, p := range cols {
			fmt.Fprintf(b, " %.2f |", p.fig.kinds8[k])
		}
		b.WriteString("\n")
	}
	b.WriteString("| **all** |")
	for _, p := range cols {
		sum := 0.0
		for _, v := range p.fig.kinds8 {
			sum += v
		}
		fmt.Fprintf(b, " **%.2f** |", sum)
	}
	b.WriteString("\n\n")
}
