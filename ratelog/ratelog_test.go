package ratelog

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLimitedLog(t *testing.T) {
	var buf syncBuffer
	l := New(hclog.New(&hclog.LoggerOptions{Output: &buf}), 50*time.Millisecond)
	// A clock of the test's: on the wall clock a burst that a loaded
	// machine stalls for 50 ms spans two intervals and logs twice.
	clock := time.Now()
	l.now = func() time.Time { return clock }
	for i := 0; i < 100; i++ {
		l.Warn("k", "limit hit")
	}
	l.Warn("other", "other limit hit")
	clock = clock.Add(60 * time.Millisecond)
	l.Warn("k", "limit hit")
	out := buf.String()
	if n := strings.Count(out, "limit hit"); n != 3 {
		t.Fatalf("%d lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "suppressed_since_last=99") {
		t.Fatalf("suppressed count missing:\n%s", out)
	}
}

// Keys from many sources are forgotten once an interval has passed, and
// never grow past maxKeys even within one interval.
func TestLimitedLogBounded(t *testing.T) {
	var buf syncBuffer
	l := New(hclog.New(&hclog.LoggerOptions{Output: &buf}), time.Minute)
	clock := time.Now()
	l.now = func() time.Time { return clock }
	for i := range 3 * maxKeys {
		l.Warn(fmt.Sprintf("refused:10.0.%d.%d", i/256, i%256), "client refused")
	}
	if n := len(l.last); n > maxKeys+1 {
		t.Fatalf("%d keys kept, want at most %d", n, maxKeys+1)
	}
	if n := strings.Count(buf.String(), "client refused"); n != maxKeys+1 {
		t.Fatalf("%d lines for %d sources in one interval, want %d (one per key, one for the rest)", n, 3*maxKeys, maxKeys+1)
	}
	clock = clock.Add(time.Minute)
	l.Warn("refused:192.0.2.1", "client refused")
	if n := len(l.last); n != 1 {
		t.Fatalf("%d keys kept after an interval, want 1", n)
	}
}

// LogBurst logs the first burst lines of a key in an interval, then
// holds the rest back until the next interval, whose first line counts
// them; another key has its own burst.
func TestLogBurst(t *testing.T) {
	var buf syncBuffer
	l := New(hclog.New(&hclog.LoggerOptions{Output: &buf}), time.Minute)
	clock := time.Now()
	l.now = func() time.Time { return clock }
	to := hclog.New(&hclog.LoggerOptions{Output: &buf})
	for i := range 40 {
		l.LogBurst(to, hclog.Info, "k", 8, "session up", "n", i)
	}
	l.LogBurst(to, hclog.Info, "other", 8, "session up", "n", "other")
	if n := strings.Count(buf.String(), "session up"); n != 9 {
		t.Fatalf("%d lines in the first interval, want 8 of k and 1 of other:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "n=7") || strings.Contains(buf.String(), "n=8") {
		t.Fatalf("want the first 8 of k logged, no more:\n%s", buf.String())
	}
	clock = clock.Add(61 * time.Second)
	l.LogBurst(to, hclog.Info, "k", 8, "session up", "n", "later")
	if out := buf.String(); strings.Count(out, "session up") != 10 || !strings.Contains(out, "n=later suppressed_since_last=32") {
		t.Fatalf("the next interval's first line, with the 32 held back:\n%s", out)
	}
}
