package e2e

import (
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// A frame-level fuzzer of the built server: after a valid TLS handshake and
// hello, random yamux frames (types, flags, stream IDs, lengths that lie,
// bodies that are stream headers or noise) from a fixed seed, over many
// connections, with the invariants of the hostile-peer tests: the server
// stays up, /healthz answers, the well-behaved client keeps flowing, and
// goroutines and descriptors come back to the baseline.
//
// Bounds: fuzzConns connections of fuzzFrames frames each, and at most
// fuzzBudget in all (about 20 s in a normal run with the setup). HOSTILE_FUZZ_TIME=10m
// runs for that long instead (connections then bounded by time only);
// HOSTILE_FUZZ_SEED picks another seed.
const (
	fuzzConns  = 300
	fuzzFrames = 500
	fuzzBudget = 15 * time.Second
	// A connection's frames go out in writes of 1..fuzzMaxWrite bytes, so
	// frames are split across TLS records at random places.
	fuzzMaxWrite = 4096
	// After its frames, a connection waits this long for the server to
	// react before it vanishes.
	fuzzLinger = 100 * time.Millisecond
)

func TestHostileFrameFuzz(t *testing.T) {
	seed := uint64(1)
	if s := os.Getenv("HOSTILE_FUZZ_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("HOSTILE_FUZZ_SEED: %v", err)
		}
		seed = v
	}
	budget, conns := fuzzBudget, fuzzConns
	if s := os.Getenv("HOSTILE_FUZZ_TIME"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("HOSTILE_FUZZ_TIME: %v", err)
		}
		budget, conns = d, 1<<30
	}
	e := startHostileEnv(t, envSpec{})
	// Lines: a session's own up and ended lines per connection (and a spare
	// for a stream it opened), plus the bounded refusal and yamux lines
	// (limited once a minute per kind across sessions; before that limit,
	// about 4 per connection). A long run checks the same per connection.
	logLimit := 3*fuzzConns + 2*attackLogLimit
	if conns != fuzzConns {
		logLimit = 1 << 30
	}
	runAttack(t, e, logLimit, func(e *hostileEnv, v *verdict) string {
		rng := rand.New(rand.NewPCG(seed, 0x7ea5e))
		deadline := time.Now().Add(budget)
		var done, refused, closedByServer, frames int
		for i := 0; i < conns && time.Now().Before(deadline); i++ {
			p, err := hostileDial(t, e.srv.addr, e.attacker, "bulk")
			if err != nil {
				refused++
				continue
			}
			buf := fuzzFrameBytes(rng, fuzzFrames)
			frames += fuzzFrames
			for len(buf) > 0 && !p.closed() {
				n := min(len(buf), 1+rng.IntN(fuzzMaxWrite))
				if p.write(buf[:n]) != nil {
					break
				}
				buf = buf[n:]
			}
			select {
			case <-p.done:
			case <-time.After(fuzzLinger):
			}
			if p.closed() {
				closedByServer++
			}
			p.close()
			done++
			if !e.srv.running() {
				v.expect(false, "the server exited on fuzz connection %d (seed %d)", i, seed)
				break
			}
		}
		if conns != fuzzConns {
			// Lines still to come for the last sessions are not counted here.
			lines := len(e.srv.log.lines())
			v.expect(lines <= 3*done+2*attackLogLimit+10, "server logged %d lines in all for %d fuzz connections", lines, done)
		}
		if reportOnly {
			tally := map[string]int{}
			for _, l := range e.srv.log.lines() {
				if i := strings.Index(l, "tunnel-server"); i >= 0 {
					msg := l[i:]
					if j := strings.IndexAny(msg, "="); j > 0 {
						msg = msg[:j]
					}
					msg = strings.TrimRightFunc(msg, func(r rune) bool { return r != ':' && r != ' ' })
					tally[msg]++
				}
			}
			t.Logf("server log lines by message: %v", tally)
		}
		return fmt.Sprintf("fuzz seed=%d connections=%d frames=%d closed_by_server=%d refused_at_hello=%d", seed, done, frames, closedByServer, refused)
	})
}

// fuzzFrameBytes is n random frames, mostly well-formed enough to reach
// past yamux's header checks.
func fuzzFrameBytes(rng *rand.Rand, n int) []byte {
	wild := rng.IntN(3)
	next := uint32(1) // the next new stream ID, for opens that follow the rules
	var b []byte
	for range n {
		b = fuzzFrame(rng, wild, &next, b)
	}
	return b
}

// fuzzFrame appends one random frame. wild (0..2) is how often it breaks
// the framing itself (a bad version or type, a length that lies, a GoAway):
// at 0 never, so the session lives long enough to reach the streams.
func fuzzFrame(rng *rand.Rand, wild int, next *uint32, b []byte) []byte {
	version := byte(yamuxVersion)
	if wild > 0 && rng.IntN(100/wild) == 0 {
		version = byte(rng.IntN(256))
	}
	var typ byte
	r := rng.IntN(100)
	if wild == 0 {
		r = rng.IntN(95) // no GoAway, no unknown type
	}
	switch {
	case r < 50:
		typ = frameData
	case r < 80:
		typ = frameWindow
	case r < 95:
		typ = framePing
	case r < 98:
		typ = frameGoAway
	default:
		typ = byte(4 + rng.IntN(252))
	}
	flags := uint16(rng.IntN(16))
	if rng.IntN(20) == 0 {
		flags = uint16(rng.Uint32())
	}
	var id uint32
	switch rng.IntN(10) {
	case 0:
		id = 0
	case 1:
		id = rng.Uint32()
	case 2:
		id = uint32(2 * rng.IntN(16)) // the server's side of the ID space
	default:
		id = uint32(2*rng.IntN(32) + 1) // a few client streams, reused
	}
	if wild == 0 {
		// Mostly no ACK (the opener never sends one) and no FIN (a second
		// one ends the session), so the session lives on.
		if rng.IntN(10) > 0 {
			flags &^= flagACK | flagFIN
		}
		// Opens take a new ID (a reused one ends the session); other
		// frames go to streams already opened.
		if flags&flagSYN != 0 {
			id, *next = *next, *next+2
		} else if *next > 1 {
			id = uint32(2*rng.IntN(int(*next/2)) + 1)
		}
	}
	var body []byte
	length := uint32(0)
	switch typ {
	case frameData:
		switch rng.IntN(5) {
		case 0:
			body = openHeader([]string{"echo", "secret", "no-such-service"}[rng.IntN(3)])
		case 1:
			body = append([]byte(nil), controlHeader...)
			for range rng.IntN(3) {
				body = append(body, byte(rng.IntN(2)), 0, 0, byte(rng.IntN(64))) // abort IDs
			}
		case 2:
			body = make([]byte, rng.IntN(256))
			for i := range body {
				body[i] = byte(rng.Uint32())
			}
		case 3:
			body = []byte{1, byte(rng.IntN(256))} // a header cut short
		}
		length = uint32(len(body))
		switch rng.IntN(25) {
		case 0:
			if wild > 0 {
				length = rng.Uint32() // a body that never comes, or eats what follows
			}
		case 1:
			if length > 0 {
				length = uint32(rng.IntN(int(length)))
			}
		}
	case frameWindow:
		length = rng.Uint32() >> rng.IntN(32)
	case framePing:
		length = rng.Uint32()
	case frameGoAway:
		length = uint32(rng.IntN(4))
	default:
		length = rng.Uint32() >> rng.IntN(32)
	}
	return appendFrame(b, version, typ, flags, id, length, body)
}

// FuzzHostileFrames sends one input as raw bytes after a valid handshake
// and hello, then checks the server still serves a new connection. The
// seeds (the only inputs of a normal run) are frame sequences from
// fuzzFrame; go test -fuzz FuzzHostileFrames explores further.
func FuzzHostileFrames(f *testing.F) {
	rng := rand.New(rand.NewPCG(2, 0x7ea5e))
	for range 6 {
		f.Add(fuzzFrameBytes(rng, 30))
	}
	f.Add(dataFrame(nil, flagSYN, 1, openHeader("echo")))
	f.Add(dataFrame(dataFrame(nil, flagSYN, 1, controlHeader), flagSYN, 3, controlHeader))
	f.Add(windowFrame(nil, flagSYN, 1, 0))

	p := newPKI(f)
	srv := startServer(f, serverHCL(p.serverCert, p.serverKey, p.caFile, "", []svc{{name: "echo", target: startEcho(f), allow: []string{"attacker"}}}, nil))
	srv.addr = srv.waitMatch(f, reListening)[1]
	c := p.issueClient(f, "attacker", pki.Options{})
	keyPEM, err := c.KeyPEM()
	if err != nil {
		f.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c.CertPEM(), keyPEM)
	if err != nil {
		f.Fatal(err)
	}
	conf := clientTLS(p, pair)

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			data = data[:64<<10] // bound one input's cost
		}
		if p, err := hostileDial(t, srv.addr, conf, "bulk"); err == nil {
			_ = p.write(data)
			select {
			case <-p.done:
			case <-time.After(fuzzLinger):
			}
			p.close()
		}
		if !srv.running() {
			t.Fatalf("the server exited (%v)", srv.err)
		}
		probe, err := hostileDial(t, srv.addr, conf, "bulk")
		if err != nil {
			t.Fatalf("the server refused a well-formed session after the input: %v", err)
		}
		defer probe.close()
		if code, err := probe.probe("echo", 10*time.Second); err != nil || code != 0 {
			t.Fatalf("the server did not serve a stream after the input: code %d, %v", code, err)
		}
	})
}
