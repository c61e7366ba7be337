package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/admin"
)

// writeQueueBound is what a session may hold of frames its streams wrote
// and the connection has not taken: 16 frames of 64 KiB with their 12-byte
// headers (third_party/yamux/PATCHED.md, patch 19).
const writeQueueBound = 16 * (64<<10 + 12)

// A server that stops reading (SIGSTOP) while 32 streams send through the
// client: once the kernel's buffers toward it are full, what the client
// holds for it in its write queue shows in /status and /metrics and stays
// within the bound, though the streams' windows would allow 32 MiB; once
// the server runs again (SIGCONT), every byte of every stream arrives.
func TestWriteQueueBoundedWhileServerStopped(t *testing.T) {
	t.Parallel()
	const (
		streams   = 32
		perStream = 2 << 20
	)
	var received atomic.Int64
	sink := startTarget(t, func(c net.Conn) {
		// The SHA-256 of everything read, sent back at the end.
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			h.Write(buf[:n])
			received.Add(int64(n))
			if err != nil {
				break
			}
		}
		_, _ = c.Write(h.Sum(nil))
	})
	tn := startTunnel(t, tunnelSpec{
		// One bulk lane: the streams turn heavy at once, and one caught
		// moving to another lane when the server stops waits for its
		// answer with its bytes in its replay buffer, in no session's
		// queue. The queue's bound is what this test is about.
		clientExtra: "bulk_connections = 1\nadmin {\n  listen = \"127.0.0.1:0\"\n}\n",
		services:    []svc{{name: "sink", target: sink, allow: []string{"client-a"}}},
		forwards:    []fwd{{name: "sink", service: "sink"}},
	})
	cliAdmin := tn.client.waitMatch(t, reAdmin)[1]

	srv := tn.server.cmd.Process
	var resumeOnce sync.Once
	resume := func() {
		resumeOnce.Do(func() {
			if err := srv.Signal(syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT the server: %v", err)
			}
		})
	}
	defer resume()

	var wg sync.WaitGroup
	errs := make(chan error, streams)
	// All streams start sending together, once all are dialed: dialed
	// and started one by one, on a loaded machine the first ones were
	// done before the last was dialed, and the few left to stop the
	// server under fit in the kernel's buffers, queueing nothing.
	start := make(chan struct{})
	for i := 0; i < streams; i++ {
		c := dial(t, tn.client.forwards["sink"], waitLimit)
		wg.Go(func() {
			<-start
			sum, err := sendRandom(c, uint64(i), perStream)
			if err == nil {
				err = c.CloseWrite()
			}
			var got [32]byte
			if err == nil {
				_ = c.SetReadDeadline(time.Now().Add(2 * waitLimit))
				_, err = io.ReadFull(c, got[:])
			}
			if err == nil && got != sum {
				err = errWrongSum
			}
			errs <- err
		})
	}
	close(start)
	waitFor(t, "a quarter of the bytes at the target", func() bool { return received.Load() >= streams*perStream/4 })
	if err := srv.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	queued := func() (perSession []int, metric float64) {
		var st admin.Status
		if err := json.Unmarshal(get(t, "http://"+cliAdmin+"/status"), &st); err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Sessions {
			perSession = append(perSession, s.WriteQueued)
		}
		return perSession, metricValue(t, string(get(t, "http://"+cliAdmin+"/metrics")), "tunnel_write_queue_bytes")
	}
	waitFor(t, "frames queued for the stopped server, in /status and /metrics", func() bool {
		perSession, metric := queued()
		total := 0
		for _, n := range perSession {
			if n > writeQueueBound {
				t.Fatalf("a session holds %d bytes in its write queue, over the bound of %d", n, writeQueueBound)
			}
			total += n
		}
		if metric > float64(len(perSession)*writeQueueBound) {
			t.Fatalf("tunnel_write_queue_bytes = %v, over %d sessions' bound", metric, len(perSession))
		}
		if total > 0 && metric > 0 {
			t.Logf("queued for the stopped server: %v bytes by session, tunnel_write_queue_bytes %v", perSession, metric)
			return true
		}
		return false
	})
	// The kernel's queue toward the stopped server shows too, within the
	// socket's buffer.
	waitFor(t, "the kernel's queue toward the stopped server, in /status and /metrics", func() bool {
		held, metric := kernelQueued(t, cliAdmin)
		return held > 0 && metric > 0
	})
	// Held there, not growing: the writers now wait for their turn.
	time.Sleep(200 * time.Millisecond)
	if perSession, _ := queued(); len(perSession) > 0 {
		for _, n := range perSession {
			if n > writeQueueBound {
				t.Fatalf("a session holds %d bytes in its write queue, over the bound of %d", n, writeQueueBound)
			}
		}
	}

	resume()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a stream after the server ran again: %v", err)
		}
	}
	if got := received.Load(); got != streams*perStream {
		t.Fatalf("the target read %d bytes, want %d", got, streams*perStream)
	}
	waitFor(t, "nothing queued once the server reads again", func() bool {
		perSession, metric := queued()
		for _, n := range perSession {
			if n != 0 {
				return false
			}
		}
		return metric == 0
	})
	waitFor(t, "the kernel holds nothing once the server reads again", func() bool {
		held, metric := kernelQueued(t, cliAdmin)
		return held == 0 && metric == 0
	})
}

// kernelQueued is what the kernel holds for an agent's sessions, by the
// sum of /status's tcp fields and by tunnel_tcp_queued_bytes; a session
// without them, or whose send queue is over its send buffer, fails t.
func kernelQueued(t *testing.T, adminAddr string) (held int, metric float64) {
	t.Helper()
	var st admin.Status
	if err := json.Unmarshal(get(t, "http://"+adminAddr+"/status"), &st); err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Sessions {
		q := s.TCP
		if q == nil {
			t.Fatalf("session %s (lane %d): no tcp queues in /status", s.Class, s.Lane)
		}
		if q.ReceiveBuffer <= 0 || q.SendBuffer <= 0 || q.SendQueue > q.SendBuffer {
			t.Fatalf("session %s (lane %d): tcp queues %+v", s.Class, s.Lane, *q)
		}
		held += q.Unread + q.SendQueue
	}
	return held, metricValue(t, string(get(t, "http://"+adminAddr+"/metrics")), "tunnel_tcp_queued_bytes")
}

var errWrongSum = errors.New("the target's SHA-256 of the stream differs from what was sent")
