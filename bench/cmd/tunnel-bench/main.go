// Command tunnel-bench measures the built tunnel agents against direct TCP
// on loopback, and across an emulated WAN link; see bench/README.md.
//
//	go run ./bench/cmd/tunnel-bench [-quick] [-scenario loopback|wan|all] [-peers stunnel,ghostunnel|none] [-duration 20s] [-out FILE]
package main

import (
	"os"

	"github.com/tunnelworks/tunnel/bench/tunnelbench"
)

func main() { os.Exit(tunnelbench.Main(os.Args[1:], os.Stdout, os.Stderr)) }
