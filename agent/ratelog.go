package agent

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// limitedLog logs a warning about a limit being hit at most once per
// interval per key, with how many were suppressed since: a flood of refused
// connections must not become a flood of log lines.
type limitedLog struct {
	log      hclog.Logger
	interval time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

func newLimitedLog(log hclog.Logger, interval time.Duration) *limitedLog {
	return &limitedLog{log: log, interval: interval, last: map[string]time.Time{}, held: map[string]int{}}
}

// Warn logs msg unless key was logged less than interval ago.
func (l *limitedLog) Warn(key, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if last, ok := l.last[key]; ok && now.Sub(last) < l.interval {
		l.held[key]++
		l.mu.Unlock()
		return
	}
	suppressed := l.held[key]
	l.last[key] = now
	l.held[key] = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	l.log.Warn(msg, args...)
}
