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

func forwardClass(config.Forward) string { return classBulk }
func serviceClass(config.Service) string { return classBulk }
func pingAfter(any) time.Duration        { return 10 * time.Second }
func deadAfter(any) time.Duration        { return 30 * time.Second }
func maxStreams(any) int                 { return 4096 }
func maxSessions(any) int                { return 1024 }
func maxSessionsPerIdentity(any) int     { return 4 }
func adminAddr(any) string               { return "" }
