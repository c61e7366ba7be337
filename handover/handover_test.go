//go:build linux

package handover_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/internal/echocheck"
)

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) == "1" {
		os.Exit(runAgent())
	}
	goleak.VerifyTestMain(m)
}

// wait bounds every wait for an agent: generous, for a loaded machine.
const wait = 60 * time.Second

// agent is the first process of a test and every successor after it.
type agent struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  *os.File // closing it stops every generation
	events chan string
	read   sync.WaitGroup // the stdout reader
	dir    string
	notify chan string // datagrams to NOTIFY_SOCKET

	pending []event // reported, not yet expected
	pids    []int   // every process that reported, for the cleanup's last resort
}

// startAgent starts the first generation with extra environment and
// waits for it to be ready.
func startAgent(t *testing.T, readyTimeout time.Duration, blob []byte) (*agent, event) {
	t.Helper()
	dir := t.TempDir()
	a := &agent{t: t, dir: dir, events: make(chan string, 1000), notify: make(chan string, 100)}
	if err := os.WriteFile(filepath.Join(dir, "state"), blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "out"), 0o700); err != nil {
		t.Fatal(err)
	}
	notifyConn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	var notifyDone sync.WaitGroup
	notifyDone.Go(func() {
		buf := make([]byte, 4096)
		for {
			n, err := notifyConn.Read(buf)
			if err != nil {
				return
			}
			a.notify <- string(buf[:n])
		}
	})
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(dir, "agents.log"))
	if err != nil {
		t.Fatal(err)
	}
	a.stdin = stdinW
	a.cmd = exec.Command(os.Args[0], "-test.run=^$")
	a.cmd.Env = append(os.Environ(),
		agentEnv+"=1",
		failEnv+"="+filepath.Join(dir, "fail"),
		failLateEnv+"="+filepath.Join(dir, "fail-late"),
		hangEnv+"="+filepath.Join(dir, "hang"),
		stateInEnv+"="+filepath.Join(dir, "state"),
		stateOutEnv+"="+filepath.Join(dir, "out"),
		readyTimeoutEnv+"="+readyTimeout.String(),
		"NOTIFY_SOCKET="+filepath.Join(dir, "notify"),
	)
	// Files, not writers: no copying goroutine that would wait for the
	// successors, which inherit them.
	a.cmd.Stdin, a.cmd.Stdout, a.cmd.Stderr = stdinR, stdoutW, logFile
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdinR.Close()
	stdoutW.Close()
	logFile.Close()
	a.read.Go(func() {
		defer close(a.events)
		s := bufio.NewScanner(stdoutR)
		for s.Scan() {
			a.events <- s.Text()
		}
		stdoutR.Close()
	})
	t.Cleanup(func() {
		// EOF on stdin stops every generation; stdout then ends.
		a.stdin.Close()
		done := make(chan struct{})
		go func() { a.read.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			t.Errorf("agents still running after stdin closed; killing %v", a.pids)
			for _, pid := range a.pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			<-done
		}
		_ = a.cmd.Wait() // reaped already if it exited by itself
		notifyConn.Close()
		notifyDone.Wait()
		b, _ := os.ReadFile(filepath.Join(dir, "agents.log"))
		if bytes.Contains(b, []byte("WARNING: DATA RACE")) || bytes.Contains(b, []byte("panic:")) {
			t.Error("an agent process raced or panicked")
		}
		if t.Failed() {
			t.Logf("agents' log:\n%s", b)
		}
	})
	return a, a.expect("ready")
}

// event is one line an agent reported.
type event struct {
	kind string
	pid  int
	f    map[string]string
	line string
}

func parseEvent(line string) event {
	kind, rest, _ := strings.Cut(line, " ")
	e := event{kind: kind, f: map[string]string{}, line: line}
	if before, after, ok := strings.Cut(rest, " err="); ok {
		rest, e.f["err"] = before, after
	}
	for _, kv := range strings.Fields(rest) {
		k, v, _ := strings.Cut(kv, "=")
		e.f[k] = v
	}
	e.pid, _ = strconv.Atoi(e.f["pid"])
	return e
}

// expect returns the first event of kind not yet expected, waiting for
// it; two processes report in no fixed order.
func (a *agent) expect(kind string) event {
	a.t.Helper()
	for i, e := range a.pending {
		if e.kind == kind {
			a.pending = append(a.pending[:i], a.pending[i+1:]...)
			return e
		}
	}
	timeout := time.After(wait)
	for {
		select {
		case line, ok := <-a.events:
			if !ok {
				a.t.Fatalf("agents' stdout ended waiting for %q (pending: %v)", kind, a.pending)
			}
			e := parseEvent(line)
			a.pids = append(a.pids, e.pid)
			if e.kind == kind {
				return e
			}
			a.pending = append(a.pending, e)
		case <-timeout:
			a.t.Fatalf("no %q from the agent within %s (pending: %v)", kind, wait, a.pending)
		}
	}
}

func (a *agent) signal(pid int) {
	a.t.Helper()
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		a.t.Fatal(err)
	}
}

func (a *agent) expectNotify(want string) {
	a.t.Helper()
	select {
	case got := <-a.notify:
		if got != want {
			a.t.Fatalf("NOTIFY_SOCKET got %q, want %q", got, want)
		}
	case <-time.After(wait):
		a.t.Fatalf("no %q on NOTIFY_SOCKET within %s", want, wait)
	}
}

// dialLoop connects again and again, each time one round trip, and
// records every failure: a handover must refuse nothing.
type dialLoop struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	ok       int
	failures []string
}

func startDialing(addr string) *dialLoop {
	d := &dialLoop{stop: make(chan struct{})}
	d.wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-d.stop:
				return
			default:
			}
			if err := roundTrip(addr, fmt.Sprintf("ping %d\n", i)); err != nil {
				d.failures = append(d.failures, err.Error())
			} else {
				d.ok++
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	return d
}

func (d *dialLoop) finish(t *testing.T) {
	t.Helper()
	close(d.stop)
	d.wg.Wait()
	if len(d.failures) > 0 {
		t.Fatalf("%d of %d connections failed during the handovers, first: %s", len(d.failures), d.ok+len(d.failures), d.failures[0])
	}
	t.Logf("%d connections, each echoed, none refused", d.ok)
}

func roundTrip(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func blob(t *testing.T, n int) []byte {
	b := make([]byte, n)
	src := rand.New(rand.NewChaCha8([32]byte{2}))
	for i := range b {
		b[i] = byte(src.Uint32())
	}
	return b
}

// A failed successor leaves the old process serving, its passed sockets
// taken back; a good one inherits the listener, an established
// connection mid-stream and the state blob, and the old process exits.
// Throughout, a dial loop sees no connection refused and a stream sees
// every byte echoed once.
func TestHandover(t *testing.T) {
	state := blob(t, 5<<20+123)
	a, first := startAgent(t, wait, state)
	addr := first.f["addr"]
	if first.f["parent"] != "false" {
		t.Fatalf("first process says it has a parent: %s", first.line)
	}
	a.expectNotify("READY=1")

	s := echocheck.Start(t, addr, wait)
	s.Advance(t, 64<<10)
	dials := startDialing(addr)

	// A successor that exits before it reads what it was passed: nothing
	// was frozen.
	failFile := filepath.Join(a.dir, "fail")
	if err := os.WriteFile(failFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.signal(first.pid)
	a.expect("failing")
	failed := a.expect("upgrade-failed")
	if failed.pid != first.pid || !strings.Contains(failed.f["err"], "exited before it was ready") || failed.f["exported"] != "false" {
		t.Fatalf("want the first process to report the successor's exit, nothing exported: %s", failed.line)
	}
	if err := os.Remove(failFile); err != nil {
		t.Fatal(err)
	}
	s.Advance(t, 64<<10) // still echoed by the first process
	// What the failed upgrade sent was taken back: a listener closed now
	// is closed, not kept listening by a copy in flight.
	if err := syscall.Kill(first.pid, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	a.expect("closed-extra")
	if c, err := net.DialTimeout("tcp", first.f["extra"], wait); err == nil {
		c.Close()
		t.Fatal("a listener closed after a failed upgrade still accepts connections")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial the closed listener: %v, want connection refused", err)
	}

	// A successor that exits once it took the connections and the state:
	// the first process has them back, one descriptor each, and echoes on.
	lateFile := filepath.Join(a.dir, "fail-late")
	if err := os.WriteFile(lateFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.signal(first.pid)
	a.expect("failing-late")
	failed = a.expect("upgrade-failed")
	if failed.f["exported"] != "true" || !strings.Contains(failed.f["err"], "exited before it was ready") {
		t.Fatalf("want the first process to report the successor's exit after the export: %s", failed.line)
	}
	if failed.f["conns"] == "0" || failed.f["refs"] != failed.f["conns"] {
		t.Fatalf("after the failed upgrade the old process holds %s descriptors of its %s connections; want one each", failed.f["refs"], failed.f["conns"])
	}
	if err := os.Remove(lateFile); err != nil {
		t.Fatal(err)
	}
	s.Advance(t, 64<<10)

	// A good successor.
	a.signal(first.pid)
	next := a.expect("ready")
	if next.pid == first.pid || next.f["parent"] != "true" || next.f["addr"] != addr || next.f["early"] != strconv.Itoa(first.pid) {
		t.Fatalf("successor: %s (first: %s)", next.line, first.line)
	}
	a.expectNotify(fmt.Sprintf("MAINPID=%d\nREADY=1", next.pid))
	if up := a.expect("upgraded"); up.pid != first.pid {
		t.Fatalf("want the first process to report the upgrade: %s", up.line)
	}
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("first process after the handover: %v", err)
	}
	s.Advance(t, 64<<10) // echoed by the successor
	dials.finish(t)
	s.Finish(t)

	got, err := os.ReadFile(filepath.Join(a.dir, "out", strconv.Itoa(next.pid)))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, state) {
		t.Fatalf("state: %d bytes arrived, want the %d sent", len(got), len(state))
	}
	if err := roundTrip(addr, "after\n"); err != nil {
		t.Fatalf("the successor's listener: %v", err)
	}
}

// A successor that never says it is ready is killed after ReadyTimeout;
// the old process carries on.
func TestHungSuccessorIsKilled(t *testing.T) {
	a, first := startAgent(t, 2*time.Second, blob(t, 100))
	a.expectNotify("READY=1")
	hangFile := filepath.Join(a.dir, "hang")
	if err := os.WriteFile(hangFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.signal(first.pid)
	hung := a.expect("hanging")
	failed := a.expect("upgrade-failed")
	if !strings.Contains(failed.f["err"], "did not say it was ready within 2s and was killed") {
		t.Fatalf("want a timeout: %s", failed.line)
	}
	deadline := time.Now().Add(wait)
	for syscall.Kill(hung.pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("hung successor %d still running", hung.pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := roundTrip(first.f["addr"], "still here\n"); err != nil {
		t.Fatalf("the first process after a hung successor: %v", err)
	}
}
