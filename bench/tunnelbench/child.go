package tunnelbench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Baselines that run in processes of their own are this same program,
// started again with a flag: the relays (relay.go) and the targets.

// IsChild reports whether args (without the program name) start one of
// those children. A test binary that runs the suite calls Main with its
// arguments when this is true, as the tunnel-bench command does.
func IsChild(args []string) bool {
	return len(args) == 2 && args[0] == relayFlag || len(args) == 1 && args[0] == targetsFlag
}

func runChild(args []string, stdout, stderr io.Writer) int {
	if args[0] == relayFlag {
		return runRelay(args[1], stdout, stderr)
	}
	return runTargets(stdout, stderr)
}

// startChild runs this program again with args, in a process of its own
// that serves on loopback until its stdin closes, and returns the want
// addresses it prints (one line, comma-separated). Stop it with stopChild.
func startChild(want int, args ...string) (*exec.Cmd, []string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	if _, err := cmd.StdinPipe(); err != nil { // closed by Wait: the child then exits
		return nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start: %w", err)
	}
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	var line string
	select {
	case line = <-addr:
	case <-time.After(waitLimit):
		stopChild(cmd)
		return nil, nil, fmt.Errorf("did not start within %s", waitLimit)
	}
	addrs := strings.Split(line, ",")
	if line == "" || len(addrs) != want {
		stopChild(cmd)
		return nil, nil, fmt.Errorf("did not start (it printed %q)", line)
	}
	return cmd, addrs, nil
}

// stopChild ends a child this bench started, by PID.
func stopChild(cmd *exec.Cmd) {
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// targetsFlag marks a child run that serves the sink and the echo server
// in a process of its own: direct TCP to a target in another process, as
// an application reaches a local service. The main table's direct
// baseline has its targets in the bench's own process, where a round trip
// needs no wake-up of another process.
const targetsFlag = "-targets"

// runTargets serves the targets until stdin closes (the parent went away),
// after printing "SINK,ECHO" on stdout.
func runTargets(stdout, stderr io.Writer) int {
	tg, err := startTargets()
	if err != nil {
		fmt.Fprintf(stderr, "tunnel-bench: targets: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, tg.sink+","+tg.echo)
	_, _ = io.Copy(io.Discard, os.Stdin)
	tg.close()
	return 0
}

// remoteTargets are the sink and the echo server in a child process.
type remoteTargets struct {
	cmd        *exec.Cmd
	sink, echo string
}

func startRemoteTargets() (*remoteTargets, error) {
	cmd, addrs, err := startChild(2, targetsFlag)
	if err != nil {
		return nil, fmt.Errorf("targets process: %w", err)
	}
	return &remoteTargets{cmd: cmd, sink: addrs[0], echo: addrs[1]}, nil
}

func (r *remoteTargets) close() { stopChild(r.cmd) }
