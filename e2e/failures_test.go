package e2e

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// firehose is a target that sends until its connection fails, and reports
// the error that stopped it.
func firehose(t *testing.T) (addr string, stopped <-chan error) {
	ch := make(chan error, 16)
	addr = startTarget(t, func(c net.Conn) {
		buf := make([]byte, 32*1024)
		_ = c.SetDeadline(time.Now().Add(time.Minute))
		var err error
		for err == nil {
			_, err = c.Write(buf)
		}
		select {
		case ch <- err:
		default:
		}
	})
	return addr, ch
}

// readUntilEnd reads c until an error and returns it with the byte count.
func readUntilEnd(c net.Conn) (int64, error) {
	n, err := io.Copy(io.Discard, c)
	if err == nil {
		err = io.EOF
	}
	return n, err
}

// expectAbort asserts that a connection whose far end failed mid-transfer
// ends with a reset, not with a clean EOF that would pass truncated data off
// as complete.
func expectAbort(t *testing.T, n int64, err error) {
	t.Helper()
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("after %d bytes the connection was still open: %v", n, err)
	case err == io.EOF:
		t.Errorf("after %d bytes the connection ended with a clean EOF; want a reset (the transfer was cut short)", n)
	case errors.Is(err, syscall.ECONNRESET):
	default:
		t.Errorf("after %d bytes: %v, want a reset", n, err)
	}
}

// The agent at the far end dies (SIGKILL) mid-download: the local
// connection must be reset, not closed as if the download were complete.
// A crash cannot be hidden: the stream, resumable, waits its resume window
// for a peer that never comes back, then ends with a reset.
func TestPeerDiesMidTransfer(t *testing.T) {
	t.Parallel()
	t.Run("client dies under a reverse forward", func(t *testing.T) {
		t.Parallel()
		target, _ := firehose(t)
		tn := startTunnel(t, tunnelSpec{
			serverExtra:    "resume_window = \"2s\"\n",
			clientExtra:    "resume_window = \"2s\"\n",
			serverForwards: []fwd{{name: "back", client: "client-a", service: "hose"}},
			clientServices: []svc{{name: "hose", target: target}},
		})
		c := dial(t, tn.server.forwards["back"], waitLimit)
		if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
			t.Fatal(err)
		}
		_ = tn.client.cmd.Process.Kill()
		tn.client.wait(t)
		n, err := readUntilEnd(c)
		expectAbort(t, n, err)
		t.Log(tn.server.waitLine(t, "session ended", "peer=client-a"))
	})
	t.Run("server dies under a forward", func(t *testing.T) {
		t.Parallel()
		target, _ := firehose(t)
		tn := startTunnel(t, tunnelSpec{
			serverExtra: "resume_window = \"2s\"\n",
			clientExtra: "resume_window = \"2s\"\n",
			services:    []svc{{name: "hose", target: target, allow: []string{"client-a"}}},
			forwards:    []fwd{{name: "hose", service: "hose"}},
		})
		c := dial(t, tn.client.forwards["hose"], waitLimit)
		if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
			t.Fatal(err)
		}
		_ = tn.server.cmd.Process.Kill()
		tn.server.wait(t)
		n, err := readUntilEnd(c)
		expectAbort(t, n, err)
		t.Log(tn.client.waitLine(t, "session ended; reconnecting"))
	})
}

// Reverse forward with the client not connected: the connection is closed
// and the server says why.
func TestReverseForwardWithoutClient(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, "", nil,
		[]fwd{{name: "back", client: "client-a", service: "echo-back"}}))
	t.Cleanup(func() { srv.stop(t) })
	expectRefused(t, srv.forwards["back"])
	t.Log(srv.waitLine(t, "connection refused: client not connected", "forward=back", "client=client-a"))
}

// The target resets its connection mid-transfer: the local application
// must see a reset too, not a clean EOF that passes the truncated download
// off as complete.
func TestTargetResetsMidTransfer(t *testing.T) {
	t.Parallel()
	target := startTarget(t, func(c net.Conn) {
		// Let the tunnel's dial complete before the reset, so the reset
		// lands mid-transfer rather than as a failed dial.
		time.Sleep(100 * time.Millisecond)
		_, _ = c.Write(make([]byte, 256*1024))
		_ = c.(*net.TCPConn).SetLinger(0)
		_ = c.Close()
	})
	tn := startTunnel(t, tunnelSpec{
		services: []svc{{name: "rst", target: target, allow: []string{"client-a"}}},
		forwards: []fwd{{name: "rst", service: "rst"}},
	})
	c := dial(t, tn.client.forwards["rst"], waitLimit)
	n, err := readUntilEnd(c)
	t.Logf("download ended after %d bytes: %v", n, err)
	expectAbort(t, n, err)
	// Both agents finish the stream by themselves: the local connection
	// stays open here, as an idle application would keep it.
	t.Log(tn.server.waitLine(t, "stream failed", "service=rst"))
	t.Log(tn.client.waitLine(t, "forward=rst", "ended="))
}

// The local application resets its connection while the target is still
// sending: the target's connection must end too, not hang with its writes
// blocked on a stream nobody reads.
func TestLocalResetsMidTransfer(t *testing.T) {
	t.Parallel()
	target, stopped := firehose(t)
	tn := startTunnel(t, tunnelSpec{
		services: []svc{{name: "hose", target: target, allow: []string{"client-a"}}},
		forwards: []fwd{{name: "hose", service: "hose"}},
	})
	c := dial(t, tn.client.forwards["hose"], waitLimit)
	if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
		t.Fatal(err)
	}
	_ = c.SetLinger(0)
	_ = c.Close()
	select {
	case err := <-stopped:
		t.Logf("target's writes ended: %v", err)
	case <-time.After(15 * time.Second):
		t.Errorf("15 s after the local application reset its connection the target is still connected, its writes blocked")
	}
	t.Log(tn.client.waitLine(t, "forward=hose"))
}
