package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/kardianos/service"
)

// On Windows the service manager starts `run -config FILE` and expects the
// process to answer it (StartServiceCtrlDispatcher) within 30 s, or it
// kills the process; logs go to the Windows event log, since a service has
// no console. systemd and launchd need neither: they send SIGTERM and
// collect stderr, which run already handles.

// underServiceManager says whether run must talk to the service manager.
func underServiceManager() bool {
	return runtime.GOOS == "windows" && !service.Interactive()
}

// scmProgram runs the agent as kardianos/service asks: Start returns at
// once, Stop cancels the agent and waits for its drain.
type scmProgram struct {
	prog   string
	a      runner
	cancel context.CancelFunc
	done   chan struct{}
	errOut io.Writer
}

func (p *scmProgram) Start(service.Service) error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		if err := p.a.Run(ctx); err != nil {
			fmt.Fprintf(p.errOut, "%s: %v\n", p.prog, err)
			// The service manager sees the exit and applies the
			// recovery action set at install (restart).
			os.Exit(exitFailure)
		}
	}()
	return nil
}

func (p *scmProgram) Stop(service.Service) error {
	p.cancel()
	<-p.done
	return nil
}

// eventLogWriter turns each log line (hclog writes one entry per Write)
// into an event log entry of the line's level.
type eventLogWriter struct {
	mu  sync.Mutex
	log service.Logger
}

func (w *eventLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\r\n")
	w.mu.Lock()
	defer w.mu.Unlock()
	var err error
	switch {
	case strings.Contains(line, "[ERROR]"), strings.Contains(line, `"@level":"error"`):
		err = w.log.Error(line)
	case strings.Contains(line, "[WARN]"), strings.Contains(line, `"@level":"warn"`):
		err = w.log.Warning(line)
	default:
		err = w.log.Info(line)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// startServiceManagerRun prepares a run under the Windows service manager:
// the program to hand the agent to, the service, and where logs go.
func startServiceManagerRun(prog string) (*scmProgram, service.Service, io.Writer, error) {
	p := &scmProgram{prog: prog}
	s, err := service.New(p, &service.Config{Name: prog})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("service manager: %w", err)
	}
	l, err := s.Logger(nil)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("event log: %w", err)
	}
	w := &eventLogWriter{log: l}
	p.errOut = w
	return p, s, w, nil
}
