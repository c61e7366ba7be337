package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/admin"
)

// Two sessions of one readable name but different certificates show their
// keys; a name held by one certificate stays short.
func TestPrintStatusShowsKeyWhereNamesCollide(t *testing.T) {
	now := time.Now()
	st := admin.Status{Agent: "server", Healthy: true, Sessions: []admin.SessionStatus{
		{Peer: "edge", Key: "sha256:AAAA", Class: "bulk", Since: now},
		{Peer: "edge", Key: "sha256:BBBB", Class: "bulk", Since: now},
		{Peer: "solo", Key: "sha256:CCCC", Class: "bulk", Since: now, StreamWindow: 1 << 20},
		{Peer: "solo", Key: "sha256:CCCC", Class: "bulk", Lane: 1, Since: now, StreamWindow: 104857},
		{Peer: "solo", Key: "sha256:CCCC", Class: "bulk", Lane: 2, Since: now, StreamWindow: 1 << 20, LoneWindowLent: 3 << 20},
		{Peer: "solo", Key: "sha256:CCCC", Class: "control", Since: now, LeastRTTMicros: 1234,
			TCP: &admin.TCPQueues{ReceiveBuffer: 6 << 20, Unread: 300, SendBuffer: 4 << 20, SendQueue: 3 << 19}},
	}}
	var out bytes.Buffer
	printStatus(&out, st)
	got := out.String()
	for _, want := range []string{"edge (sha256:AAAA)", "edge (sha256:BBBB)"} {
		if !strings.Contains(got, want) {
			t.Errorf("status lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "CCCC") {
		t.Errorf("status shows the key of a name no other certificate holds:\n%s", got)
	}
	// The least ping round trip, where one was answered.
	if !strings.Contains(got, "1.234ms") || !strings.Contains(got, "LEAST RTT") {
		t.Errorf("status lacks the least round trip:\n%s", got)
	}
	// The window a stream is offered now: whole, or sized to the path.
	if !strings.Contains(got, "STREAM WINDOW") || !strings.Contains(got, "1 MiB") || !strings.Contains(got, "102 KiB") {
		t.Errorf("status lacks the stream windows:\n%s", got)
	}
	// What a lone bulk receiver is lent beyond it.
	if !strings.Contains(got, "1 MiB + 3 MiB lent") || strings.Count(got, "lent") != 1 {
		t.Errorf("status does not show the lone window lent (once):\n%s", got)
	}
	// What the kernel holds for a session's connection, where it tells.
	if !strings.Contains(got, "TCP QUEUED IN / OUT") || !strings.Contains(got, "300 B / 1.5 MiB") || strings.Count(got, " / ") != 2 {
		t.Errorf("status does not show the kernel's queues (once, in and out):\n%s", got)
	}
	// A further session of a class (bulk_connections) shows its lane.
	if !strings.Contains(got, "bulk (lane 1)") || strings.Contains(got, "lane 0") {
		t.Errorf("status does not tell the lanes apart:\n%s", got)
	}
}

// No line of the tables ends in spaces, whether a table is empty or full.
func TestPrintStatusNoTrailingSpaces(t *testing.T) {
	now := time.Now()
	for _, st := range []admin.Status{
		{Agent: "client", Healthy: false, LastError: "dial: refused"},
		{Agent: "server", Healthy: true,
			Sessions: []admin.SessionStatus{{Peer: "edge-1", Key: "sha256:AAAA", Class: "control", Remote: "192.0.2.1:50000", Since: now, Streams: 3}},
			Draining: []admin.SessionStatus{{Peer: "edge-1", Key: "sha256:AAAA", Class: "control", Remote: "192.0.2.1:49999", Since: now, Streams: 1}},
			Forwards: []admin.ForwardStatus{{Name: "edge-ssh", Listen: "127.0.0.1:2222", StreamsOpen: 1}},
			Services: []admin.ForwardStatus{{Name: "bgp", Target: "127.0.0.1:179"}},
			Expiries: []admin.ExpiryStatus{{What: "certificate", Name: "tunnel.example.net", When: now, DaysLeft: 364}}},
	} {
		var out bytes.Buffer
		printStatus(&out, st)
		for i, line := range strings.Split(out.String(), "\n") {
			if strings.TrimRight(line, " \t") != line {
				t.Errorf("line %d ends in spaces: %q\n%s", i+1, line, out.String())
			}
		}
		if st.Draining != nil && !strings.Contains(out.String(), "edge-1 (draining)") {
			t.Errorf("no row for the draining session:\n%s", out.String())
		}
		if !strings.Contains(out.String(), "EXPIRES") || !strings.HasSuffix(out.String(), "\n") {
			t.Errorf("status output:\n%s", out.String())
		}
	}
}

// A forward that a reload could not move says so under the header, and
// its row shows where it still runs; one that never started shows that.
func TestPrintStatusNamesForwardsNotAsInTheFile(t *testing.T) {
	st := admin.Status{Agent: "client", Healthy: true, Forwards: []admin.ForwardStatus{
		{Name: "edge-echo", Listen: "127.0.0.1:7000", NotApplied: `/etc/tunnel/client.hcl:12: forward "edge-echo": listen on 127.0.0.1:7001: address already in use (still on 127.0.0.1:7000)`},
		{Name: "edge-new", NotApplied: `/etc/tunnel/client.hcl:17: forward "edge-new": listen on 127.0.0.1:7002: address already in use`},
		{Name: "edge-ok", Listen: "127.0.0.1:7003"},
	}}
	var out bytes.Buffer
	printStatus(&out, st)
	got := out.String()
	for _, want := range []string{
		`not as in the config file: /etc/tunnel/client.hcl:12: forward "edge-echo": listen on 127.0.0.1:7001: address already in use (still on 127.0.0.1:7000)`,
		`not as in the config file: /etc/tunnel/client.hcl:17: forward "edge-new"`,
		"edge-new   (not listening)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("status lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "not as in the config file") != 2 {
		t.Errorf("status names a forward that runs as the file says:\n%s", got)
	}
}

// A forward's local connections turned away (max_conns, no session) show
// in its row, under REFUSED; services have no such column.
func TestPrintStatusShowsForwardRefusals(t *testing.T) {
	st := admin.Status{Agent: "client", Healthy: true,
		Forwards: []admin.ForwardStatus{{Name: "db", Listen: "127.0.0.1:5432", Class: "bulk", StreamsTotal: 3, Refused: 20}},
		Services: []admin.ForwardStatus{{Name: "ssh", Target: "127.0.0.1:22", Class: "bulk"}},
	}
	var out bytes.Buffer
	printStatus(&out, st)
	lines := strings.Split(out.String(), "\n")
	var header, row, svcHeader string
	for i, l := range lines {
		switch {
		case strings.Contains(l, "FORWARD") && strings.Contains(l, "ADDRESS"):
			header, row = l, lines[i+1]
		case strings.Contains(l, "SERVICE") && strings.Contains(l, "ADDRESS"):
			svcHeader = l
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(header), "REFUSED") || !strings.HasSuffix(strings.TrimSpace(row), " 20") {
		t.Errorf("forward table without its refusals:\n%s", out.String())
	}
	if svcHeader == "" || strings.Contains(svcHeader, "REFUSED") {
		t.Errorf("service table:\n%s", out.String())
	}
}
