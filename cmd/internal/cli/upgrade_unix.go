//go:build unix

package cli

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/handover"
)

// upgradeOnUSR2 hands the agent over to the binary on disk on every
// SIGUSR2; a failed upgrade leaves this process running unchanged and
// says why in one line.
func upgradeOnUSR2(ctx context.Context, a handingOver, log hclog.Logger) (stop func()) {
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-usr2:
				log.Info("SIGUSR2 received: starting the binary on disk to take over")
				if err := a.HandOver(ctx); err != nil {
					msg := "upgrade failed; this process carries on unchanged"
					if errors.Is(err, handover.ErrExported) {
						msg = "upgrade failed; this process carries on, but the streams it had frozen for the new process were reset"
					}
					log.Error(msg, "error", err)
					continue
				}
				return // Run drains and returns

			}
		}
	})
	return func() {
		signal.Stop(usr2)
		close(done)
		wg.Wait()
	}
}
