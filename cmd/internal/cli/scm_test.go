package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// recordingLogger is a service.Logger (the Windows event log) that keeps
// what it was given.
type recordingLogger struct{ got []string }

func (r *recordingLogger) Error(v ...any) error   { return r.add("error", v) }
func (r *recordingLogger) Warning(v ...any) error { return r.add("warning", v) }
func (r *recordingLogger) Info(v ...any) error    { return r.add("info", v) }
func (r *recordingLogger) Errorf(f string, v ...any) error {
	return r.add("error", []any{fmt.Sprintf(f, v...)})
}
func (r *recordingLogger) Warningf(f string, v ...any) error {
	return r.add("warning", []any{fmt.Sprintf(f, v...)})
}
func (r *recordingLogger) Infof(f string, v ...any) error {
	return r.add("info", []any{fmt.Sprintf(f, v...)})
}
func (r *recordingLogger) add(level string, v []any) error {
	r.got = append(r.got, level+": "+fmt.Sprint(v...))
	return nil
}

// Each agent log line becomes one event log entry of its own level, in
// both log formats.
func TestEventLogWriterLevels(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		rec := &recordingLogger{}
		log := hclog.New(&hclog.LoggerOptions{Name: "tunnel-server", Level: hclog.Debug, JSONFormat: format == "json", Output: &eventLogWriter{log: rec}})
		log.Info("session up", "peer", "client-a")
		log.Warn("client refused", "remote", "192.0.2.1")
		log.Error("reload failed")
		if len(rec.got) != 3 {
			t.Fatalf("%s: %d entries, want 3: %q", format, len(rec.got), rec.got)
		}
		for i, want := range []string{"info: ", "warning: ", "error: "} {
			if !strings.HasPrefix(rec.got[i], want) || strings.HasSuffix(rec.got[i], "\n") {
				t.Errorf("%s: entry %d = %q, want level %q and no trailing newline", format, i, rec.got[i], want)
			}
		}
		if !strings.Contains(rec.got[0], "client-a") {
			t.Errorf("%s: fields lost: %q", format, rec.got[0])
		}
	}
}

// blockingRunner runs until its context ends, like an agent.
type blockingRunner struct{ started, stopped chan struct{} }

func (b *blockingRunner) Run(ctx context.Context) error {
	close(b.started)
	<-ctx.Done()
	close(b.stopped)
	return nil
}
func (b *blockingRunner) Reload() error { return nil }

// Start returns at once with the agent running; Stop returns only once the
// agent has stopped (drained).
func TestServiceManagerProgram(t *testing.T) {
	r := &blockingRunner{started: make(chan struct{}), stopped: make(chan struct{})}
	p := &scmProgram{prog: "tunnel-server", a: r, errOut: &strings.Builder{}}
	if err := p.Start(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.started:
	case <-time.After(5 * time.Second):
		t.Fatal("agent not started")
	}
	if err := p.Stop(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.stopped:
	default:
		t.Fatal("Stop returned before the agent stopped")
	}
}
