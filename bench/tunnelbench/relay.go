package tunnelbench

import (
	"fmt"
	"io"
	"net"
	"os"
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

// startRelayChain starts two relay processes: entry → second → target,
// for each target.
func startRelayChain(targets ...string) (*chain, error) {
	rc := &chain{}
	next := targets
	var pids []int
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
		rc.stops = append(rc.stops, func() { stopChild(cmd) })
		pids = append(pids, cmd.Process.Pid)
		next = addrs
	}
	rc.entries = next
	for range targets {
		rc.carry = append(rc.carry, pids)
	}
	return rc, nil
}
