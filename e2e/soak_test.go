package e2e

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// slowRelay forwards TCP through one shared token bucket per direction,
// like a slow WAN link: rate bytes per second for all connections together.
func startSlowRelay(t *testing.T, target string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	type bucket struct {
		mu   sync.Mutex
		next time.Time
	}
	up, down := &bucket{}, &bucket{}
	take := func(b *bucket, n int) {
		b.mu.Lock()
		now := time.Now()
		if b.next.Before(now) {
			b.next = now
		}
		b.next = b.next.Add(time.Duration(n) * time.Second / time.Duration(rate))
		wait := time.Until(b.next)
		b.mu.Unlock()
		time.Sleep(wait)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	pump := func(dst, src net.Conn, b *bucket) {
		buf := make([]byte, 1500)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				take(b, n)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				return
			}
		}
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Go(func() { pump(u, c, up) })
			wg.Go(func() { pump(c, u, down) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// A bulk transfer across a 2 Mbit/s link with a 3 s liveness timeout: the
// ping replies queue behind bulk data, yet the session is never torn down.
//
// Not parallel: with a 3 s liveness bound, the race-built agents must not
// be starved of CPU by the soak and the other tests (that would be a false
// "silent peer", which is what this test is about).
func TestSlowLinkBulkKeepsSession(t *testing.T) {
	p := newPKI(t)
	liveness := "ping_after = \"1s\"\ndead_after = \"3s\"\n"
	sinkSums := make(chan [32]byte, 1)
	sink := startTarget(t, func(c net.Conn) {
		sum, _, _ := hashAll(c)
		sinkSums <- sum
	})
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, liveness, []svc{{name: "sink", target: sink, allow: []string{"client-a"}}}, nil))
	link := startSlowRelay(t, srv.addr, 2_000_000/8)
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	cli := startClient(t, clientHCL(link, cert, key, p.caFile, liveness, []fwd{{name: "sink", service: "sink"}}, nil), 1)
	cli.waitLine(t, "session up:")
	c := dial(t, cli.forwards["sink"], time.Minute)
	const size = 5 << 20 // about 21 s at 2 Mbit/s
	start := time.Now()
	sent, err := sendRandom(c, 7, size)
	if err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	select {
	case got := <-sinkSums:
		if got != sent {
			t.Fatal("checksum mismatch across the slow link")
		}
	case <-time.After(45 * time.Second):
		t.Fatal("transfer did not finish")
	}
	t.Logf("%d MiB in %s across a 2 Mbit/s link", size>>20, time.Since(start).Round(time.Second))
	for _, p := range []*proc{cli.proc, srv.proc} {
		if l, ok := p.findLine("session ended"); ok {
			t.Errorf("%s tore the session down under load: %s", p.name, l)
		}
	}
	cli.stop(t)
	srv.stop(t)
}

// Many streams open and close with random sizes and half-closes, every
// byte checked, while the server is restarted once. Streams cut by the
// restart must end with an error on the local side, never a clean EOF with
// missing data.
func TestSoakWithServerRestart(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	echoAddr := startEcho(t)
	services := []svc{{name: "echo", target: echoAddr, allow: []string{"client-a"}}}
	srvText := serverHCL(p.serverCert, p.serverKey, p.caFile, "drain_timeout = \"0s\"\n", services, nil)
	srv := startServer(t, srvText)
	cert, key := p.clientCert(t, "client-a", pki.Options{})
	cli := startClient(t, clientHCL(srv.addr, cert, key, p.caFile, "", []fwd{{name: "echo", service: "echo"}}, nil), 1)
	cli.waitLine(t, "session up:")

	var (
		moved, completed, cut, refused, mismatches atomic.Int64
		wg                                         sync.WaitGroup
		stop                                       atomic.Bool
	)
	worker := func(seed uint64) {
		rng := rand.New(rand.NewPCG(seed, 1))
		for i := 0; !stop.Load() && i < 10000; i++ {
			size := rng.IntN(512 << 10)
			msg := make([]byte, size)
			for j := range msg {
				msg[j] = byte(rng.Uint32())
			}
			c, err := net.DialTimeout("tcp", cli.forwards["echo"], 5*time.Second)
			if err != nil {
				refused.Add(1)
				continue
			}
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			werr := make(chan error, 1)
			pause := rng.IntN(2) == 0 // half-close at once, or after a pause
			go func() {
				_, err := c.Write(msg)
				if err == nil && pause {
					time.Sleep(10 * time.Millisecond)
				}
				if err == nil {
					err = c.(*net.TCPConn).CloseWrite()
				}
				werr <- err
			}()
			got, rerr := io.ReadAll(c)
			c.Close()
			wr := <-werr
			moved.Add(int64(len(got)))
			switch {
			case rerr == nil && wr == nil && bytes.Equal(got, msg):
				completed.Add(1)
			case rerr == nil && wr == nil:
				// A clean EOF with missing or wrong bytes: the one outcome
				// that must never happen (refusals are resets, not EOF).
				mismatches.Add(1)
				t.Errorf("stream of %d bytes: clean EOF after %d bytes (equal prefix %v)", size, len(got), bytes.HasPrefix(msg, got))
			default:
				if !bytes.HasPrefix(msg, got) {
					mismatches.Add(1)
					t.Errorf("stream of %d bytes: corrupted before the error", size)
				}
				cut.Add(1)
			}
		}
	}
	for w := 0; w < 8; w++ {
		wg.Go(func() { worker(uint64(w) + 1) })
	}
	time.Sleep(6 * time.Second)
	_ = srv.cmd.Process.Signal(syscall.SIGKILL)
	srv.wait(t)
	srv2 := startServer(t, strings.Replace(srvText, `listen = "127.0.0.1:0"`, `listen = "`+srv.addr+`"`, 1))
	time.Sleep(8 * time.Second)
	stop.Store(true)
	wg.Wait()
	t.Logf("soak: %d MiB moved, %d streams complete, %d cut by the restart with an error, %d refused while down, %d mismatches",
		moved.Load()>>20, completed.Load(), cut.Load(), refused.Load(), mismatches.Load())
	if mismatches.Load() != 0 {
		t.Fatalf("%d streams lost data silently", mismatches.Load())
	}
	if completed.Load() < 50 {
		t.Errorf("only %d streams completed", completed.Load())
	}
	cli.stop(t)
	srv2.stop(t)
}
