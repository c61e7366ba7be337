package agent

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

// receiveBuffered is the agent's tunnel_receive_buffer_bytes, as a scrape
// reads it.
func receiveBuffered(t *testing.T, c *Client) float64 {
	t.Helper()
	families, err := c.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "tunnel_receive_buffer_bytes" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no tunnel_receive_buffer_bytes in /metrics")
	return 0
}

// A stream whose local reader stops: what the peer sends waits in the
// stream's receive buffer, /metrics and /status say how much (never more
// than a stream's window), and once it is read every byte is there and
// nothing is held.
func TestReceiveBufferCounted(t *testing.T) {
	r := startRig(t)
	st, err := r.cli.Session().Open(context.Background(), "echo", "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// More than the kernel's socket buffers on the way back can hold, so
	// the echo comes to wait in the stream's buffer.
	msg := make([]byte, 48<<20)
	for i := range msg {
		msg[i] = byte(i*7 + i>>13)
	}
	written := make(chan error, 1)
	go func() {
		_, err := st.Write(msg)
		if err == nil {
			err = st.CloseWrite()
		}
		written <- err
	}()

	// A lone bulk receiver's window may grow to the lone window.
	window := float64(max(classWindow(classBulk), classLoneWindow(classBulk)))
	waitFor(t, "echoed bytes held unread, counted in /metrics", func() bool {
		held := receiveBuffered(t, r.cli)
		if held > window {
			t.Fatalf("tunnel_receive_buffer_bytes = %v, more than a stream's window (%v)", held, window)
		}
		return held > 0
	})
	waitFor(t, "the same in /status", func() bool {
		for _, s := range r.cli.status().Sessions {
			if s.ReceiveBuffered > 0 {
				return true
			}
		}
		return false
	})
	// /status also says what window a stream is offered now.
	for _, s := range r.cli.status().Sessions {
		if s.StreamWindow <= 0 || float64(s.StreamWindow) > window {
			t.Errorf("session %s/%s: stream_window_bytes = %d, want (0, %v]", s.Peer, s.Class, s.StreamWindow, window)
		}
	}

	st.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(st)
	if err != nil {
		t.Fatalf("read the echo back after %d bytes: %v", len(got), err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d bytes, not the %d sent, in order", len(got), len(msg))
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if held := receiveBuffered(t, r.cli); held != 0 {
		t.Errorf("tunnel_receive_buffer_bytes = %v after everything was read, want 0", held)
	}
}
