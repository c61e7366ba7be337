// Package interop runs the built tunnel-server and tunnel-client binaries
// against real third-party protocol implementations (grpc-go, GoBGP) over
// loopback. It is a separate module so that those heavy test-only
// dependencies stay out of the main module; everything is in the tests.
package interop
