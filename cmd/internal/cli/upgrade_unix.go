//go:build unix

package cli

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
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
					log.Error("upgrade failed; this process carries on unchanged", "error", err)
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
