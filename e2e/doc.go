// Package e2e holds the end-to-end tests of tunnel-server and tunnel-client:
// both binaries are built once with the race detector and run as real
// processes over loopback sockets. It has no code of its own; see the
// _test.go files.
package e2e
