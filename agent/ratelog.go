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

	mu     sync.Mutex
	last   map[string]time.Time
	held   map[string]int
	pruned time.Time
	now    func() time.Time // time.Now; tests move it
}

func newLimitedLog(log hclog.Logger, interval time.Duration) *limitedLog {
	return &limitedLog{log: log, interval: interval, last: map[string]time.Time{}, held: map[string]int{}, now: time.Now}
}

// Keys carry source addresses, and a scan from many addresses must not
// grow the maps forever: past pruneAbove keys Warn forgets keys not logged
// for an interval (at most a few times per interval), and past maxKeys new
// keys share one, so at most one line per interval speaks for all of them.
const (
	pruneAbove  = 1024
	maxKeys     = 4096
	overflowKey = "\x00overflow"
)

// Warn logs msg unless key was logged less than interval ago.
func (l *limitedLog) Warn(key, msg string, args ...any) {
	l.mu.Lock()
	now := l.now()
	if len(l.last) >= pruneAbove && now.Sub(l.pruned) >= l.interval/4 {
		l.prune(now)
		l.pruned = now
	}
	if _, known := l.last[key]; !known && len(l.last) >= maxKeys {
		key = overflowKey
	}
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

// prune forgets keys last logged an interval or more ago. Their next
// warning is logged at once anyway; only a count of suppressed repeats
// since then is lost.
func (l *limitedLog) prune(now time.Time) {
	for key, last := range l.last {
		if now.Sub(last) >= l.interval {
			delete(l.last, key)
			delete(l.held, key)
		}
	}
}
