package mux

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/ratelog"
)

func writeFile(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }

func TestWireRoundTrip(t *testing.T) {
	msg, err := encodeHello(Hello{Role: RoleClient, Agent: "1.2.3", Class: "bulk", Lane: 5, Capabilities: []string{"x", CapLanes}})
	if err != nil {
		t.Fatal(err)
	}
	h, err := readHello(bytes.NewReader(msg))
	if err != nil || h.Role != RoleClient || h.Agent != "1.2.3" || h.Version != ProtocolVersion || h.Lane != 5 || !h.Has(CapLanes) {
		t.Fatalf("%+v %v", h, err)
	}
	// Lane 0 is left out: the hello of the class's first session is
	// today's, byte for byte.
	if msg, _ := encodeHello(Hello{Role: RoleClient, Class: "bulk"}); bytes.Contains(msg, []byte("lane")) {
		t.Errorf("lane 0 written: %s", msg)
	}
	hdr, err := encodeHeader("bgp-179", "192.0.2.7:40000", nil)
	if err != nil {
		t.Fatal(err)
	}
	sh, err := readHeader(bytes.NewReader(hdr))
	if err != nil || sh.service != "bgp-179" || sh.source != "192.0.2.7:40000" {
		t.Fatalf("%+v %v", sh, err)
	}
	code, m, err := readReply(bytes.NewReader(encodeReply(CodeDialFailed, "dial x: connection refused")))
	if err != nil || code != CodeDialFailed || m != "dial x: connection refused" {
		t.Fatal(code, m, err)
	}
	for _, bad := range []string{"", "a b", "x/y", string(bytes.Repeat([]byte("a"), 65))} {
		if _, err := encodeHeader(bad, "", nil); err == nil {
			t.Errorf("encodeHeader(%q) accepted", bad)
		}
	}
}

func FuzzReadHello(f *testing.F) {
	good, _ := encodeHello(Hello{Role: RoleServer, Agent: "0.1"})
	f.Add(good)
	f.Add([]byte("TUNL\x02\x00\x00"))
	f.Add([]byte("TUNL\x01\x00\x05{\"a\":"))
	withServices, _ := encodeHello(Hello{Role: RoleServer, Services: map[string]string{"bgp": "control", "web": "bulk"}})
	f.Add(withServices)
	f.Add(encodeRefusal(RefusalRevoked, "certificate revoked"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readHello(bytes.NewReader(b))
		if err == nil && h.Version == ProtocolVersion {
			// Whatever parsed must survive a round trip.
			again, err := encodeHello(h)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := readHello(bytes.NewReader(again)); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func FuzzReadHeader(f *testing.F) {
	good, _ := encodeHeader("echo", "127.0.0.1:5", nil)
	f.Add(good)
	resumable, _ := encodeHeader("bgp", "", &Token{1, 2, 3})
	f.Add(resumable)
	f.Add(encodeResumeHeader(Token{9, 8, 7}, 1<<40))
	f.Add([]byte{1, 255})
	f.Add([]byte{1, 1, 'a', 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readHeader(bytes.NewReader(b))
		if err != nil || h.control {
			return
		}
		if h.resume {
			if again := encodeResumeHeader(h.token, h.delivered); !bytes.HasPrefix(b, again) {
				t.Fatalf("round trip of %+v differs", h)
			}
			return
		}
		if err := checkName(h.service); err != nil {
			t.Fatalf("accepted invalid name %q", h.service)
		}
		var token *Token
		if h.resumable {
			token = &h.token
		}
		again, _ := encodeHeader(h.service, h.source, token)
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("round trip of %+v differs", h)
		}
	})
}

func FuzzReadReply(f *testing.F) {
	f.Add(encodeReply(CodeOK, ""))
	f.Add(encodeReply(CodeDenied, "no"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = readReply(bytes.NewReader(b))
	})
}

func TestYamuxLogLevels(t *testing.T) {
	var buf bytes.Buffer
	l := newYamuxLogger(hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info}), nil)
	l.Printf("[WARN] yamux: frame for missing stream: %v", 7)
	l.Printf("[ERR] yamux: Failed to read header: %v", "EOF")
	if buf.Len() != 0 {
		t.Fatalf("routine lines logged at info: %q", buf.String())
	}
	l.Printf("[ERR] yamux: keepalive failed: %v", "x")
	if !bytes.Contains(buf.Bytes(), []byte("[ERROR] keepalive failed: x")) {
		t.Fatalf("error line: %q", buf.String())
	}
}

// A peer that makes yamux log once per frame gets one line per interval.
func TestYamuxLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	l := newYamuxLogger(hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info}), nil)
	for i := range 1000 {
		l.Printf("[ERR] yamux: established stream without inflight SYN (no tracking entry): %d", i)
	}
	l.Printf("[ERR] yamux: keepalive failed: %v", "x")
	if n := bytes.Count(buf.Bytes(), []byte("without inflight SYN")); n != 1 {
		t.Fatalf("%d lines for 1000 frames, want 1:\n%s", n, buf.String())
	}
	if !bytes.Contains(buf.Bytes(), []byte("keepalive failed")) {
		t.Fatalf("another kind of line was held back:\n%s", buf.String())
	}
}

// With a shared limit (the agent's), a new session brings no new line of
// a kind another session logged within the interval.
func TestYamuxLogSharedAcrossSessions(t *testing.T) {
	var buf bytes.Buffer
	log := hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info})
	shared := ratelog.New(log, time.Minute)
	for session := range 100 {
		l := newYamuxLogger(log.With("session", session), shared)
		l.Printf("[ERR] yamux: Invalid protocol version: %d", session)
	}
	if n := bytes.Count(buf.Bytes(), []byte("Invalid protocol version")); n != 1 {
		t.Fatalf("%d lines for 100 sessions, want 1:\n%s", n, buf.String())
	}
}
