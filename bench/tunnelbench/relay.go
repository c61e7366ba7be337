package tunnelbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// The relay floor: two plain TCP relay processes in a chain (no TLS, no
// yamux), the same shape as the two agents. Whatever any two-agent tunnel
// pays for its extra processes, sockets and wake-ups it pays too, so the
// tunnel's figure against it is the cost of TLS and multiplexing alone.
// The relays are this same program, started again with -relay.

// relayFlag marks a child run as a relay: -relay LISTEN=TARGET.
const relayFlag = "-relay"

// runRelay serves one relay until stdin closes (the parent went away): it
// prints its address on stdout, then copies each accepted connection to a
// new connection to target, both ways, with half-close.
func runRelay(spec string, stdout io.Writer) int {
	listen, target, ok := strings.Cut(spec, "=")
	if !ok {
		fmt.Fprintf(os.Stderr, "tunnel-bench: -relay %q: want LISTEN=TARGET\n", spec)
		return 2
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "tunnel-bench: relay: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, ln.Addr())
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); ln.Close() }()
	var wg sync.WaitGroup
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		wg.Go(func() {
			defer c.Close()
			t, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer t.Close()
			var half sync.WaitGroup
			half.Go(func() { relayHalf(t, c) })
			relayHalf(c, t)
			half.Wait()
		})
	}
	return 0
}

func relayHalf(dst, src net.Conn) {
	// Hide ReadFrom/WriteTo: a plain read/write loop like the agents',
	// not splice(2), which no TLS tunnel can use.
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 32<<10))
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// relayChain is two relay processes: entry → second → target.
type relayChain struct {
	entry string
	cmds  []*exec.Cmd
}

func startRelayChain(target string) (*relayChain, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	rc := &relayChain{}
	next := target
	for range 2 {
		cmd := exec.Command(self, relayFlag, "127.0.0.1:0="+next)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			rc.close()
			return nil, err
		}
		_ = stdin // closed by Wait in close: the relay then exits
		out, err := cmd.StdoutPipe()
		if err != nil {
			rc.close()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			rc.close()
			return nil, fmt.Errorf("start relay: %w", err)
		}
		rc.cmds = append(rc.cmds, cmd)
		addr := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(out).ReadString('\n')
			addr <- strings.TrimSpace(line)
		}()
		select {
		case next = <-addr:
		case <-time.After(waitLimit):
			rc.close()
			return nil, fmt.Errorf("relay did not start within %s", waitLimit)
		}
		if next == "" {
			rc.close()
			return nil, fmt.Errorf("relay did not start")
		}
	}
	rc.entry = next
	return rc, nil
}

// close stops the relays this bench started, by PID.
func (rc *relayChain) close() {
	for _, cmd := range rc.cmds {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

func (rc *relayChain) dial(ctx context.Context) (net.Conn, error) {
	return tcpDialer(rc.entry)(ctx)
}

func (rc *relayChain) pids() []int {
	var out []int
	for _, cmd := range rc.cmds {
		out = append(out, cmd.Process.Pid)
	}
	return out
}
