//go:build race

package yamux

// raceEnabled reports a test binary built with -race. Patched for
// tunnelworks, see PATCHED.md.
const raceEnabled = true
