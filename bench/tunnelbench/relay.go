package tunnelbench

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// The relay floor: two plain TCP relay processes in a chain (no TLS, no
// yamux), the same shape as the two agents. Whatever any two-agent tunnel
// pays for its extra processes, sockets and wake-ups it pays too, so the
// tunnel's figure against it is the cost of TLS and multiplexing alone.
// The relays are this same program, started again with -relay.

// relayFlag marks a child run as a relay: -relay LISTEN=TARGET[,LISTEN=TARGET...].
const relayFlag = "-relay"

// runRelay serves relays until stdin closes (the parent went away): it
// prints its addresses on stdout (one line, comma-separated, in the order
// given), then copies each accepted connection to a new connection to its
// target, both ways, with half-close. Several pairs in one process share it
// as the agents' forwards share an agent.
func runRelay(spec string, stdout, stderr io.Writer) int {
	var (
		lns       []net.Listener
		targets   []string
		listening []string
	)
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for pair := range strings.SplitSeq(spec, ",") {
		listen, target, ok := strings.Cut(pair, "=")
		if !ok {
			closeAll()
			fmt.Fprintf(stderr, "tunnel-bench: -relay %q: want LISTEN=TARGET[,LISTEN=TARGET...]\n", spec)
			return 2
		}
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			closeAll()
			fmt.Fprintf(stderr, "tunnel-bench: relay: %v\n", err)
			return 1
		}
		lns, targets = append(lns, ln), append(targets, target)
		listening = append(listening, ln.Addr().String())
	}
	fmt.Fprintln(stdout, strings.Join(listening, ","))
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); closeAll() }()
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Go(func() { serveRelay(ln, targets[i]) })
	}
	wg.Wait()
	return 0
}

func serveRelay(ln net.Listener, target string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
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
}

func relayHalf(dst, src net.Conn) {
	// Hide ReadFrom/WriteTo: a plain read/write loop like the agents',
	// not splice(2), which no TLS tunnel can use.
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 32<<10))
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// relayChain is two relay processes: entry → second → target, for each
// target.
type relayChain struct {
	entries []string
	cmds    []*exec.Cmd
}

func startRelayChain(targets ...string) (*relayChain, error) {
	rc := &relayChain{}
	next := targets
	for range 2 {
		var spec []string
		for _, t := range next {
			spec = append(spec, "127.0.0.1:0="+t)
		}
		cmd, addrs, err := startChild(len(targets), relayFlag, strings.Join(spec, ","))
		if err != nil {
			rc.close()
			return nil, fmt.Errorf("relay: %w", err)
		}
		rc.cmds = append(rc.cmds, cmd)
		next = addrs
	}
	rc.entries = next
	return rc, nil
}

// close stops the relays this bench started, by PID.
func (rc *relayChain) close() {
	for _, cmd := range rc.cmds {
		stopChild(cmd)
	}
}

// dialer dials through the chain to the i-th target given to
// startRelayChain.
func (rc *relayChain) dialer(i int) dialer { return tcpDialer(rc.entries[i]) }

func (rc *relayChain) pids() []int {
	var out []int
	for _, cmd := range rc.cmds {
		out = append(out, cmd.Process.Pid)
	}
	return out
}
