package mux

import (
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// yamuxLogger routes yamux's log lines into hclog at the right level.
// Lines about routine endings — a frame that arrives just after its stream
// was closed, the connection failing under a session we are already
// logging the end of — go to debug, so the log at info is about things an
// operator must look at.
type yamuxLogger struct{ log hclog.Logger }

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
	y.log.Log(level, msg)
}
