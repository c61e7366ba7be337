package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestLimitedLog(t *testing.T) {
	var buf syncBuffer
	l := newLimitedLog(hclog.New(&hclog.LoggerOptions{Output: &buf}), 50*time.Millisecond)
	for i := 0; i < 100; i++ {
		l.Warn("k", "limit hit")
	}
	l.Warn("other", "other limit hit")
	time.Sleep(60 * time.Millisecond)
	l.Warn("k", "limit hit")
	out := buf.String()
	if n := strings.Count(out, "limit hit"); n != 3 {
		t.Fatalf("%d lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "suppressed_since_last=99") {
		t.Fatalf("suppressed count missing:\n%s", out)
	}
}
