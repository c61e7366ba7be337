package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/config"
)

// TestHostileResumeHoard: one certificate hoards resumable streams.
// Streams outlive their sessions, so the session limits alone do not
// bound them: on each of 24 sessions in turn the attacker opens as many
// resumable streams as a session may carry (max_streams_per_session, 4)
// to a target that holds its connections open, then drops the TCP
// connection without resuming any, and connects again. With a resume
// window of 10 minutes, a server without a bound would hold all 96,
// suspended, each with its target connection open. Fixed: the server
// holds at most 2 × max_streams_per_session × max_sessions_per_identity
// (32) for the certificate; each open past that resets the oldest idle
// one (tunnel_streams_resume_evicted_total, one log line per interval)
// and its target connection is closed; no open is refused; the streams
// it kept are the newest 32, which the attacker can still resume, and the
// 64 older ones are gone.
func TestHostileResumeHoard(t *testing.T) {
	const (
		perSession = 4
		bound      = 2 * perSession * config.DefaultMaxSessionsPerIdentity // the server's resumeBound
		rounds     = 24                                                    // 96 streams, three times the bound
		opened     = rounds * perSession
	)
	// The target counts the connections it holds: one per stream the
	// server keeps, closed when the server lets the stream go.
	var accepted, live atomic.Int64
	target := startTarget(t, func(c net.Conn) {
		accepted.Add(1)
		defer live.Add(-1)
		live.Add(1)
		_, _ = io.Copy(io.Discard, c)
	})
	e := startHostileEnv(t, envSpec{
		serverExtra: fmt.Sprintf("max_streams_per_session = %d\nresume_window = \"10m\"\n", perSession),
		services:    []svc{{name: "hoard", target: target, allow: []string{"attacker"}}},
	})
	// Each attacker session logs its up and ended lines (the last one too).
	runAttack(t, e, attackLogLimit+2*(rounds+1), func(e *hostileEnv, v *verdict) string {
		// The same instance on every session: a new one would tell the
		// server the streams of the old one are lost.
		var inst [16]byte
		_, _ = rand.Read(inst[:])
		hello := map[string]any{"role": "client", "agent": "hostile", "class": "bulk", "caps": []string{"resume/1"}, "instance": hex.EncodeToString(inst[:])}
		status := func() (st admin.Status, attackerSessions int, err error) {
			b, err := e.get("/status", 5*time.Second)
			if err == nil {
				err = json.Unmarshal(b, &st)
			}
			if err == nil && st.Resume == nil {
				err = fmt.Errorf("/status has no resume counts")
			}
			for _, s := range append(st.Sessions, st.Draining...) {
				if s.Peer == "attacker" {
					attackerSessions++
				}
			}
			return st, attackerSessions, err
		}
		var (
			tokens         [][16]byte // in the order opened
			peakSuspended  int
			peakLive       int64
			notServed      int
			firstNotServed string
			roundsOff      int // rounds that ended over the bound, or evicting other than the excess
			firstOff       string
		)
		var r admin.ResumeStats
		for round := range rounds {
			p, err := hostileDialHello(t, e.srv.addr, e.attacker, hello)
			if err != nil {
				t.Fatalf("round %d: attacker refused: %v", round, err)
			}
			for range perSession {
				var token [16]byte
				_, _ = rand.Read(token[:])
				tokens = append(tokens, token)
				// Held open (no FIN): a suspended stream keeps its target
				// connection.
				if code, err := p.probeHeader(resumableHeader("hoard", token), 10*time.Second); err != nil || code != 0 {
					notServed++
					if firstNotServed == "" {
						firstNotServed = fmt.Sprintf("round %d: code %d, %v", round, code, err)
					}
				}
			}
			p.close() // gone without a goodbye, nothing resumed
			// The server sees the session end and suspends its streams:
			// wait until every stream opened so far is suspended or
			// evicted, and the target holds a connection for each
			// suspended one and no other.
			n := len(tokens)
			settled := false
			var sessions int
			for deadline := time.Now().Add(waitLimit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				var st admin.Status
				if st, sessions, err = status(); err != nil {
					continue
				}
				r = *st.Resume
				if sessions == 0 && r.Suspended+int(r.Evicted) == n && accepted.Load() == int64(n) && live.Load() == int64(r.Suspended) {
					settled = true
					break
				}
			}
			peakSuspended, peakLive = max(peakSuspended, r.Suspended), max(peakLive, live.Load())
			if !settled {
				v.expect(false, "round %d: the server did not settle within %s: %d opened, attacker sessions %d, suspended %d, evicted %d; target connections accepted %d, open %d (err %v)",
					round, waitLimit, n, sessions, r.Suspended, r.Evicted, accepted.Load(), live.Load(), err)
				break
			}
			if r.Suspended > bound || int(r.Evicted) != max(0, n-bound) {
				if roundsOff++; firstOff == "" {
					firstOff = fmt.Sprintf("round %d: %d opened, %d suspended, %d evicted", round, n, r.Suspended, r.Evicted)
				}
			}
		}
		v.expect(roundsOff == 0, "%d of %d rounds left the server holding more than the bound of %d suspended streams, or evicting other than the excess (first: %s)", roundsOff, rounds, bound, firstOff)
		v.expect(notServed == 0, "%d of %d resumable opens not served (first: %s); at the bound the oldest idle stream makes room", notServed, opened, firstNotServed)
		v.expect(peakSuspended <= bound && peakLive <= bound, "peaks: %d suspended streams, %d target connections held; want at most the bound, %d", peakSuspended, peakLive, bound)
		v.expect(accepted.Load()-live.Load() >= int64(r.Evicted), "the target saw %d of its connections closed, fewer than the %d evicted streams", accepted.Load()-live.Load(), r.Evicted)

		// /metrics says the same, and no open was refused for the bound.
		var evictedMetric, resumable, streamLimit float64 = -1, -1, -1
		if b, err := e.get("/metrics", 5*time.Second); err == nil {
			evictedMetric = metricValue(t, string(b), "tunnel_streams_resume_evicted_total")
			resumable = metricValue(t, string(b), "tunnel_streams_resumable")
			streamLimit = metricValue(t, string(b), "tunnel_streams_refused_total", `kind="stream_limit"`)
		}
		v.expect(evictedMetric == float64(opened-bound), "tunnel_streams_resume_evicted_total = %v, want %d (%d opened, bound %d)", evictedMetric, opened-bound, opened, bound)
		// The well-behaved client's ping-pong holds one resumable stream
		// too (two while it redials).
		v.expect(resumable >= 0 && resumable <= bound+2, "tunnel_streams_resumable = %v, want at most the bound %d and the well-behaved client's", resumable, bound)
		v.expect(streamLimit == 0, "tunnel_streams_refused_total{kind=\"stream_limit\"} = %v, want 0: an idle stream makes room", streamLimit)
		evictLines := e.srv.countLines("at its bound of resumable streams")
		v.expect(evictLines >= 1 && evictLines <= 2, "server logged %d eviction lines for %d evictions, want 1 (once per interval)", evictLines, opened-bound)

		// A fresh session is served, and the attacker resumes what it
		// still holds: the newest streams resume, the evicted ones are
		// gone. Each is reset once answered, which ends it on the server
		// and frees the session's slot for the next.
		p, err := hostileDialHello(t, e.srv.addr, e.attacker, hello)
		if err != nil {
			t.Fatalf("the attacker's last session refused: %v", err)
		}
		defer p.close()
		id, code, err := p.probeStream(openHeader("echo"), 10*time.Second)
		v.expect(err == nil && code == 0, "a plain open on a fresh session after the hoard: code %d, %v; want ok (0)", code, err)
		_ = p.reset(id)
		// Code 0 (ok) for each of the newest, 6 (no such stream) for each
		// evicted one. (The server answers an open before its table holds
		// the stream, so the streams of one round may be held in another
		// order than opened; each round's are evicted together, the
		// bound being a multiple of a round's.)
		answers, misplaced := map[int]int{}, 0
		for i, token := range tokens {
			id, code, err := p.probeStream(resumeHeader(token, 0), 10*time.Second)
			if err != nil {
				v.expect(false, "resume %d of %d: %v", i, len(tokens), err)
				break
			}
			_ = p.reset(id)
			answers[code]++
			if evicted := i < len(tokens)-bound; evicted != (code == 6) {
				misplaced++
			}
		}
		v.expect(answers[6] == opened-bound && answers[0] == bound && misplaced == 0,
			"resumes of the %d streams opened: %v (%d answered otherwise than wanted); want the oldest %d gone (6) and the newest %d resumed (0)", opened, answers, misplaced, opened-bound, bound)
		// Reset, every one: nothing held, no target connection open.
		waitFor(t, "the server to let go of the resumed streams", func() bool {
			st, _, err := status()
			return err == nil && st.Resume.Suspended == 0 && live.Load() == 0
		})
		return fmt.Sprintf("bound=%d opened=%d peak_suspended=%d peak_target_conns=%d evicted=%v eviction_lines=%d resumable=%v stream_limit=%v resumes=%v",
			bound, opened, peakSuspended, peakLive, evictedMetric, evictLines, resumable, streamLimit, answers)
	})
}
