//go:build !unix

package cli

import (
	"context"

	"github.com/hashicorp/go-hclog"
)

// upgradeOnUSR2: no SIGUSR2 here.
func upgradeOnUSR2(context.Context, handingOver, hclog.Logger) (stop func()) { return func() {} }
