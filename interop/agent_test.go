package interop

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/agent"
)

// Bounds on waiting for the agents.
const (
	startTimeout = 20 * time.Second // a log line such as "listening" or "session up"
	stopTimeout  = 45 * time.Second // exit after SIGTERM; above the agents' default 30 s drain
)

// The log lines the agents write (hclog text format) that tests wait for.
var (
	reServerListening = regexp.MustCompile(`tunnel-server: listening: addr=(\S+)`)
	reSessionUp       = regexp.MustCompile(`tunnel-client: session up:`) // the first one; to count them, sessionUp
	reServerSession   = regexp.MustCompile(`tunnel-server: session up: peer=client-a `)
)

// forwardListening matches the line an agent writes for forward name.
func forwardListening(name string) *regexp.Regexp {
	return regexp.MustCompile(`forward listening: forward=` + regexp.QuoteMeta(name) + ` listen=(\S+)`)
}

// pkiDir writes a fresh CA, server and client certificates (client
// identity "client-a") into a temporary directory and returns it.
func pkiDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := agent.DemoPKI(dir, "client-a"); err != nil {
		t.Fatalf("demo PKI: %v", err)
	}
	return dir
}

// agentProc is one running tunnel-server or tunnel-client binary whose
// stderr is collected line by line.
type agentProc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on every new line and at exit

	done    chan struct{} // closed once the process has exited and stderr is drained
	waitErr error         // valid after done
}

// startAgent writes config into dir/<bin>.hcl and runs `<bin> run -config`.
// The process is killed at cleanup if a test did not stop it, and its log is
// written to the test log if the test failed.
func startAgent(t *testing.T, bin, dir, config string) *agentProc {
	t.Helper()
	path := filepath.Join(dir, bin+".hcl")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatalf("write %s config: %v", bin, err)
	}
	cmd := exec.Command(filepath.Join(binDir, bin), "run", "-config", path)
	cmd.Dir = dir
	// Race-enabled binaries otherwise sleep a second before exiting.
	cmd.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("%s: stderr pipe: %v", bin, err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p := &agentProc{t: t, name: bin, cmd: cmd, changed: make(chan struct{}), done: make(chan struct{})}
	go p.collect(stderr)
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(stopTimeout):
				t.Errorf("%s (pid %d): still running after kill", p.name, p.cmd.Process.Pid)
			}
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.log())
		}
		if races := p.count("WARNING: DATA RACE"); races > 0 {
			t.Errorf("%s: the race detector reported %d data race(s):\n%s", p.name, races, p.log())
		}
	})
	return p
}

// collect reads stderr to the end, then reaps the process.
func (p *agentProc) collect(stderr io.Reader) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		p.mu.Lock()
		p.lines = append(p.lines, sc.Text())
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	p.waitErr = p.cmd.Wait()
	close(p.done)
}

func (p *agentProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// countMatching counts the log lines m matches.
func (p *agentProc) countMatching(m lineMatcher) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if m.MatchString(l) {
			n++
		}
	}
	return n
}

func (p *agentProc) count(substr string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// waitLine waits up to timeout for a log line matching re, looking at lines
// from index from on, and returns its submatches and the index after it.
func (p *agentProc) waitLine(re *regexp.Regexp, from int, timeout time.Duration) ([]string, int, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		lines, changed := p.lines, p.changed
		p.mu.Unlock()
		for i := from; i < len(lines); i++ {
			if m := re.FindStringSubmatch(lines[i]); m != nil {
				return m, i + 1, nil
			}
		}
		from = len(lines)
		select {
		case <-changed:
		case <-p.done:
			// Lines written just before exit are already collected.
			p.mu.Lock()
			lines = p.lines
			p.mu.Unlock()
			for i := from; i < len(lines); i++ {
				if m := re.FindStringSubmatch(lines[i]); m != nil {
					return m, i + 1, nil
				}
			}
			return nil, 0, fmt.Errorf("%s exited (%v) before logging %q", p.name, p.waitErr, re)
		case <-deadline.C:
			return nil, 0, fmt.Errorf("%s did not log %q within %s", p.name, re, timeout)
		}
	}
}

// must waits for a line matching re anywhere in the log and returns its
// first submatch (or the whole match when there is none).
func (p *agentProc) must(re *regexp.Regexp) string {
	p.t.Helper()
	m, _, err := p.waitLine(re, 0, startTimeout)
	if err != nil {
		p.t.Fatal(err)
	}
	if len(m) > 1 {
		return m[1]
	}
	return m[0]
}

// lineMatcher picks log lines: a *regexp.Regexp, or sessionUp.
type lineMatcher interface {
	MatchString(string) bool
	String() string
}

// sessionUp matches the client's "session up" lines of each class's first
// session: its further sessions of a class (bulk_connections) log lane=N,
// so the count is one per (re)connect.
type sessionUp struct{}

func (sessionUp) MatchString(l string) bool {
	return strings.Contains(l, "tunnel-client: session up:") && !strings.Contains(l, " lane=")
}

func (sessionUp) String() string { return "tunnel-client: session up: (first lanes)" }

// waitCount waits up to startTimeout until at least n log lines match re.
func (p *agentProc) waitCount(re lineMatcher, n int) {
	p.t.Helper()
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		changed := p.changed
		got := 0
		for _, l := range p.lines {
			if re.MatchString(l) {
				got++
			}
		}
		p.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-p.done:
			p.t.Fatalf("%s exited (%v) after logging %d lines matching %q, want %d", p.name, p.waitErr, got, re, n)
		case <-deadline.C:
			p.t.Fatalf("%s logged %d lines matching %q within %s, want %d", p.name, got, re, startTimeout, n)
		}
	}
}

// stop sends SIGTERM and expects a clean exit with status 0 within stopTimeout.
func (p *agentProc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("%s: SIGTERM: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.t.Fatalf("%s (pid %d) did not exit within %s of SIGTERM", p.name, p.cmd.Process.Pid, stopTimeout)
	}
	if p.waitErr != nil {
		var exit *exec.ExitError
		if errors.As(p.waitErr, &exit) {
			p.t.Fatalf("%s exited with status %d after SIGTERM, want 0", p.name, exit.ExitCode())
		}
		p.t.Fatalf("%s: %v", p.name, p.waitErr)
	}
	if p.count(p.name+": stopped") == 0 {
		p.t.Errorf("%s exited 0 but never logged \"stopped\"", p.name)
	}
}

// tunnel is a server and a connected client.
type tunnel struct {
	server, client *agentProc
	serverAddr     string
}

// serverConfig is a server config on 127.0.0.1:0 with the demo PKI and extra blocks.
func serverConfig(blocks string) string {
	return `listen = "127.0.0.1:0"
tls {
  cert = "server.crt"
  key  = "server.key"
  ca   = "ca.crt"
}
` + blocks
}

// clientConfig is a client config for serverAddr with the demo PKI and extra blocks.
func clientConfig(serverAddr, blocks string) string {
	return fmt.Sprintf(`server = %q
tls {
  cert        = "client.crt"
  key         = "client.key"
  ca          = "ca.crt"
  server_name = "localhost"
}
`, serverAddr) + blocks
}

// startTunnel starts a server with serverBlocks and a client with
// clientBlocks in dir (which holds the PKI), and waits until the client's
// session is up on both sides.
func startTunnel(t *testing.T, dir, serverBlocks, clientBlocks string) *tunnel {
	t.Helper()
	srv := startAgent(t, "tunnel-server", dir, serverConfig(serverBlocks))
	addr := srv.must(reServerListening)
	cli := startAgent(t, "tunnel-client", dir, clientConfig(addr, clientBlocks))
	cli.must(reSessionUp)
	srv.must(reServerSession)
	return &tunnel{server: srv, client: cli, serverAddr: addr}
}

// stop stops the client, then the server, each with SIGTERM.
func (tn *tunnel) stop() {
	tn.client.stop()
	tn.server.stop()
}
