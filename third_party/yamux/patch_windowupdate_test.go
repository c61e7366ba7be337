package yamux

// Tests for the tunnelworks patch "window updates without a hand-off to
// sendLoop" (patch 21, see PATCHED.md).

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// updateConn records, for every window update without flags written on
// it, which of the session's goroutines wrote it. Its WritableNow says
// what writable holds.
type updateConn struct {
	net.Conn
	writable atomic.Bool
	mu       sync.Mutex
	writers  map[string]int
}

func (c *updateConn) WritableNow() bool { return c.writable.Load() }

func (c *updateConn) Write(p []byte) (int, error) {
	if len(p) == headerSize && p[1] == typeWindowUpdate && header(p).Flags() == 0 {
		buf := make([]byte, 8192)
		stack := string(buf[:runtime.Stack(buf, false)])
		who := "other"
		for _, f := range []string{"recvLoop", "sendLoop", "(*Stream).Read", "(*writeQueue).release"} {
			if strings.Contains(stack, f) {
				who = f
				break
			}
		}
		c.mu.Lock()
		c.writers[who]++
		c.mu.Unlock()
	}
	return c.Conn.Write(p)
}

func (c *updateConn) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.writers {
		out[k] = v
	}
	return out
}

// updatePair is a client and server session over loopback TCP whose
// server writes through an updateConn.
func updatePair(t *testing.T, writable bool) (cs, ss *Stream, uc *updateConn) {
	t.Helper()
	c, s := tcpPair(t)
	uc = &updateConn{Conn: s, writers: map[string]int{}}
	uc.writable.Store(writable)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(uc, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	cs, ss = openPair(t, client, server)
	return cs, ss, uc
}

// sendThrough writes data on cs and closes it; the caller receives.
func sendThrough(t *testing.T, cs *Stream, data []byte) <-chan error {
	done := make(chan error, 1)
	go func() {
		_ = cs.SetWriteDeadline(time.Now().Add(patchBound))
		if _, err := cs.Write(data); err != nil {
			done <- err
			return
		}
		done <- cs.Close()
	}()
	return done
}

// The goroutine that makes a window update writes it when the connection
// says it can take it at once: the receive loop for bytes delivered
// directly, the stream's reader for bytes read (before the patch,
// sendLoop wrote every one, the reader waiting for it). When the
// connection says it cannot, sendLoop writes them all.
func TestWindowUpdateWriter(t *testing.T) {
	for _, tc := range []struct {
		name     string
		direct   bool
		writable bool
		want     string
	}{
		{"delivered/writable", true, true, "recvLoop"},
		{"delivered/full", true, false, "sendLoop"},
		{"read/writable", false, true, "(*Stream).Read"},
		{"read/full", false, false, "sendLoop"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, ss, uc := updatePair(t, tc.writable)
			var got bytes.Buffer
			var mu sync.Mutex
			if tc.direct {
				ss.SetDeliver(func(p []byte) int {
					mu.Lock()
					got.Write(p)
					mu.Unlock()
					return len(p)
				})
			}
			data := pattern(16 * int(initialStreamWindow))
			done := sendThrough(t, cs, data)
			_ = ss.SetReadDeadline(time.Now().Add(patchBound))
			read, err := io.ReadAll(ss)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("write: %v", err)
			}
			ss.SetDeliver(nil)
			mu.Lock()
			got.Write(read)
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("got %d bytes, want %d, or in another order", got.Len(), len(data))
			}
			mu.Unlock()
			if tc.direct && len(read) > 0 {
				t.Fatalf("%d bytes read, want all taken directly", len(read))
			}
			n := uc.counts()
			total := 0
			for _, v := range n {
				total += v
			}
			if n[tc.want] < 8 || n[tc.want] != total {
				t.Fatalf("window updates by writer: %v; want at least 8 (16 windows moved), all by %s", n, tc.want)
			}
		})
	}
}
