// Package ratelog logs a line at most once per interval per key, with a
// count of what it held back: a flood of refusals, or of a peer's bad
// frames, must not become a flood of log lines.
package ratelog

import (
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Log logs a warning about a limit being hit at most once per
// interval per key, with how many were suppressed since: a flood of refused
// connections must not become a flood of log lines.
type Log struct {
	log      hclog.Logger
	interval time.Duration

	mu     sync.Mutex
	last   map[string]time.Time // LogBurst: the start of the key's interval
	held   map[string]int
	burst  map[string]int // LogBurst: lines of the key in its interval
	pruned time.Time
	now    func() time.Time // time.Now; tests move it
}

func New(log hclog.Logger, interval time.Duration) *Log {
	return &Log{log: log, interval: interval, last: map[string]time.Time{}, held: map[string]int{}, burst: map[string]int{}, now: time.Now}
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
func (l *Log) Warn(key, msg string, args ...any) { l.Log(hclog.Warn, key, msg, args...) }

// Log logs msg at level unless key was logged less than interval ago.
func (l *Log) Log(level hclog.Level, key, msg string, args ...any) {
	l.LogTo(l.log, level, key, msg, args...)
}

// LogTo is Log through another logger (one with a session's own fields),
// limited by the same keys: many sessions share one budget of lines.
func (l *Log) LogTo(to hclog.Logger, level hclog.Level, key, msg string, args ...any) {
	l.mu.Lock()
	now := l.now()
	key = l.keyLocked(key, now)
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
	to.Log(level, msg, args...)
}

// LogBurst is LogTo for events that are normal a few at a time (a
// client's sessions coming up, its lanes and classes together): the
// first burst lines of key in an interval are logged, the rest counted
// and reported on the key's first line of a later interval. A loop of
// such events gives burst lines an interval, not a line each.
func (l *Log) LogBurst(to hclog.Logger, level hclog.Level, key string, burst int, msg string, args ...any) {
	l.mu.Lock()
	now := l.now()
	key = l.keyLocked(key, now)
	if start, ok := l.last[key]; !ok || now.Sub(start) >= l.interval {
		l.last[key] = now
		l.burst[key] = 0
	}
	if l.burst[key] >= burst {
		l.held[key]++
		l.mu.Unlock()
		return
	}
	l.burst[key]++
	suppressed := l.held[key]
	l.held[key] = 0
	l.mu.Unlock()
	if suppressed > 0 {
		args = append(args, "suppressed_since_last", suppressed)
	}
	to.Log(level, msg, args...)
}

// keyLocked prunes the maps when they are large and returns the key to
// count under: key, or past maxKeys new keys the shared overflow key.
func (l *Log) keyLocked(key string, now time.Time) string {
	if len(l.last) >= pruneAbove && now.Sub(l.pruned) >= l.interval/4 {
		l.prune(now)
		l.pruned = now
	}
	if _, known := l.last[key]; !known && len(l.last) >= maxKeys {
		return overflowKey
	}
	return key
}

// prune forgets keys last logged an interval or more ago. Their next
// warning is logged at once anyway; only a count of suppressed repeats
// since then is lost.
func (l *Log) prune(now time.Time) {
	for key, last := range l.last {
		if now.Sub(last) >= l.interval {
			delete(l.last, key)
			delete(l.held, key)
			delete(l.burst, key)
		}
	}
}
