//go:build linux

package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/agent"
	"github.com/tunnelworks/tunnel/config"

	"github.com/tunnelworks/tunnel/internal/echocheck"
)

const upgradeWait = 60 * time.Second

// agentProcs is an agent started by `run` and every process that took
// over from it: they share one stderr, read line by line.
type agentProcs struct {
	t     *testing.T
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	more  chan struct{} // a line arrived (capacity 1)
	read  sync.WaitGroup
}

func startAgentProc(t *testing.T, role Role, cfgPath string) *agentProcs {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &agentProcs{t: t, more: make(chan struct{}, 1)}
	p.cmd = exec.Command(os.Args[0], "run", "-config", cfgPath)
	p.cmd.Env = append(os.Environ(), agentRoleEnv+"="+string(role))
	// A file, not a writer: no copying goroutine waiting for successors,
	// which inherit it.
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	p.read.Go(func() {
		s := bufio.NewScanner(r)
		for s.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, s.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
		r.Close()
	})
	t.Cleanup(func() {
		// SIGTERM to whichever generation serves, then wait for the
		// shared stderr to end: every process has exited.
		p.signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.read.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(upgradeWait):
			t.Errorf("%s processes %v still running after SIGTERM; killing them", role, p.pids())
			p.signal(syscall.SIGKILL)
			<-done
		}
		_ = p.cmd.Wait()
		out := strings.Join(p.lines, "\n")
		if strings.Contains(out, "WARNING: DATA RACE") || strings.Contains(out, "panic:") {
			t.Errorf("a %s process raced or panicked (see its log)", role)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", role, out)
		}
	})
	return p
}

// signal signals the first process (through os.Process: safe once it
// was waited for) and every successor by PID.
func (p *agentProcs) signal(sig syscall.Signal) {
	_ = p.cmd.Process.Signal(sig)
	for _, pid := range p.pids()[1:] {
		_ = syscall.Kill(pid, sig)
	}
}

var pidField = regexp.MustCompile(`\bpid=(\d+)`)

// pids are the first process and every successor it reported.
func (p *agentProcs) pids() []int {
	pids := []int{p.cmd.Process.Pid}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if m := pidField.FindStringSubmatch(l); m != nil && strings.Contains(l, "successor ready") {
			pid, _ := strconv.Atoi(m[1])
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitLine waits for the n-th line (from 1) containing every one of subs.
func (p *agentProcs) waitLine(n int, subs ...string) string {
	p.t.Helper()
	deadline := time.After(upgradeWait)
	for {
		p.mu.Lock()
		seen := 0
		for _, l := range p.lines {
			if containsAll(l, subs) {
				if seen++; seen == n {
					p.mu.Unlock()
					return l
				}
			}
		}
		p.mu.Unlock()
		select {
		case <-p.more:
		case <-deadline:
			p.t.Fatalf("no line %d with %q from the agent within %s", n, subs, upgradeWait)
		}
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

var addrField = regexp.MustCompile(`\baddr=(\S+)`)

func field(t *testing.T, re *regexp.Regexp, line string) string {
	t.Helper()
	m := re.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no %s in %q", re, line)
	}
	return m[1]
}

// echoServer echoes every connection until EOF, then half-closes.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	return ln.Addr().String()
}

func echoRoundTrip(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, upgradeWait)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(upgradeWait))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// loop runs try again and again until stopped and keeps every failure.
type loop struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	ok       int
	failures []string
}

func startLoop(try func(i int) error) *loop {
	l := &loop{stop: make(chan struct{})}
	l.wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			if err := try(i); err != nil {
				l.failures = append(l.failures, err.Error())
			} else {
				l.ok++
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return l
}

func (l *loop) finish(t *testing.T, what string) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if len(l.failures) > 0 {
		t.Errorf("%s: %d of %d failed during the upgrades, first: %s", what, len(l.failures), l.ok+len(l.failures), l.failures[0])
	}
	if l.ok == 0 {
		t.Errorf("%s: not one attempt", what)
	}
}

// SIGUSR2 to `tunnel-server run`: a new process that cannot start (a
// broken config) is reported in one line and the server carries on; a
// good one takes over the tunnel and admin listeners and the resumable
// stream (its connection to the target included), which carries on byte
// for byte, while the old one lets its plain stream finish, then exits 0. Throughout, the tunnel
// listener accepts every connection and the admin endpoint answers every
// request; the client's forward works before and after. (Not during: a
// stream opened just as the old server drains can cross its GoAway and be
// reset, as at any graceful stop.)
func TestSIGUSR2HandsOver(t *testing.T) {
	dir := t.TempDir()
	files, err := agent.DemoPKI(dir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	echo := echoServer(t)
	srvPath := filepath.Join(dir, "server.hcl")
	good := fmt.Sprintf(`listen = "127.0.0.1:0"
drain_timeout = "120s"
admin {
  listen = "127.0.0.1:0"
}
tls {
  cert = %q
  key  = %q
  ca   = %q
}
service "echo" {
  target = %q
  allow  = ["edge-1"]
}
`, files.ServerCert, files.ServerKey, files.CA, echo)
	writeFile(t, srvPath, good)
	srv := startAgentProc(t, Server, srvPath)
	tunnel := field(t, addrField, srv.waitLine(1, "tunnel-server: listening:"))
	adminAddr := field(t, addrField, srv.waitLine(1, "admin listening:"))

	// A client in this process, its forward to the server's echo service.
	cliPath := filepath.Join(dir, "client.hcl")
	writeFile(t, cliPath, fmt.Sprintf(`server = %q
tls {
  cert = %q
  key  = %q
  ca   = %q
}
forward "echo" {
  listen = "127.0.0.1:0"
}
forward "plain" {
  listen        = "127.0.0.1:0"
  service       = "echo"
  resume_window = "0s"
}
`, tunnel, files.ClientCert, files.ClientKey, files.CA))
	cliCfg, err := config.LoadClient(cliPath)
	if err != nil {
		t.Fatal(err)
	}
	var cliLog strings.Builder
	var cliLogMu sync.Mutex
	cli, err := agent.NewClient(cliCfg, hclog.New(&hclog.LoggerOptions{Name: "tunnel-client", Output: lockedWriter{&cliLogMu, &cliLog}}))
	t.Cleanup(func() {
		if t.Failed() {
			cliLogMu.Lock()
			t.Logf("client log:\n%s", cliLog.String())
			cliLogMu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var cliRun sync.WaitGroup
	cliRun.Go(func() { _ = cli.Run(ctx) })
	defer func() { cancel(); cliRun.Wait() }()
	select {
	case <-cli.Ready():
	case <-time.After(upgradeWait):
		t.Fatal("client not ready")
	}
	fwd := cli.Addr("echo").String()
	if err := echoRoundTrip(fwd, "first\n"); err != nil {
		t.Fatalf("through the tunnel before any upgrade: %v", err)
	}

	// Two streams open across the upgrades: a plain one, which the old
	// server lets finish before it exits, and a resumable one, which the
	// new server takes over with its connection to the target.
	plain, err := net.DialTimeout("tcp", cli.Addr("plain").String(), upgradeWait)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	_ = plain.SetDeadline(time.Now().Add(3 * upgradeWait))
	if _, err := io.WriteString(plain, "before "); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("before "))
	if _, err := io.ReadFull(plain, buf); err != nil {
		t.Fatalf("plain stream: %v", err)
	}
	resumable := echocheck.Start(t, fwd, upgradeWait)
	resumable.Advance(t, 32<<10)

	// Throughout: the tunnel listener accepts every connection, and the
	// admin endpoint answers every request (a new connection each).
	dials := startLoop(func(int) error {
		c, err := net.DialTimeout("tcp", tunnel, upgradeWait)
		if err == nil {
			c.Close()
		}
		// A reset is a connection some process accepted, then refused
		// (its limit of handshakes per source): the listener was there.
		if errors.Is(err, syscall.ECONNRESET) {
			return nil
		}
		return err
	})
	admins := startLoop(func(int) error {
		c := http.Client{Timeout: upgradeWait, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + adminAddr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	})

	// A new process that cannot start: the old one says so and carries on.
	writeFile(t, srvPath, "listen = \n")
	if err := syscall.Kill(srv.cmd.Process.Pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	failed := srv.waitLine(1, "upgrade failed; this process carries on unchanged")
	if !strings.Contains(failed, "exited before it was ready") {
		t.Errorf("the failure line does not say the new process exited: %s", failed)
	}

	// A good one.
	writeFile(t, srvPath, good)
	if err := syscall.Kill(srv.cmd.Process.Pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	ready := srv.waitLine(1, "successor ready")
	newPID, _ := strconv.Atoi(field(t, pidField, ready))
	if newPID == 0 || newPID == srv.cmd.Process.Pid {
		t.Fatalf("successor: %s", ready)
	}
	if got := field(t, addrField, srv.waitLine(2, "tunnel-server: listening:")); got != tunnel {
		t.Fatalf("the new process listens on %s, want the inherited %s", got, tunnel)
	}
	srv.waitLine(1, "stopping: the new process serves the listeners now")
	if l := srv.waitLine(1, "resumable streams taken over from the previous process"); !strings.Contains(l, "lost=0") {
		t.Fatalf("streams lost in the handover: %s", l)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.cmd.Wait() }()

	// The old process still carries the plain stream (drain_timeout is
	// long), then exits.
	select {
	case err := <-exited:
		t.Fatalf("the old server exited with a stream open: %v", err)
	default:
	}
	if _, err := io.WriteString(plain, "after\n"); err != nil {
		t.Fatalf("plain stream after the handover: %v", err)
	}
	_ = plain.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(plain)
	if err != nil || string(rest) != "after\n" {
		t.Fatalf("plain stream after the handover: %q, %v", rest, err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the old server after its drain: %v", err)
		}
	case <-time.After(upgradeWait):
		t.Fatal("the old server did not exit after its last stream ended")
	}
	// The resumable stream goes on through the new server, every byte.
	resumable.Advance(t, 32<<10)
	resumable.Finish(t)
	if err := echoRoundTrip(fwd, "last\n"); err != nil {
		t.Fatalf("through the new server: %v", err)
	}
	dials.finish(t, "connections to the tunnel listener")
	admins.finish(t, "admin /healthz")
	t.Logf("%d connections to the tunnel listener and %d admin requests, none failed", dials.ok, admins.ok)
}

var listenField = regexp.MustCompile(`\blisten=(\S+)`)

// SIGUSR2 to `tunnel-client run`: the new process inherits the forward's
// listener and the resumable stream with its local connection, and comes
// back to the server as the same instance, so the server keeps the
// stream; the application sees every byte echoed once, and the forward
// accepts every connection throughout.
func TestSIGUSR2HandsOverClient(t *testing.T) {
	dir := t.TempDir()
	files, err := agent.DemoPKI(dir, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	echo := echoServer(t)
	srvPath := filepath.Join(dir, "server.hcl")
	writeFile(t, srvPath, fmt.Sprintf(`listen = "127.0.0.1:0"
tls {
  cert = %q
  key  = %q
  ca   = %q
}
service "echo" {
  target = %q
  allow  = ["edge-1"]
}
`, files.ServerCert, files.ServerKey, files.CA, echo))
	srvCfg, err := config.LoadServer(srvPath)
	if err != nil {
		t.Fatal(err)
	}
	var srvLog strings.Builder
	var srvLogMu sync.Mutex
	srv, err := agent.NewServer(srvCfg, hclog.New(&hclog.LoggerOptions{Name: "tunnel-server", Output: lockedWriter{&srvLogMu, &srvLog}}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var srvRun sync.WaitGroup
	srvRun.Go(func() { _ = srv.Run(ctx) })
	defer func() { cancel(); srvRun.Wait() }()
	t.Cleanup(func() {
		if t.Failed() {
			srvLogMu.Lock()
			t.Logf("server log:\n%s", srvLog.String())
			srvLogMu.Unlock()
		}
	})
	select {
	case <-srv.Ready():
	case <-time.After(upgradeWait):
		t.Fatal("server not ready")
	}

	cliPath := filepath.Join(dir, "client.hcl")
	writeFile(t, cliPath, fmt.Sprintf(`server = %q
tls {
  cert = %q
  key  = %q
  ca   = %q
}
forward "echo" {
  listen = "127.0.0.1:0"
}
`, srv.Addr("tunnel").String(), files.ClientCert, files.ClientKey, files.CA))
	cli := startAgentProc(t, Client, cliPath)
	fwd := field(t, listenField, cli.waitLine(1, "forward listening:"))
	cli.waitLine(1, "session up:")

	stream := echocheck.Start(t, fwd, upgradeWait)
	stream.Advance(t, 32<<10)
	dials := startLoop(func(i int) error { return echoRoundTrip(fwd, fmt.Sprintf("ping %d\n", i)) })

	if err := syscall.Kill(cli.cmd.Process.Pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	cli.waitLine(1, "successor ready")
	if l := cli.waitLine(1, "resumable streams taken over from the previous process"); !strings.Contains(l, "lost=0") {
		t.Fatalf("streams lost in the handover: %s", l)
	}
	if err := cli.cmd.Wait(); err != nil {
		t.Fatalf("the old client after the handover: %v", err)
	}
	stream.Advance(t, 32<<10) // through the new client
	stream.Finish(t)
	dials.finish(t, "round trips through the forward")
	t.Logf("%d round trips through the forward, none failed", dials.ok)
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
