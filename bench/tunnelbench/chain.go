package tunnelbench

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// chain is two processes in a row between the bench and its targets, the
// shape of the two agents: the relay floor (relay.go) and the peer
// tunnels (peers.go). Each target has its own entry; the processes that
// carry it may be shared with the other targets (the relays, stunnel: as
// each agent carries every forward) or its own (ghostunnel: one listener
// per process).
type chain struct {
	entries []string // dial entries[i] to reach the i-th target
	carry   [][]int  // PIDs of the processes carrying the i-th target
	stops   []func() // stop what the chain started, by PID, in order
}

// dialer dials through the chain to the i-th target it was started with.
func (c *chain) dialer(i int) dialer { return tcpDialer(c.entries[i]) }

// pids are the processes carrying the i-th target.
func (c *chain) pids(i int) []int { return c.carry[i] }

// allPids are all the chain's processes.
func (c *chain) allPids() []int {
	var out []int
	for _, p := range c.carry {
		out = append(out, p...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// close stops the chain's processes, entry side first.
func (c *chain) close() {
	for _, stop := range slices.Backward(c.stops) {
		stop()
	}
}

// freePorts returns n loopback ports free a moment ago, for programs that
// cannot listen on port 0 and tell which port they got. Another program
// may take one meanwhile: the caller sees its process fail to listen and
// tries again.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitListen waits until the process itself listens on 127.0.0.1 on every
// one of ports (its own sockets, by inode: a port another program holds
// does not count), failing if it exits or waitLimit passes.
func (p *proc) waitListen(ports []int) error {
	deadline := time.Now().Add(waitLimit)
	for {
		have, err := listeningPorts(p.pid())
		if err == nil && !slices.ContainsFunc(ports, func(port int) bool { return !have[port] }) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited (%v) before listening on %v:\n%s", p.name, p.err, ports, tail(p.log.String(), 2000))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %v within %s (%v):\n%s", p.name, ports, waitLimit, err, tail(p.log.String(), 2000))
		}
	}
}

// listeningPorts are the ports of the IPv4 TCP sockets pid listens on.
func listeningPorts(pid int) (map[int]bool, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	ports := map[int]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fl := strings.Fields(sc.Text())
		if len(fl) < 10 || fl[3] != "0A" || !inodes[fl[9]] { // 0A: LISTEN
			continue
		}
		_, hexPort, ok := strings.Cut(fl[1], ":")
		if !ok {
			continue
		}
		if port, err := strconv.ParseInt(hexPort, 16, 32); err == nil {
			ports[int(port)] = true
		}
	}
	return ports, sc.Err()
}
