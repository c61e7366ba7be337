//go:build linux

package handover_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/tunnelworks/tunnel/handover"
)

// The test binary re-executes itself as a small agent (agentEnv=1): an
// echo server on 127.0.0.1:0 opened through Handover.Listen that, on
// SIGUSR2, freezes its connections, queues them with AddConn, sets the
// state blob and upgrades. It reports on stdout, one line each, which
// every generation shares:
//
//	ready pid=P addr=A extra=X parent=B early=E  (SIGUSR1 closes X: closed-extra pid=P; E: the previous PID)
//	upgraded pid=P
//	upgrade-failed pid=P exported=X refs=R conns=C err=E   (R: descriptors of the C frozen sockets; C when none leaked)
//	failing pid=P / failing-late pid=P / hanging pid=P    (a successor told to fail)
//
// Every generation exits when stdin reaches EOF: the test's cleanup.
const (
	agentEnv        = "HANDOVER_TEST_AGENT"
	failEnv         = "HANDOVER_TEST_FAIL"      // a file: while it exists, a new process exits 3 at once
	failLateEnv     = "HANDOVER_TEST_FAIL_LATE" // a file: ... exits 3 once it took the connections and state
	hangEnv         = "HANDOVER_TEST_HANG"      // a file: while it exists, a new process hangs
	stateInEnv      = "HANDOVER_TEST_STATE"     // the blob to pass on
	stateOutEnv     = "HANDOVER_TEST_STATE_OUT"
	readyTimeoutEnv = "HANDOVER_TEST_READY_TIMEOUT"
)

func exists(path string) bool {
	_, err := os.Stat(path)
	return path != "" && err == nil
}

func report(format string, a ...any) {
	// One write per line: lines from two generations never interleave.
	_, _ = os.Stdout.WriteString(fmt.Sprintf(format, a...) + "\n")
}

func runAgent() int {
	pid := os.Getpid()
	log := hclog.New(&hclog.LoggerOptions{Name: "agent-" + strconv.Itoa(pid), Output: os.Stderr, Level: hclog.Debug})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(5)
	}()
	if exists(os.Getenv(failEnv)) {
		report("failing pid=%d", pid)
		return 3
	}
	if exists(os.Getenv(hangEnv)) {
		report("hanging pid=%d", pid)
		select {}
	}
	timeout, _ := time.ParseDuration(os.Getenv(readyTimeoutEnv))
	h, err := handover.New(handover.Options{Logger: log, ReadyTimeout: timeout})
	if err != nil {
		log.Error("new", "error", err)
		return 1
	}
	ln, err := h.Listen("tcp", "127.0.0.1:0", net.Listen)
	if err != nil {
		log.Error("listen", "error", err)
		return 1
	}
	// A second listener, which SIGUSR1 closes. On 127.0.0.2, where the
	// other tests' listeners (127.0.0.1) cannot take its port once freed:
	// the test checks that nothing listens there any more.
	extra, err := h.Listen("tcp", "127.0.0.2:0", net.Listen)
	if err != nil {
		log.Error("listen", "error", err)
		return 1
	}
	a := &echoAgent{log: log, h: h, ln: ln, conns: map[net.Conn]*echoConn{}}
	var inherited []net.Conn
	for i := 0; ; i++ {
		c, err := h.Conn("conn-" + strconv.Itoa(i))
		if errors.Is(err, handover.ErrNotInherited) {
			break
		}
		if err != nil {
			log.Error("inherit", "error", err)
			return 1
		}
		inherited = append(inherited, c)
	}
	state, err := h.State()
	if err != nil {
		log.Error("state", "error", err)
		return 1
	}
	if exists(os.Getenv(failLateEnv)) {
		// Before a byte is read: what this process read and did not
		// echo back would be lost with it (a real agent, too, serves
		// what it inherited only once it will carry on).
		report("failing-late pid=%d", pid)
		return 3
	}
	for _, c := range inherited {
		a.serve(c)
	}
	if state != nil {
		if err := os.WriteFile(filepath.Join(os.Getenv(stateOutEnv), strconv.Itoa(pid)), state, 0o600); err != nil {
			log.Error("state", "error", err)
			return 1
		}
	}
	if a.blob, err = os.ReadFile(os.Getenv(stateInEnv)); err != nil {
		log.Error("state", "error", err)
		return 1
	}
	usr1, usr2 := make(chan os.Signal, 1), make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	signal.Notify(usr2, syscall.SIGUSR2)
	go func() {
		for range usr1 {
			extra.Close()
			report("closed-extra pid=%d", pid)
		}
	}()
	if err := h.Ready(); err != nil {
		log.Error("ready", "error", err)
		return 1
	}
	report("ready pid=%d addr=%s extra=%s parent=%t early=%s", pid, ln.Addr(), extra.Addr(), h.HasParent(), h.EarlyState())
	// What the successor gets before anything is frozen: who it follows.
	if err := h.SetEarlyState([]byte(strconv.Itoa(pid))); err != nil {
		log.Error("early state", "error", err)
		return 1
	}
	a.accepting = make(chan struct{})
	go a.accept()

	for range usr2 {
		frozen, refs, err := a.upgrade()
		if err != nil {
			report("upgrade-failed pid=%d exported=%t refs=%d conns=%d err=%v", pid, errors.Is(err, handover.ErrExported), refs, len(frozen), err)
			continue
		}
		report("upgraded pid=%d", pid)
		a.finish(frozen)
		return 0
	}
	return 0
}

type echoAgent struct {
	log      hclog.Logger
	h        *handover.Handover
	ln       net.Listener
	blob     []byte
	freezing atomic.Bool
	// accepting is closed when the accept loop returns: the last
	// connection it starts serving is counted in wg before that.
	accepting chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]*echoConn
	wg    sync.WaitGroup
}

type echoConn struct {
	done   chan struct{}
	frozen bool
}

func (a *echoAgent) accept() {
	defer close(a.accepting)
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.serve(c)
	}
}

// serve echoes c until EOF (then half-closes), an error, or a freeze:
// every byte read is written back before the next read, so a frozen
// connection owes its peer nothing.
func (a *echoAgent) serve(c net.Conn) {
	ec := &echoConn{done: make(chan struct{})}
	a.mu.Lock()
	a.conns[c] = ec
	a.mu.Unlock()
	a.wg.Go(func() {
		defer close(ec.done)
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					err = werr
				}
			}
			switch {
			case err == nil:
				continue
			case errors.Is(err, os.ErrDeadlineExceeded) && a.freezing.Load():
				ec.frozen = true
				return
			case err == io.EOF:
				_ = c.(*net.TCPConn).CloseWrite()
			}
			c.Close()
			a.mu.Lock()
			delete(a.conns, c)
			a.mu.Unlock()
			return
		}
	})
}

// upgrade upgrades; when the successor asks for the connections, it
// freezes them and queues them and the blob. If the upgrade fails after
// that, it counts its descriptors of the frozen connections (refs), then
// serves them again.
func (a *echoAgent) upgrade() (frozen []net.Conn, refs int, err error) {
	export := func() error {
		frozen = a.freeze()
		for i, c := range frozen {
			if err := a.h.AddConn("conn-"+strconv.Itoa(i), c); err != nil {
				return err
			}
		}
		a.h.SetState(a.blob)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err = a.h.Upgrade(ctx, export); err != nil {
		for _, c := range frozen {
			refs += socketRefs(c)
		}
		for _, c := range frozen {
			_ = c.SetReadDeadline(time.Time{})
			a.serve(c)
		}
	}
	return frozen, refs, err
}

// freeze stops every echo loop between two reads and returns the
// connections still open.
func (a *echoAgent) freeze() []net.Conn {
	a.freezing.Store(true)
	defer a.freezing.Store(false)
	a.mu.Lock()
	held := make(map[net.Conn]*echoConn, len(a.conns))
	for c, ec := range a.conns {
		held[c] = ec
		delete(a.conns, c)
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	a.mu.Unlock()
	var frozen []net.Conn
	for c, ec := range held {
		<-ec.done
		if ec.frozen {
			frozen = append(frozen, c)
		}
	}
	return frozen
}

// finish stops accepting, drops this process's descriptors of the
// connections passed on (no FIN: the successor holds them) and waits for
// the ones it still serves.
func (a *echoAgent) finish(frozen []net.Conn) {
	a.ln.Close()
	<-a.accepting
	for _, c := range frozen {
		c.Close()
	}
	a.wg.Wait()
}

// socketRefs counts this process's descriptors of c's socket.
func socketRefs(c net.Conn) int {
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return -1
	}
	var st unix.Stat_t
	if err := raw.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) }); err != nil {
		return -1
	}
	want := fmt.Sprintf("socket:[%d]", st.Ino)
	entries, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range entries {
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && link == want {
			n++
		}
	}
	return n
}
