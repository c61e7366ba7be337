package e2e

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// helloBytes is a hello per mux/wire.go: "TUNL" | version | length | JSON.
func helloBytes(t *testing.T, role string) []byte {
	t.Helper()
	h := map[string]string{"role": role, "agent": "e2e-test"}
	if role == "client" {
		h["class"] = "bulk" // a server refuses a client hello without a known class
	}
	body, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	b := append([]byte("TUNL"), 1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...)
}

// readHello reads the server's hello off r and checks its magic.
func readHello(t *testing.T, r io.Reader) {
	t.Helper()
	var head [7]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		t.Fatalf("read server hello: %v", err)
	}
	if string(head[:4]) != "TUNL" || head[4] != 1 {
		t.Fatalf("server hello starts with %q", head[:5])
	}
	if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint16(head[5:]))); err != nil {
		t.Fatalf("read server hello body: %v", err)
	}
}

// expectClosed reads r to its end and fails if it is still open when the
// deadline passes (EOF, reset or a TLS error all count as closed).
func expectClosed(t *testing.T, r io.Reader) {
	t.Helper()
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server did not close the connection: %v", err)
	}
}

// backgroundEcho keeps one stream busy: it sends numbered chunks through
// addr and checks each comes back, until stopped.
type backgroundEcho struct {
	rounds atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
	err    error
}

func startBackgroundEcho(t *testing.T, addr string) *backgroundEcho {
	b := &backgroundEcho{stop: make(chan struct{})}
	c := dial(t, addr, 2*time.Minute)
	b.wg.Go(func() {
		chunk := make([]byte, 16*1024)
		got := make([]byte, len(chunk))
		for i := 0; ; i++ {
			select {
			case <-b.stop:
				return
			default:
			}
			for j := range chunk {
				chunk[j] = byte(i + j)
			}
			// Each round within waitLimit, however long the test runs
			// (its parallel subtests may wait minutes for a slot).
			_ = c.SetDeadline(time.Now().Add(waitLimit))
			if _, err := c.Write(chunk); err != nil {
				b.err = fmt.Errorf("round %d: write: %w", i, err)
				return
			}
			if _, err := io.ReadFull(c, got); err != nil {
				b.err = fmt.Errorf("round %d: read: %w", i, err)
				return
			}
			if !bytes.Equal(got, chunk) {
				b.err = fmt.Errorf("round %d: data came back changed", i)
				return
			}
			b.rounds.Add(1)
			time.Sleep(5 * time.Millisecond)
		}
	})
	t.Cleanup(b.halt)
	return b
}

func (b *backgroundEcho) halt() {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	b.wg.Wait()
}

// Bad input on the tunnel port, while a real session moves data: each bad
// connection gets one clear log line and is dropped; the real session and
// its stream go on.
func TestBadInput(t *testing.T) {
	t.Parallel()
	tn := startTunnel(t, tunnelSpec{
		serverExtra: `handshake_timeout = "1s"`,
		// The misbehaving peers hold valid, allowed certificates: what is
		// tested is what they send after the handshake.
		services: []svc{{name: "echo", target: startEcho(t), allow: []string{"client-a", "client-evil", "client-evil2"}}},
		forwards: []fwd{{name: "echo", service: "echo"}},
	})
	srv := tn.server
	bg := startBackgroundEcho(t, tn.client.forwards["echo"])

	t.Run("group", func(t *testing.T) {
		t.Run("garbage instead of TLS", func(t *testing.T) {
			t.Parallel()
			c := dial(t, srv.addr, 10*time.Second)
			if _, err := c.Write([]byte("GARBAGE GARBAGE GARBAGE\r\n\r\n")); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c)
			local := c.LocalAddr().String()
			t.Log(srv.waitLine(t, "client refused", "remote="+local, "not speaking TLS"))
			if n := srv.countLines("remote=" + local); n != 1 {
				t.Errorf("server logged %d lines about %s, want 1", n, local)
			}
		})
		t.Run("handshake never finished", func(t *testing.T) {
			t.Parallel()
			c := dial(t, srv.addr, 10*time.Second)
			start := time.Now()
			expectClosed(t, c)
			if el := time.Since(start); el > 5*time.Second {
				t.Errorf("server closed a silent connection after %s; handshake_timeout is 1s", el)
			}
			local := c.LocalAddr().String()
			t.Log(srv.waitLine(t, "client refused", "remote="+local, "did not complete it within 1s"))
			if n := srv.countLines("remote=" + local); n != 1 {
				t.Errorf("server logged %d lines about %s, want 1", n, local)
			}
		})
		t.Run("malformed hello", func(t *testing.T) {
			t.Parallel()
			raw := dial(t, srv.addr, 10*time.Second)
			c := tls.Client(raw, clientTLS(tn.pki, tlsCert(t, tn.pki.issueClient(t, "client-evil", pki.Options{}))))
			if err := c.Handshake(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("GARBAGE GARBAGE GARBAGE")); err != nil {
				t.Fatal(err)
			}
			expectClosed(t, c)
			local := raw.LocalAddr().String()
			t.Log(srv.waitLine(t, "client refused", "remote="+local, "does not speak the tunnel protocol"))
			if n := srv.countLines("remote=" + local); n != 1 {
				t.Errorf("server logged %d lines about %s, want 1", n, local)
			}
		})
		t.Run("malformed stream header", func(t *testing.T) {
			t.Parallel()
			badStreamHeaders(t, tn)
		})
	})

	// The real session survived it all and keeps moving data.
	before := bg.rounds.Load()
	deadline := time.Now().Add(waitLimit)
	for bg.rounds.Load() < before+20 && bg.err == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	bg.halt()
	if bg.err != nil {
		t.Fatalf("background stream: %v", bg.err)
	}
	if n := bg.rounds.Load(); n < before+20 {
		t.Fatalf("background stream stalled at %d rounds", n)
	}
	if err := oneStream(tn.client.forwards["echo"], 7); err != nil {
		t.Fatalf("new stream after bad input: %v", err)
	}
	if n := srv.sessionsUp("peer=client-a"); n != 1 {
		t.Errorf("server logged %d sessions up for client-a, want 1", n)
	}
	if _, ok := tn.client.findLine("session ended"); ok {
		t.Error("the real client's session ended")
	}
	t.Logf("background stream: %d round trips", bg.rounds.Load())
}

// badStreamHeaders opens yamux streams with malformed headers over a session
// with a valid hello: each is refused with a bad-header reply and closed.
func badStreamHeaders(t *testing.T, tn *tunnel) {
	srv := tn.server
	raw := dial(t, srv.addr, waitLimit)
	c := tls.Client(raw, clientTLS(tn.pki, tlsCert(t, tn.pki.issueClient(t, "client-evil2", pki.Options{}))))
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(helloBytes(t, "client")); err != nil {
		t.Fatal(err)
	}
	readHello(t, c)
	_ = raw.SetDeadline(time.Time{})

	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = 256
	cfg.EnableKeepAlive = false
	cfg.MaxStreamWindowSize = 256 * 1024
	cfg.StreamCloseTimeout = 10 * time.Second
	cfg.LogOutput = io.Discard
	sess, err := yamux.Client(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	t.Log(srv.waitLine(t, "session up:", "peer=client-evil2"))

	cases := []struct {
		name   string
		header []byte
		fin    bool // half-close after the header
		logged string
	}{
		{"unknown kind", []byte{9, 3, 'a', 'b', 'c'}, false, "unknown kind 9"},
		{"bad character", []byte{1, 3, 'a', '/', 'b', 0}, false, "character other than"},
		{"empty name", []byte{1, 0, 0}, false, "got 0"},
		{"truncated", []byte{1, 10, 'a', 'b', 'c'}, true, "unexpected EOF"},
	}
	for _, tc := range cases {
		st, err := sess.OpenStream()
		if err != nil {
			t.Fatalf("%s: open: %v", tc.name, err)
		}
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := st.Write(tc.header); err != nil {
			t.Fatalf("%s: write header: %v", tc.name, err)
		}
		if tc.fin {
			_ = st.Close()
		}
		var head [2]byte
		if _, err := io.ReadFull(st, head[:]); err != nil {
			t.Fatalf("%s: read reply: %v", tc.name, err)
		}
		msg := make([]byte, head[1])
		if _, err := io.ReadFull(st, msg); err != nil {
			t.Fatalf("%s: read reply message: %v", tc.name, err)
		}
		if head[0] != 4 { // CodeBadHeader
			t.Errorf("%s: reply code %d (%q), want 4 (bad stream header)", tc.name, head[0], msg)
		}
		rest, err := io.ReadAll(st)
		if err != nil || len(rest) > 0 {
			t.Errorf("%s: after the reply got %d bytes, %v; want the stream closed", tc.name, len(rest), err)
		}
		if !strings.Contains(string(msg), tc.logged) {
			t.Errorf("%s: reply %q does not say %q", tc.name, msg, tc.logged)
		}
		_ = st.Close()
	}
	// Refusals are logged once a minute per kind and peer, not per stream.
	t.Log(srv.waitLine(t, "stream refused: bad header", "peer=client-evil2"))
	time.Sleep(200 * time.Millisecond)
	if n := srv.countLines("stream refused: bad header", "peer=client-evil2"); n != 1 {
		t.Errorf("server logged %d bad-header lines for %d bad headers, want 1", n, len(cases))
	}
}
