package e2e

import (
	"encoding/json"
	"fmt"
	"github.com/tunnelworks/tunnel/bench/linkemu"
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

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

var reAdmin = regexp.MustCompile(`admin listening: addr=(\S+)`)

func get(t *testing.T, url string) []byte {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return b
}

// metricValue sums the samples of a metric whose line contains every sub.
func metricValue(t *testing.T, text, name string, subs ...string) float64 {
	t.Helper()
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if !(strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ")) || !containsAll(line, subs...) {
			continue
		}
		f := strings.Fields(line)
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// Metrics and status move while a stream runs (and moves, once heavy,
// to the second bulk lane), the metrics pass the Prometheus linter (what
// promtool check metrics runs), and `status` prints the running agent's
// state.
func TestMetricsAndStatusWhileStreaming(t *testing.T) {
	t.Parallel()
	sink := startTarget(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	tn := startTunnel(t, tunnelSpec{
		serverExtra: "admin {\n  listen = \"127.0.0.1:0\"\n}\n",
		// Two bulk lanes: status and metrics count a lane as a session
		// of its class, not a class of its own.
		clientExtra: "bulk_connections = 2\nadmin {\n  listen = \"127.0.0.1:0\"\n}\n",
		services:    []svc{{name: "sink", target: sink, allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "sink", service: "sink"}},
	})
	const bulkLanes = 2
	cliAdmin := tn.client.waitMatch(t, reAdmin)[1]
	srvAdmin := tn.server.waitMatch(t, reAdmin)[1]

	c := dial(t, tn.client.forwards["sink"], waitLimit)
	chunk := make([]byte, 64<<10)
	write := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := c.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(16) // 1 MiB
	var first float64
	waitFor(t, "bytes to show in the client's metrics", func() bool {
		first = metricValue(t, string(get(t, "http://"+cliAdmin+"/metrics")), "tunnel_stream_bytes_total", `direction="to_peer"`, `name="sink"`)
		return first >= 1<<20
	})
	write(16)
	waitFor(t, "the counter to move with the stream still open", func() bool {
		return metricValue(t, string(get(t, "http://"+cliAdmin+"/metrics")), "tunnel_stream_bytes_total", `direction="to_peer"`, `name="sink"`) >= first+1<<20
	})
	// Every bulk lane up (bulk_connections): a lane is a session of
	// the class, not a class of its own.
	var text string
	waitFor(t, "the client's bulk lanes on the server", func() bool {
		text = string(get(t, "http://"+srvAdmin+"/metrics"))
		return metricValue(t, text, "tunnel_sessions", `class="bulk"`) == bulkLanes
	})
	// The stream is heavy (megabytes within a second): it moves, live,
	// off lane 0, where every stream starts, to lane 1. In bursts until
	// it has, 64 MiB at most: a loaded machine carries one slower.
	moved := func(addr string) float64 {
		return metricValue(t, string(get(t, "http://"+addr+"/metrics")), "tunnel_streams_moved_total")
	}
	for i := 0; i < 64 && moved(cliAdmin) < 1; i++ {
		write(16)
	}
	// The server counts the move once its resend is done, which may be
	// after the client's Move has its answer and is counted.
	waitFor(t, "the server to count the move", func() bool { return moved(srvAdmin) >= 1 })
	if c, s := moved(cliAdmin), moved(srvAdmin); c != 1 || s != 1 {
		t.Fatalf("tunnel_streams_moved_total: client %v, server %v; want the heavy stream moved once", c, s)
	}
	waitFor(t, "the stream on lane 1 only (the old carrier freed)", func() bool {
		var st admin.Status
		if err := json.Unmarshal(get(t, "http://"+cliAdmin+"/status"), &st); err != nil {
			t.Fatal(err)
		}
		on := map[int]int{}
		for _, s := range st.Sessions {
			on[s.Lane] += s.Streams
		}
		return on[0] == 0 && on[1] == 1 && st.Resume != nil && st.Resume.Moved == 1
	})
	write(16) // and carries on there
	if v := metricValue(t, text, "tunnel_streams_open", `name="sink"`); v != 1 {
		t.Errorf("server tunnel_streams_open{sink} = %v, want 1", v)
	}
	if metricValue(t, text, "tunnel_certificate_expiry_timestamp_seconds", `what="certificate"`) < float64(time.Now().Unix()) {
		t.Error("certificate expiry metric missing or in the past")
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "tunnel_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}

	var st admin.Status
	if err := json.Unmarshal(get(t, "http://"+cliAdmin+"/status"), &st); err != nil {
		t.Fatal(err)
	}
	lanes := map[int]bool{}
	for _, s := range st.Sessions {
		if s.Peer != "tunnel-server" || s.Class != "bulk" {
			t.Errorf("client status session: %+v", s)
		}
		lanes[s.Lane] = true
	}
	if !st.Healthy || len(st.Sessions) != bulkLanes || len(lanes) != bulkLanes || len(st.Forwards) != 1 ||
		st.Forwards[0].StreamsOpen != 1 || st.Forwards[0].BytesToPeer < 2<<20 || len(st.Expiries) < 2 {
		t.Errorf("client status: %+v", st)
	}
	if b := get(t, "http://"+cliAdmin+"/healthz"); string(b) != "ok\n" {
		t.Errorf("healthz: %q", b)
	}
	out, err := exec.Command(clientBin, "status", "-admin", cliAdmin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tunnel-server") || !strings.Contains(string(out), "sink") || !strings.Contains(string(out), "healthy") {
		t.Errorf("status command: %v\n%s", err, out)
	}
	c.Close()
}

// A download through a bulk forward across a 2 Mbit/s link, between the
// real agents: the client only reads it, and at that rate it never
// carries a megabyte within a second, so only the server sees it as a
// transfer (its writes wait for the path). The server says so and the
// client moves it to lane 1, counted on both agents; every byte arrives.
func TestSlowDownloadMoves(t *testing.T) {
	t.Parallel()
	link := linkemu.New(linkemu.Config{RateBitsPerSec: 2e6, OneWayDelay: 20 * time.Millisecond})
	t.Cleanup(func() { link.Close() })
	block := pattern(251 * 1024)
	source := startTarget(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
		for {
			if _, err := c.Write(block); err != nil {
				return
			}
		}
	})
	tn := startTunnel(t, tunnelSpec{
		serverExtra: "admin {\n  listen = \"127.0.0.1:0\"\n}\n",
		clientExtra: "bulk_connections = 2\nadmin {\n  listen = \"127.0.0.1:0\"\n}\n",
		services:    []svc{{name: "source", target: source, allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "source", service: "source"}},
		link:        link,
	})
	cliAdmin := tn.client.waitMatch(t, reAdmin)[1]
	srvAdmin := tn.server.waitMatch(t, reAdmin)[1]
	moved := func(addr string) float64 {
		return metricValue(t, string(get(t, "http://"+addr+"/metrics")), "tunnel_streams_moved_total")
	}

	c := dial(t, tn.client.forwards["source"], waitLimit)
	_ = c.SetReadDeadline(time.Now().Add(90 * time.Second))
	var (
		read int
		buf  = make([]byte, 32<<10)
	)
	// Reads until the move and 64 KiB past it, checking every byte: 30 s
	// of the link at most (a move needs half a second of the server
	// waiting).
	for deadline, after := time.Now().Add(30*time.Second), -1; after < 0 || read < after; {
		n, err := c.Read(buf)
		for i := range n {
			if buf[i] != byte((read+i)%251) {
				t.Fatalf("byte %d of the download differs", read+i)
			}
		}
		read += n
		if err != nil {
			t.Fatalf("download after %d bytes: %v", read, err)
		}
		if after < 0 && moved(cliAdmin) == 1 {
			after = read + 64<<10
		}
		if after < 0 && time.Now().After(deadline) {
			t.Fatalf("a download at 2 Mbit/s did not move in 30 s (%d bytes read; tunnel_streams_moved_total %v)", read, moved(cliAdmin))
		}
	}
	// The server counts the move once it has resent what was in flight.
	waitFor(t, "the server to count the move", func() bool { return moved(srvAdmin) == 1 })
	if c := moved(cliAdmin); c != 1 {
		t.Fatalf("client tunnel_streams_moved_total %v, want the download moved once", c)
	}
}

// SIGHUP after revoking the connected client: its session is closed within
// the reload and it cannot come back. The client is told why, in words, and
// refuses its local connections at once instead of holding each for
// session_wait.
func TestReloadRevokesConnectedClient(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	run := func(args ...string) string {
		out, err := exec.Command(serverBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	run("cert", "ca", "create", "--dir", ca)
	run("cert", "issue", "--ca-dir", ca, "--server", "tunnel-server", "--dns", "localhost", "--out-dir", dir)
	run("cert", "issue", "--ca-dir", ca, "--client", "client-a", "--out-dir", dir)
	echo := startEcho(t)
	srvCfg := filepath.Join(dir, "server.hcl")
	base := serverHCL(filepath.Join(dir, "tunnel-server.crt"), filepath.Join(dir, "tunnel-server.key"), filepath.Join(ca, "ca.crt"), "", []svc{{name: "echo", target: echo, allow: []string{"client-a"}}}, nil)
	if err := os.WriteFile(srvCfg, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	srvProc := startProc(t, "tunnel-server", serverBin, "run", "-config", srvCfg)
	addr := srvProc.waitMatch(t, reListening)[1]
	cli := startClient(t, clientHCL(addr, filepath.Join(dir, "client-a.crt"), filepath.Join(dir, "client-a.key"), filepath.Join(ca, "ca.crt"), `session_wait = "60s"`, []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli.waitLine(t, "session up:")
	if err := oneStream(cli.forwards["echo"], 1); err != nil {
		t.Fatal(err)
	}

	insp := run("cert", "inspect", filepath.Join(dir, "client-a.crt"))
	serial := regexp.MustCompile(`serial:\s+(\S+)`).FindStringSubmatch(insp)[1]
	run("cert", "revoke", "--ca-dir", ca, serial)
	withCRL := strings.Replace(base, "ca   = ", "crl  = ["+strconv.Quote(filepath.Join(ca, "ca.crl"))+"]\n  ca   = ", 1)
	if err := os.WriteFile(srvCfg, []byte(withCRL), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := srvProc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	t.Log(srvProc.waitLine(t, "reloaded", "CRLs"))
	t.Log(srvProc.waitLine(t, "closing session: its client no longer passes", "revoked"))
	t.Log(srvProc.waitLine(t, "client refused", "serial "+serial+") is revoked"))
	if n := srvProc.sessionsUp("peer=client-a"); n != 1 {
		t.Errorf("revoked client got %d sessions, want only the first", n)
	}
	// The client's log says why, from the server's own words (without its
	// file names), both when its session ended and on its retries.
	t.Log(cli.waitLine(t, "session ended; reconnecting", "the server refused us", "serial "+serial+`) is revoked`))
	t.Log(cli.waitLine(t, "the server refused us; retrying", "serial "+serial+`) is revoked`))
	if line, ok := cli.findLine("the server refused us", "ca.crl"); ok {
		t.Errorf("the client was told the server's CRL file: %s", line)
	}
	start := time.Now()
	expectRefused(t, cli.forwards["echo"])
	if took := time.Since(start); took >= 30*time.Second {
		t.Errorf("local connection held %s; session_wait is 60s and the refusal definite", took)
	}
	cli.stop(t)
	srvProc.stop(t)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// SIGHUP applies the admin block: adding one starts the listener (it
// answers /healthz), removing it closes the port; the reloaded line says
// so as a sentence.
func TestReloadStartsAndStopsAdmin(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	dir := t.TempDir()
	srvCfg, cliCfg := filepath.Join(dir, "server.hcl"), filepath.Join(dir, "client.hcl")
	write := func(path, text string) {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	adminBlock := "admin {\n  listen = \"127.0.0.1:0\"\n}\n"
	srvText := serverHCL(p.serverCert, p.serverKey, p.caFile, "", []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}}, nil)
	write(srvCfg, srvText)
	srv := startProc(t, "tunnel-server", serverBin, "run", "-config", srvCfg)
	addr := srv.waitMatch(t, reListening)[1]
	cliText := clientHCL(addr, cert, key, p.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil)
	write(cliCfg, cliText)
	cli := startProc(t, "tunnel-client", clientBin, "run", "-config", cliCfg)
	cli.waitLine(t, "session up:")

	for _, a := range []struct {
		proc       *proc
		path, text string
	}{{srv, srvCfg, srvText}, {cli, cliCfg, cliText}} {
		write(a.path, strings.Replace(a.text, "\ntls {", "\n"+adminBlock+"tls {", 1))
		if err := a.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		admin := a.proc.waitMatch(t, reAdmin)[1]
		t.Log(a.proc.waitLine(t, "reloaded", `changes="admin listener started on `+admin+`"`))
		if b := get(t, "http://"+admin+"/healthz"); string(b) != "ok\n" {
			t.Errorf("%s /healthz: %q", a.proc.name, b)
		}
		write(a.path, a.text)
		if err := a.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		t.Log(a.proc.waitLine(t, "reloaded", "admin listener on "+admin+" stopped"))
		if c, err := net.DialTimeout("tcp", admin, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("%s: admin port %s still accepts after the block was removed", a.proc.name, admin)
		}
		if err := a.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		t.Log(a.proc.waitLine(t, "reloaded", `changes="nothing changed"`))
	}
	cli.stop(t)
	srv.stop(t)
}

// A target that stops reading: the bytes the client sends come to wait in
// the server's stream buffer, and the built server says how many in
// /metrics and /status (never more than a bulk stream's 1 MiB window);
// once the target reads again, nothing is held.
func TestReceiveBufferMetric(t *testing.T) {
	t.Parallel()
	// The most one bulk stream is offered: the class's window (1 MiB), or
	// 4 MiB while it is its session's only bulk receiver on a fast path
	// (yamux patch 22).
	const loneWindow = 4 << 20
	release := make(chan struct{})
	releaseOnce := sync.OnceFunc(func() { close(release) })
	defer releaseOnce()
	sink := startTarget(t, func(c net.Conn) {
		<-release
		_, _ = io.Copy(io.Discard, c)
	})
	tn := startTunnel(t, tunnelSpec{
		serverExtra: "admin {\n  listen = \"127.0.0.1:0\"\n}\n",
		services:    []svc{{name: "sink", target: sink, allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "sink", service: "sink"}},
	})
	srvAdmin := tn.server.waitMatch(t, reAdmin)[1]

	c := dial(t, tn.client.forwards["sink"], waitLimit)
	defer c.Close()
	// More than the kernel's socket buffers toward the target hold.
	written := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1024; i++ { // 64 MiB
			if _, err := c.Write(chunk); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	held := func() float64 {
		return metricValue(t, string(get(t, "http://"+srvAdmin+"/metrics")), "tunnel_receive_buffer_bytes")
	}
	waitFor(t, "bytes held for the stalled target in the server's metrics", func() bool {
		h := held()
		if h > loneWindow {
			t.Fatalf("tunnel_receive_buffer_bytes = %v, more than a lone stream's window", h)
		}
		return h > 0
	})
	// The kernel may still take a little toward the stalled target now and
	// then (its buffers grow), so the buffer can drain for a moment: wait
	// for /status to show it too.
	waitFor(t, "the same in the server's /status", func() bool {
		var st admin.Status
		if err := json.Unmarshal(get(t, "http://"+srvAdmin+"/status"), &st); err != nil {
			t.Fatal(err)
		}
		buffered := 0
		for _, s := range st.Sessions {
			buffered += s.ReceiveBuffered
		}
		if buffered > loneWindow {
			t.Fatalf("server /status: receive_buffered_bytes %d over its sessions, more than a lone stream's window", buffered)
		}
		return buffered > 0
	})

	releaseOnce()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the writes did not finish once the target read again")
	}
	waitFor(t, "nothing held once the target reads", func() bool { return held() == 0 })
}

// A lone upload over loopback is lent window beyond the class's (yamux
// patch 22), shown in the server's /status; once the stream ends the
// session holds none of it. Every byte arrives.
func TestLoneWindowLent(t *testing.T) {
	t.Parallel()
	sink, received := startSink(t)
	tn := startTunnel(t, tunnelSpec{
		serverExtra: "admin {\n  listen = \"127.0.0.1:0\"\n}\n",
		services:    []svc{{name: "sink", target: sink, allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "sink", service: "sink"}},
	})
	srvAdmin := tn.server.waitMatch(t, reAdmin)[1]
	lent := func() (total int64) {
		var st admin.Status
		if err := json.Unmarshal(get(t, "http://"+srvAdmin+"/status"), &st); err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Sessions {
			if s.LoneWindowLent < 0 || s.LoneWindowLent > 3<<20 {
				t.Fatalf("session %s lane %d: lone_window_lent_bytes %d, want within [0, 3 MiB]", s.Class, s.Lane, s.LoneWindowLent)
			}
			total += s.LoneWindowLent
		}
		return total
	}

	up := startUpload(t, tn.client.forwards["sink"], received)
	waitFor(t, "window lent to the lone upload, in the server's /status", func() bool { return lent() > 0 })
	up.finish(t)
	waitFor(t, "nothing lent once the stream ended", func() bool { return lent() == 0 })
}
