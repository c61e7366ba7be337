//go:build !linux

package sockopt

import "time"

// minRTT: only Linux's TCP_INFO is read.
func minRTT(uintptr) time.Duration { return 0 }
