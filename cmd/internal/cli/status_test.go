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
		{Peer: "solo", Key: "sha256:CCCC", Class: "bulk", Since: now},
		{Peer: "solo", Key: "sha256:CCCC", Class: "control", Since: now},
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
}
