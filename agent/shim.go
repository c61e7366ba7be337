package agent

import (
	"time"

	"github.com/tunnelworks/tunnel/config"
)

// Temporary: these read config keys that are being added.
func crlFiles(config.TLS) []string     { return nil }
func crlStale(config.TLS) string       { return "warn" }
func drainTimeout(any) time.Duration   { return 10 * time.Second }
func verifyRules(config.TLS) []string  { return nil }
func expiryWarning(any) time.Duration  { return 30 * 24 * time.Hour }
func reloadInterval(any) time.Duration { return 0 }
