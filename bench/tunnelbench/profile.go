package tunnelbench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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
		return nil, fmt.Errorf("perf report has no samples: %q", lastLines(s, 6))
	}
	return shares, nil
}

// perfRecorder is one `perf record` attached to some processes.
type perfRecorder struct {
	cmd  *exec.Cmd
	file string
	out  bytes.Buffer
	done chan error
	// ctl and ack are our ends of perf's control pipes, open while it
	// records (perf stops counting when its control pipe closes).
	ctl, ack *os.File
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

// startProfile attaches perf record to pids, recording into file. perf
// starts with its events disabled and is told to enable them through a
// control pipe; its acknowledgement says it is recording, however long
// it took to start (a fixed wait was not always enough on a loaded
// machine, and a short row then had no samples).
func startProfile(pids []int, file string) (*perfRecorder, error) {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, err
	}
	r := &perfRecorder{file: file, done: make(chan error, 1), ctl: ctlW, ack: ackR}
	// The child's fds 3 and 4 are ExtraFiles[0] and [1].
	r.cmd = exec.Command("perf", "record", "-q", "-D", "-1", "--control", "fd:3,4", "-F", profileFrequency, "-o", file, "-p", strings.Join(ps, ","))
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	r.cmd.ExtraFiles = []*os.File{ctlR, ackW}
	err = r.cmd.Start()
	ctlR.Close()
	ackW.Close()
	if err != nil {
		r.closePipes()
		return nil, fmt.Errorf("perf record: %w", err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	acked := make(chan error, 1)
	go func() {
		if _, err := r.ctl.Write([]byte("enable\n")); err != nil {
			acked <- err
			return
		}
		buf := make([]byte, 4)
		_, err := io.ReadFull(r.ack, buf)
		acked <- err
	}()
	select {
	case err = <-acked:
	case <-time.After(waitLimit):
		err = errors.New("no acknowledgement")
	}
	if err != nil {
		_ = r.cmd.Process.Kill()
		<-r.done
		r.closePipes()
		return nil, fmt.Errorf("perf record did not start recording: %v: %s", err, lastLines(r.out.String(), 3))
	}
	return r, nil
}

// stop ends the recording (SIGINT makes perf record write its file) and
// returns the shares by kind.
func (r *perfRecorder) stop() (map[string]float64, error) {
	defer r.closePipes()
	if err := interruptPerf(r.cmd, r.done, "perf record"); err != nil {
		return nil, err
	}
	defer os.Remove(r.file)
	kinds, err := reportKinds(r.file)
	if err != nil {
		return nil, fmt.Errorf("%w (perf record %s: %s)", err, strings.Join(r.cmd.Args[len(r.cmd.Args)-1:], ""), lastLines(r.out.String(), 3))
	}
	return kinds, nil
}

func (r *perfRecorder) closePipes() {
	r.ctl.Close()
	r.ack.Close()
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

// writeProfile is the -profile table.
func writeProfile(b *strings.Builder, paths []*path) {
	cols := perPathColumns(b, paths, func(p *path) bool { return p.fig.kinds8 != nil },
		"Where the CPU goes, 8 streams (-profile)",
		"`perf record -F "+profileFrequency+"` attached to each path's processes (both sides) for its 8-stream row; the samples sorted by symbol into kinds, each kind's share times the processes' CPU time (`/proc`), per GB moved: CPU-s per GB, medians of the runs.",
		"CPU-s per GB")
	if cols == nil {
		return
	}
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

// lastLines is the last n non-empty lines of s, for an error message.
func lastLines(s string, n int) string {
	var keep []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.TrimSpace(line) != "" {
			keep = append(keep, line)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}
