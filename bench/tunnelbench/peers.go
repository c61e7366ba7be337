package tunnelbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tunnelworks/tunnel/agent"
)

// The peers: the tunnels a user would otherwise pick, measured through the
// same targets as ours, each as a chain of a client-side process that
// accepts plain TCP and a server-side process that checks the client's
// certificate against the same CA and connects to the target. Both use the
// certificates the agents use, TLS 1.3 and AES-128-GCM (the agents' suite).
// Unlike the agents, both open a TCP connection and do a TLS handshake
// between the two sides for every connection: there is no multiplexing.

// peerNames are the peers -peers may name, in the table's order.
var peerNames = []string{"stunnel", "ghostunnel"}

// ghostunnelModule is what a full run builds ghostunnel from when no
// ghostunnel is on PATH.
const ghostunnelModule = "github.com/ghostunnel/ghostunnel@v1.11.1"

// peer is one tunnel to compare with.
type peer struct {
	name    string // "stunnel" or "ghostunnel"
	bin     string // "" = missing
	version string // for the report
	missing string // why it is not measured, when bin is ""
}

// findPeers looks for each named peer. A missing one is reported, not an
// error. stunnel comes from PATH (Debian's stunnel4); ghostunnel from PATH
// or BENCH_GHOSTUNNEL, else a full run builds it from its Go module into
// dir (a quick run does not: the build takes minutes).
func findPeers(ctx context.Context, names []string, quick bool, dir string, logf func(string, ...any)) []*peer {
	var out []*peer
	for _, name := range names {
		p := &peer{name: name}
		switch name {
		case "stunnel":
			p.bin, p.missing = lookPath("stunnel4", "stunnel")
		case "ghostunnel":
			if v := os.Getenv("BENCH_GHOSTUNNEL"); v != "" {
				p.bin = v
			} else if p.bin, p.missing = lookPath("ghostunnel"); p.bin == "" {
				if quick {
					p.missing += "; a quick run does not build it"
				} else {
					logf("building %s", ghostunnelModule)
					p.bin, p.missing = buildGhostunnel(ctx, dir)
				}
			}
		}
		if p.bin != "" {
			p.version = peerVersion(ctx, p)
		}
		out = append(out, p)
	}
	return out
}

func lookPath(names ...string) (bin, missing string) {
	for _, n := range names {
		if b, err := exec.LookPath(n); err == nil {
			return b, ""
		}
	}
	return "", strings.Join(names, " or ") + " not on PATH"
}

// buildGhostunnel installs ghostunnel from the module proxy into dir.
func buildGhostunnel(ctx context.Context, dir string) (bin, missing string) {
	bctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	gobin := filepath.Join(dir, "peers")
	cmd := exec.CommandContext(bctx, "go", "install", ghostunnelModule)
	cmd.Dir = dir // outside our module: its go.mod plays no part
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOWORK=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		// The first and last lines say what went wrong (the last is the
		// proxy's answer when it refuses); the URLs only say where.
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		why := strings.TrimSpace(lines[0])
		if last := strings.TrimSpace(lines[len(lines)-1]); len(lines) > 1 {
			why += " … " + last
		}
		return "", fmt.Sprintf("go install %s failed (%v): %s", ghostunnelModule, err, reURL.ReplaceAllString(why, "(url)"))
	}
	return filepath.Join(gobin, "ghostunnel"), ""
}

var (
	reStunnelVersion = regexp.MustCompile(`stunnel (\d\S*)`)
	reOpenSSLRunning = regexp.MustCompile(`Running\s+with (OpenSSL \S+)`)
	reGhostVersion   = regexp.MustCompile(`(?i)(?:version|rev)\s+(\S+)`) // "rev v1.11.1 built with …" from a source build
	reURL            = regexp.MustCompile(`https?://\S+`)
)

// peerVersion is the peer's version as it prints it, or "version unknown".
func peerVersion(ctx context.Context, p *peer) string {
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	flag := "--version"
	if p.name == "stunnel" {
		flag = "-version"
	}
	out, _ := exec.CommandContext(vctx, p.bin, flag).CombinedOutput() // stunnel exits 1 after printing it
	switch p.name {
	case "stunnel":
		if m := reStunnelVersion.FindSubmatch(out); m != nil {
			v := "stunnel " + string(m[1])
			if o := reOpenSSLRunning.FindSubmatch(out); o != nil {
				v += " (" + string(o[1]) + ")"
			}
			return v
		}
	case "ghostunnel":
		if m := reGhostVersion.FindSubmatch(out); m != nil {
			return "ghostunnel " + string(m[1])
		}
	}
	return p.name + ", version unknown"
}

// start runs the peer's chain to targets: dial the chain's i-th entry to
// reach targets[i]. A port taken meanwhile by another program makes a
// process fail to listen: then it tries again on other ports.
func (p *peer) start(dir string, pki agent.DemoFiles, targets ...string) (*chain, error) {
	var errs []error
	for range 3 {
		var (
			c   *chain
			err error
		)
		switch p.name {
		case "stunnel":
			c, err = startStunnel(p.bin, dir, pki, targets)
		case "ghostunnel":
			c, err = startGhostunnel(p.bin, pki, targets)
		default:
			return nil, fmt.Errorf("unknown peer %q", p.name)
		}
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%s: %w", p.name, errors.Join(errs...))
}

// stunnelService is one [service] section. Both sides require TLS 1.3 with
// the agents' suite and verify the other side's certificate against the
// bench's CA and its name: the server's as the client agent does
// (server_name "localhost"), the client's as the server agent's allow rule
// does (its CN). Everything else is stunnel's default (TCP_NODELAY on both
// sockets, log level notice: a few lines per connection, as the agents log
// each stream).
func stunnelService(b *strings.Builder, name string, client bool, accept, connect, cert, key, ca, peerName string) {
	fmt.Fprintf(b, "\n[%s]\n", name)
	if client {
		b.WriteString("client = yes\n")
	}
	fmt.Fprintf(b, "accept = %s\nconnect = %s\ncert = %s\nkey = %s\nCAfile = %s\n", accept, connect, cert, key, ca)
	fmt.Fprintf(b, "verifyChain = yes\ncheckHost = %s\nsslVersionMin = TLSv1.3\nciphersuites = TLS_AES_128_GCM_SHA256\n", peerName)
}

// stunnelGlobal: in the foreground (stopped by PID), logging to stderr
// only, no PID file.
const stunnelGlobal = "foreground = yes\nsyslog = no\npid =\n"

// startStunnel starts two stunnel processes, each with one service per
// target, like the two agents with one forward per target.
func startStunnel(bin, dir string, pki agent.DemoFiles, targets []string) (*chain, error) {
	ports, err := freePorts(2 * len(targets))
	if err != nil {
		return nil, err
	}
	srvPorts, cliPorts := ports[:len(targets)], ports[len(targets):]
	var srv, cli strings.Builder
	srv.WriteString(stunnelGlobal)
	cli.WriteString(stunnelGlobal)
	entries := make([]string, len(targets))
	for i, t := range targets {
		name := fmt.Sprintf("target%d", i)
		srvAddr := fmt.Sprintf("127.0.0.1:%d", srvPorts[i])
		entries[i] = fmt.Sprintf("127.0.0.1:%d", cliPorts[i])
		stunnelService(&srv, name, false, srvAddr, t, pki.ServerCert, pki.ServerKey, pki.CA, clientName)
		stunnelService(&cli, name, true, entries[i], srvAddr, pki.ClientCert, pki.ClientKey, pki.CA, "localhost")
	}
	c := &chain{entries: entries}
	var pids []int
	for _, side := range []struct {
		name  string
		conf  string
		ports []int
	}{{"stunnel-server", srv.String(), srvPorts}, {"stunnel-client", cli.String(), cliPorts}} {
		path := filepath.Join(dir, side.name+".conf")
		if err := os.WriteFile(path, []byte(side.conf), 0o600); err != nil {
			c.close()
			return nil, err
		}
		p, err := startProc(side.name, nil, bin, path)
		if err != nil {
			c.close()
			return nil, err
		}
		c.stops = append(c.stops, p.stop)
		if err := p.waitListen(side.ports); err != nil {
			c.close()
			return nil, err
		}
		pids = append(pids, p.pid())
	}
	for range targets {
		c.carry = append(c.carry, pids)
	}
	return c, nil
}

// startGhostunnel starts a ghostunnel server and client per target: one
// ghostunnel process serves one listener. The server allows the client
// certificate's CN, as the server agent's allow rule does; the client
// checks the server's name "localhost", as the client agent does. A 1 s
// shutdown timeout, as the agents' drain_timeout (its default is 5 min).
func startGhostunnel(bin string, pki agent.DemoFiles, targets []string) (*chain, error) {
	ports, err := freePorts(2 * len(targets))
	if err != nil {
		return nil, err
	}
	c := &chain{}
	for i, t := range targets {
		srvAddr := fmt.Sprintf("127.0.0.1:%d", ports[2*i])
		entry := fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])
		var pids []int
		for _, side := range []struct {
			name string
			port int
			args []string
		}{
			{fmt.Sprintf("ghostunnel-server-%d", i), ports[2*i], []string{"server", "--listen", srvAddr, "--target", t,
				"--cert", pki.ServerCert, "--key", pki.ServerKey, "--cacert", pki.CA, "--allow-cn", clientName, "--shutdown-timeout", "1s"}},
			{fmt.Sprintf("ghostunnel-client-%d", i), ports[2*i+1], []string{"client", "--listen", entry, "--target", srvAddr,
				"--cert", pki.ClientCert, "--key", pki.ClientKey, "--cacert", pki.CA, "--override-server-name", "localhost", "--shutdown-timeout", "1s"}},
		} {
			p, err := startProc(side.name, nil, bin, side.args...)
			if err != nil {
				c.close()
				return nil, err
			}
			c.stops = append(c.stops, p.stop)
			if err := p.waitListen([]int{side.port}); err != nil {
				c.close()
				return nil, err
			}
			pids = append(pids, p.pid())
		}
		c.entries = append(c.entries, entry)
		c.carry = append(c.carry, pids)
	}
	return c, nil
}
