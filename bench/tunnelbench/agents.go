package tunnelbench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/agent"
)

// waitLimit bounds every wait on an agent: start, a log line, exit.
const waitLimit = 20 * time.Second

// clientName is the identity in the client certificate and every allow.
const clientName = "bench-client"

// workspace is the temporary directory with the built agents and the PKI.
type workspace struct {
	dir            string
	server, client string // binaries
	pki            agent.DemoFiles
}

// agentBuild is a directory holding a tunnel-server and a tunnel-client
// built elsewhere (another commit), named in the tables by label.
type agentBuild struct {
	label, server, client string
}

// parseAgentBuilds reads -agents: LABEL=DIR, comma-separated; each DIR
// must hold both binaries.
func parseAgentBuilds(v string) ([]agentBuild, error) {
	var out []agentBuild
	for item := range strings.SplitSeq(v, ",") {
		label, dir, ok := strings.Cut(item, "=")
		if !ok || label == "" || dir == "" {
			return nil, fmt.Errorf("%q: want LABEL=DIR", item)
		}
		b := agentBuild{label: label, server: filepath.Join(dir, "tunnel-server"), client: filepath.Join(dir, "tunnel-client")}
		for _, bin := range []string{b.server, b.client} {
			if st, err := os.Stat(bin); err != nil || st.IsDir() {
				return nil, fmt.Errorf("%q: no binary %s", item, bin)
			}
		}
		if slices.ContainsFunc(out, func(o agentBuild) bool { return o.label == label }) {
			return nil, fmt.Errorf("label %q given twice", label)
		}
		out = append(out, b)
	}
	return out, nil
}

// newWorkspace builds both agents (no -race: we measure) into a temporary
// directory and writes a throwaway CA and certificates beside them.
func newWorkspace(ctx context.Context) (*workspace, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tunnel-bench-")
	if err != nil {
		return nil, err
	}
	w := &workspace{dir: dir, server: filepath.Join(dir, "tunnel-server"), client: filepath.Join(dir, "tunnel-client")}
	for _, b := range []struct{ out, pkg string }{{w.server, "./cmd/tunnel-server"}, {w.client, "./cmd/tunnel-client"}} {
		bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		cmd := exec.CommandContext(bctx, "go", "build", "-o", b.out, b.pkg)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			w.remove()
			return nil, fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	if w.pki, err = agent.DemoPKI(dir, clientName); err != nil {
		w.remove()
		return nil, fmt.Errorf("pki: %w", err)
	}
	return w, nil
}

func (w *workspace) remove() { _ = os.RemoveAll(w.dir) }

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/tunnelworks/tunnel").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root (run from inside the repository): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// common settings of both agents: a short drain so stopping is quick,
// stream limits above the -idle maximum (5,000 idle streams on one bulk
// session; the defaults hold 256 there, see the README's stream limits),
// and /status on loopback (tunnel.kernelReceiveBuffers).
const commonHCL = `log_level     = "info"
drain_timeout = "1s"
max_streams_per_session = 8192
max_session_buffer = "8GiB"
admin {
  listen = "127.0.0.1:0"
}
`

// serverConfig writes a server config with a service per name → target.
func (w *workspace) serverConfig(name string, services map[string]string) (string, error) {
	var b strings.Builder
	b.WriteString(commonHCL)
	fmt.Fprintf(&b, "listen = \"127.0.0.1:0\"\ntls {\n  cert = %q\n  key  = %q\n  ca   = %q\n}\n", w.pki.ServerCert, w.pki.ServerKey, w.pki.CA)
	for _, svc := range sortedKeys(services) {
		fmt.Fprintf(&b, "service %q {\n  target = %q\n  allow  = [%q]\n}\n", svc, services[svc], clientName)
	}
	path := filepath.Join(w.dir, name+".hcl")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// forwardSpec is one client forward.
type forwardSpec struct {
	name, service, class string // class "" = default (bulk for port 0)
}

func (w *workspace) clientConfig(name, server string, forwards []forwardSpec) (string, error) {
	var b strings.Builder
	b.WriteString(commonHCL)
	fmt.Fprintf(&b, "server = %q\ntls {\n  cert = %q\n  key  = %q\n  ca   = %q\n  server_name = \"localhost\"\n}\n", server, w.pki.ClientCert, w.pki.ClientKey, w.pki.CA)
	for _, f := range forwards {
		fmt.Fprintf(&b, "forward %q {\n  listen  = \"127.0.0.1:0\"\n  service = %q\n", f.name, f.service)
		if f.class != "" {
			fmt.Fprintf(&b, "  class   = %q\n", f.class)
		}
		b.WriteString("}\n")
	}
	path := filepath.Join(w.dir, name+".hcl")
	return path, os.WriteFile(path, []byte(b.String()), 0o600)
}

// logBuffer keeps an agent's output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// proc is one running process under test: an agent or a peer tunnel.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
	err  error // from Wait, once done
}

func startAgent(name, bin, config string) (*proc, error) {
	var env []string
	if v := os.Getenv("BENCH_AGENT_GOMAXPROCS"); v != "" {
		env = append(os.Environ(), "GOMAXPROCS="+v)
	}
	return startProc(name, env, bin, "run", "-config", config)
}

// startProc starts bin with args (env nil: this process's), its output
// kept in its log.
func startProc(name string, env []string, bin string, args ...string) (*proc, error) {
	p := &proc{name: name, log: &logBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout = p.log
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM to our own child and waits, then SIGKILL, bounded.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(waitLimit):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-time.After(waitLimit):
	}
}

// waitLog waits for the first match of re in the agent's output and
// returns its first group, failing if the process exits or waitLimit passes.
func (p *proc) waitLog(re *regexp.Regexp) (string, error) {
	return p.waitLogN(re, 1)
}

// waitLogN waits until re has matched n times and returns the nth match's
// first group.
func (p *proc) waitLogN(re *regexp.Regexp, n int) (string, error) {
	deadline := time.Now().Add(waitLimit)
	for {
		m := re.FindAllStringSubmatch(p.log.String(), -1)
		if len(m) >= n {
			if len(m[n-1]) > 1 {
				return m[n-1][1], nil
			}
			return m[n-1][0], nil
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("%s exited (%v) before logging %q:\n%s", p.name, p.err, re, tail(p.log.String(), 2000))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s did not log %q within %s:\n%s", p.name, re, waitLimit, tail(p.log.String(), 2000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

var (
	reListening = regexp.MustCompile(`: listening: addr=(\S+)`)
	reAdmin     = regexp.MustCompile(`admin listening: addr=(\S+)`)
	// The first session of each class: further ones of a class (the
	// client's bulk_connections) end their line with lane=N.
	reSessionUp = regexp.MustCompile(`(?m)session up:.* agent=\S+$`)
	// Lines that mean the client lost its session.
	reReconnect = regexp.MustCompile(`(?m)^.*(session ended|reconnecting|cannot reach server).*$`)
)

func reForward(name string) *regexp.Regexp {
	return regexp.MustCompile(`forward listening: forward=` + regexp.QuoteMeta(name) + ` listen=(\S+)`)
}

// tunnel is a running server and client with their forwards' addresses.
type tunnel struct {
	server, client *proc
	serverAddr     string
	forwards       map[string]string // forward name → local address
}

// startTunnel starts the server, then the client pointed at dialAddr
// (the server itself when via is nil, else via(serverAddr) — a relay),
// and waits for sessions sessions to come up on the client.
func (w *workspace) startTunnel(tag string, services map[string]string, forwards []forwardSpec, sessions int, via func(string) (string, error)) (*tunnel, error) {
	return w.startTunnelBuild(agentBuild{server: w.server, client: w.client}, tag, services, forwards, sessions, via)
}

// startTunnelBuild is startTunnel with the binaries of b.
func (w *workspace) startTunnelBuild(b agentBuild, tag string, services map[string]string, forwards []forwardSpec, sessions int, via func(string) (string, error)) (*tunnel, error) {
	scfg, err := w.serverConfig(tag+"-server", services)
	if err != nil {
		return nil, err
	}
	t := &tunnel{forwards: map[string]string{}}
	if t.server, err = startAgent("tunnel-server", b.server, scfg); err != nil {
		return nil, err
	}
	if t.serverAddr, err = t.server.waitLog(reListening); err != nil {
		t.stop()
		return nil, err
	}
	dial := t.serverAddr
	if via != nil {
		if dial, err = via(t.serverAddr); err != nil {
			t.stop()
			return nil, err
		}
	}
	ccfg, err := w.clientConfig(tag+"-client", dial, forwards)
	if err != nil {
		t.stop()
		return nil, err
	}
	if t.client, err = startAgent("tunnel-client", b.client, ccfg); err != nil {
		t.stop()
		return nil, err
	}
	for _, f := range forwards {
		if t.forwards[f.name], err = t.client.waitLog(reForward(f.name)); err != nil {
			t.stop()
			return nil, err
		}
	}
	if _, err := t.client.waitLogN(reSessionUp, sessions); err != nil {
		t.stop()
		return nil, err
	}
	return t, nil
}

func (t *tunnel) stop() {
	if t.client != nil {
		t.client.stop()
	}
	if t.server != nil {
		t.server.stop()
	}
}

func (t *tunnel) pids() []int { return []int{t.server.pid(), t.client.pid()} }

// kernelReceiveBuffers are the largest kernel receive buffers of the
// tunnel's bulk connections at either agent, in MiB, from /status: of
// lane 0 (messages and the start of every stream) and of the other lanes
// (the transfers'). Linux grows a connection's buffer with its traffic and
// never shrinks it, and a ping beside bulk streams was measured slower
// beside a larger one (bench/README.md, "twentieth part"). -1 where an
// agent does not tell (a build from before /status showed it, another
// system).
func (t *tunnel) kernelReceiveBuffers() (lane0, others float64) {
	largest := [2]int{-1, -1}
	for _, p := range []*proc{t.server, t.client} {
		m := reAdmin.FindStringSubmatch(p.log.String())
		if m == nil {
			return -1, -1
		}
		var st admin.Status
		if err := getJSON("http://"+m[1]+"/status", &st); err != nil {
			return -1, -1
		}
		for _, s := range st.Sessions {
			if s.TCP == nil {
				return -1, -1
			}
			if s.Class == "bulk" {
				i := min(s.Lane, 1)
				largest[i] = max(largest[i], s.TCP.ReceiveBuffer)
			}
		}
	}
	mib := func(n int) float64 {
		if n < 0 {
			return -1
		}
		return float64(n) / (1 << 20)
	}
	return mib(largest[0]), mib(largest[1])
}

// getJSON decodes the JSON answer to a GET of url into v, within 5 s.
func getJSON(url string, v any) error {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// logTails is the end of both agents' logs, for a failed measurement.
func (t *tunnel) logTails() string {
	return fmt.Sprintf("%s log, last lines:\n%s\n%s log, last lines:\n%s", t.server.name, tail(t.server.log.String(), 3000), t.client.name, tail(t.client.log.String(), 3000))
}

// rssKiB is VmRSS of pid in KiB.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// clockTicks is USER_HZ, 100 on every Linux we run on.
const clockTicks = 100

// cpuSeconds is utime+stime of pid.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("odd /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After ")": state(3) ... utime is field 14, stime 15 (1-based) → 11, 12 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return float64(u+st) / clockTicks, nil
}

func sumOver(pids []int, f func(int) (float64, error)) (float64, error) {
	var sum float64
	for _, p := range pids {
		v, err := f(p)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
