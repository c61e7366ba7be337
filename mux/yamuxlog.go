package mux

import (
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/ratelog"
)

// yamuxLogger routes yamux's log lines into hclog at the right level.
// Lines about routine endings — a frame that arrives just after its stream
// was closed, the connection failing under a session we are already
// logging the end of — go to debug, so the log at info is about things an
// operator must look at.
//
// yamux logs some of a peer's bad frames once per frame without ending
// the session, so every line goes through a rate limit keyed by the line
// without its numbers: a peer cannot fill the disk with them, nor by
// opening session after session when the limit is shared (Config.YamuxLog).
type yamuxLogger struct {
	log     hclog.Logger
	limited *ratelog.Log
}

// newYamuxLogger logs through log, limited by limited; nil gives the
// logger a limit of its own.
func newYamuxLogger(log hclog.Logger, limited *ratelog.Log) yamuxLogger {
	if limited == nil {
		limited = ratelog.New(log, time.Minute)
	}
	return yamuxLogger{log: log, limited: limited}
}

func (y yamuxLogger) Print(v ...any)                 { y.line(fmt.Sprint(v...)) }
func (y yamuxLogger) Printf(format string, v ...any) { y.line(fmt.Sprintf(format, v...)) }
func (y yamuxLogger) Println(v ...any)               { y.line(fmt.Sprintln(v...)) }

var routineYamux = []string{
	"frame for missing stream",
	"Discarding data for stream",
	"Failed to read header",
	"Failed to write header",
	"Failed to write body",
	"failed to send go away",
	"failed to send ping reply",
}

func (y yamuxLogger) line(msg string) {
	msg = strings.TrimSpace(msg)
	level := hclog.Info
	for prefix, l := range map[string]hclog.Level{"[ERR]": hclog.Error, "[WARN]": hclog.Warn, "[DEBUG]": hclog.Debug, "[INFO]": hclog.Info, "[TRACE]": hclog.Trace} {
		if rest, ok := strings.CutPrefix(msg, prefix); ok {
			level, msg = l, strings.TrimSpace(rest)
			break
		}
	}
	msg = strings.TrimPrefix(msg, "yamux: ")
	for _, r := range routineYamux {
		if strings.Contains(msg, r) {
			level = hclog.Debug
			break
		}
	}
	y.limited.LogTo(y.log, level, "yamux:"+strings.Map(dropDigits, msg), msg)
}

func dropDigits(r rune) rune {
	if r >= '0' && r <= '9' {
		return -1
	}
	return r
}
