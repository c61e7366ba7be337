package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/agent"
	"github.com/tunnelworks/tunnel/bench/tunnelbench"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

func TestMain(m *testing.M) {
	// The suite starts its relay floor and its out-of-process targets by
	// running its own executable (this test binary here) again.
	if tunnelbench.IsChild(os.Args[1:]) {
		os.Exit(tunnelbench.Main(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// TestQuickSuite runs `tunnel-bench -quick` end to end: it builds the
// agents and takes about a minute, so only when asked (TUNNEL_BENCH=1) and
// never in -short mode. A missed target is logged, not failed; a failed
// check (corrupted data, an agent died, a timeout) fails the test.
func TestQuickSuite(t *testing.T) {
	if testing.Short() || os.Getenv("TUNNEL_BENCH") != "1" {
		t.Skip("set TUNNEL_BENCH=1 (and no -short) to run the quick benchmark suite")
	}
	out := filepath.Join(t.TempDir(), "report.md")
	var stdout, stderr strings.Builder
	code := tunnelbench.Main([]string{"-quick", "-out", out}, &stdout, &stderr)
	t.Logf("report:\n%s", stdout.String())
	if code != 0 {
		t.Fatalf("tunnel-bench -quick: exit %d\n%s", code, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"throughput, 1 stream", "one TLS conn", "round trip p99, 4 bulk streams alongside", "connections/s", "RSS per idle stream", "CPU per GB", "Session stayed up", "tunnel / best peer", "Loopback: every path"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// A peer that is installed must be measured: a peer failing is only
	// reported by the command, but here it means the bench's peer set-up
	// is broken.
	if _, err := exec.LookPath("stunnel4"); err == nil && !strings.Contains(string(b), "| relay floor | stunnel |") {
		t.Error("stunnel is installed but the report has no stunnel column")
	}
	if strings.Contains(string(b), "FAILED") {
		t.Error("a peer failed")
	}
}

const chunk = 32 * 1024

// listen is a loopback listener whose connections go to handle; closed,
// with its handlers waited for, at cleanup.
func listen(tb testing.TB, handle func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); handle(c) })
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// sink reads to EOF with a 32 KiB buffer (io.Discard's ReadFrom reads 8
// KiB at a time: four syscalls per chunk that are the sink's, not the
// path's) and sends back the count as 8 bytes.
func sink(c io.ReadWriter) {
	var n int64
	buf := make([]byte, chunk)
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if err != nil {
			break
		}
	}
	var b [8]byte
	for i := range b {
		b[i] = byte(n >> (56 - 8*i))
	}
	c.Write(b[:])
}

func echo(c net.Conn) {
	io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// push writes b.N chunks to c, half-closes, and checks the sink's count.
func push(b *testing.B, c net.Conn) {
	b.Helper()
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	var n int64
	for _, x := range got {
		n = n<<8 | int64(x)
	}
	if n != int64(b.N)*chunk {
		b.Fatalf("sink got %d bytes, want %d", n, int64(b.N)*chunk)
	}
}

// pingPong does b.N 64-byte round trips on c.
func pingPong(b *testing.B, c net.Conn) {
	b.Helper()
	msg, got := make([]byte, 64), make([]byte, 64)
	b.ResetTimer()
	for i := range b.N {
		msg[0] = byte(i)
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil || got[0] != msg[0] {
			b.Fatal("echo:", err)
		}
	}
	b.StopTimer()
}

// BenchmarkPipe: loopback TCP → forward.Pipe → loopback TCP → sink.
func BenchmarkPipe(b *testing.B) {
	target := listen(b, func(c net.Conn) { sink(c) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	front := listen(b, func(a net.Conn) {
		t, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		forward.Pipe(ctx, a, t, nil, 0)
	})
	c, err := net.Dial("tcp", front)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	push(b, c)
}

// muxPair is a client and server mux.Session over real TLS on loopback;
// the server accepts streams for "sink" and "echo" and handles them in
// process (the target connection is unused).
func muxPair(b *testing.B, cfg mux.Config) *mux.Session {
	b.Helper()
	dir := b.TempDir()
	files, err := agent.DemoPKI(dir, "bench-client")
	if err != nil {
		b.Fatal(err)
	}
	sm, err := ssl.LoadMaterial(files.ServerCert, files.ServerKey, files.CA)
	if err != nil {
		b.Fatal(err)
	}
	cm, err := ssl.LoadMaterial(files.ClientCert, files.ClientKey, files.CA)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		s   *mux.Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			ch <- res{err: err}
			return
		}
		tc := tls.Server(raw, ssl.ServerConfig(sm))
		if err := ssl.Handshake(context.Background(), tc, 5*time.Second); err != nil {
			ch <- res{err: err}
			return
		}
		peer, _ := ssl.PeerIdentity(tc.ConnectionState())
		s, err := mux.Establish(context.Background(), tc, mux.RoleServer, peer, cfg)
		ch <- res{s, err}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	tc := tls.Client(raw, ssl.ClientConfig(cm, "localhost"))
	if err := ssl.Handshake(context.Background(), tc, 5*time.Second); err != nil {
		b.Fatal(err)
	}
	peer, _ := ssl.PeerIdentity(tc.ConnectionState())
	cli, err := mux.Establish(context.Background(), tc, mux.RoleClient, peer, cfg)
	if err != nil {
		b.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		b.Fatal(r.err)
	}
	srv := r.s
	dummy := func(context.Context, mux.Request) (net.Conn, error) { a, z := net.Pipe(); z.Close(); return a, nil }
	all := func(ssl.Identity) bool { return true }
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = srv.Serve(ctx, func(name string) (mux.Service, bool) {
			return mux.Service{Allowed: all, Dial: dummy}, name == "sink" || name == "echo"
		}, func(_ context.Context, name string, st *mux.Stream, target net.Conn) {
			target.Close()
			defer st.Close()
			if name == "sink" {
				sink(st)
			} else {
				echo(st)
			}
		})
	})
	b.Cleanup(func() { cancel(); cli.Close(); srv.Close(); wg.Wait() })
	return cli
}

// BenchmarkMuxStream: one stream's throughput over TLS + yamux, with the
// default 256 KiB window and larger ones (the window bounds a stream's
// throughput at window / pipeline round trip, even on loopback).
func BenchmarkMuxStream(b *testing.B) {
	for _, w := range []uint32{256 << 10, 1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("window=%dKiB", w>>10), func(b *testing.B) {
			cli := muxPair(b, mux.Config{Window: w})
			st, err := cli.Open(context.Background(), "sink", "")
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			push(b, st)
		})
	}
}

// BenchmarkMuxRoundTrip: 64-byte round trips on one stream.
func BenchmarkMuxRoundTrip(b *testing.B) {
	cli := muxPair(b, mux.Config{})
	st, err := cli.Open(context.Background(), "echo", "")
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	pingPong(b, st)
}

// agents runs a server and a client in this process (so -cpuprofile and
// -memprofile see them), with forwards "sink" and "echo" to targets here.
func agents(b *testing.B) (sinkFwd, echoFwd string) {
	b.Helper()
	dir := b.TempDir()
	files, err := agent.DemoPKI(dir, "bench-client")
	if err != nil {
		b.Fatal(err)
	}
	sinkAddr := listen(b, func(c net.Conn) { sink(c) })
	echoAddr := listen(b, echo)
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			b.Fatal(err)
		}
		return p
	}
	scfg, err := config.LoadServer(write("server.hcl", fmt.Sprintf(`listen = "127.0.0.1:0"
drain_timeout = "1s"
tls {
  cert = %q
  key  = %q
  ca   = %q
}
service "sink" {
  target = %q
  allow  = ["bench-client"]
}
service "echo" {
  target = %q
  allow  = ["bench-client"]
}
`, files.ServerCert, files.ServerKey, files.CA, sinkAddr, echoAddr)))
	if err != nil {
		b.Fatal(err)
	}
	log := agent.NewLogger("bench", "warn", "text", io.Discard)
	srv, err := agent.NewServer(scfg, log)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { _ = srv.Run(ctx) })
	select {
	case <-srv.Ready():
	case <-time.After(10 * time.Second):
		b.Fatal("server not ready")
	}
	ccfg, err := config.LoadClient(write("client.hcl", fmt.Sprintf(`server = %q
drain_timeout = "1s"
tls {
  cert = %q
  key  = %q
  ca   = %q
  server_name = "localhost"
}
forward "sink" {
  listen = "127.0.0.1:0"
}
forward "echo" {
  listen = "127.0.0.1:0"
}
`, srv.Addr("tunnel").String(), files.ClientCert, files.ClientKey, files.CA)))
	if err != nil {
		b.Fatal(err)
	}
	cli, err := agent.NewClient(ccfg, log)
	if err != nil {
		b.Fatal(err)
	}
	wg.Go(func() { _ = cli.Run(ctx) })
	select {
	case <-cli.Ready():
	case <-time.After(10 * time.Second):
		b.Fatal("client not ready")
	}
	for deadline := time.Now().Add(10 * time.Second); cli.Session() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no session")
		}
	}
	return cli.Addr("sink").String(), cli.Addr("echo").String()
}

// BenchmarkAgentThroughput: one stream through both agents in process.
func BenchmarkAgentThroughput(b *testing.B) {
	sinkFwd, _ := agents(b)
	c, err := net.Dial("tcp", sinkFwd)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	push(b, c)
}

// BenchmarkAgentThroughput8: eight streams at once through both agents in
// process, b.N chunks in all (the tunnel-bench 8-stream row's shape: the
// streams share one session, its write queue and its receive loop).
func BenchmarkAgentThroughput8(b *testing.B) {
	sinkFwd, _ := agents(b)
	const streams = 8
	conns := make([]net.Conn, streams)
	for i := range conns {
		c, err := net.Dial("tcp", sinkFwd)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	b.SetBytes(chunk)
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make([]error, streams)
	for i, c := range conns {
		count := b.N / streams
		if i < b.N%streams {
			count++
		}
		wg.Go(func() { errs[i] = pushCount(c, count) })
	}
	wg.Wait()
	b.StopTimer()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}

// pushCount writes count chunks to c, half-closes it and checks the byte
// count the sink sends back.
func pushCount(c net.Conn, count int) error {
	buf := make([]byte, chunk)
	for range count {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return fmt.Errorf("sink's count: %w", err)
	}
	var n int64
	for _, x := range got {
		n = n<<8 | int64(x)
	}
	if n != int64(count)*chunk {
		return fmt.Errorf("sink got %d bytes, want %d", n, int64(count)*chunk)
	}
	return nil
}

// BenchmarkAgentRoundTrip: 64-byte round trips through both agents.
func BenchmarkAgentRoundTrip(b *testing.B) {
	_, echoFwd := agents(b)
	c, err := net.Dial("tcp", echoFwd)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pingPong(b, c)
}

// BenchmarkAgentConnect: open, 1-byte echo, close, through both agents.
func BenchmarkAgentConnect(b *testing.B) {
	_, echoFwd := agents(b)
	got := make([]byte, 1)
	b.ResetTimer()
	for range b.N {
		c, err := net.Dial("tcp", echoFwd)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.StopTimer()
}
