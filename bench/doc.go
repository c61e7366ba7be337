// Package bench holds the tunnel's benchmarks: `go test -bench . ./bench/`
// runs the hot paths (the pipe, a mux stream over real TLS, the agents
// in-process, where -cpuprofile and -memprofile see them), and
// bench/cmd/tunnel-bench measures the built agents as processes against
// direct TCP. bench/linkemu is the WAN link emulator both use.
package bench
