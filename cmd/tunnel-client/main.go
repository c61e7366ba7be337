// Command tunnel-client is the client end of the tunnel.
package main

import (
	"io"
	"os"

	"github.com/tunnelworks/tunnel/cmd/internal/cli"
)

func main() { os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr)) }

// Main is the whole program, callable in-process by tests.
func Main(args []string, stdout, stderr io.Writer) int {
	return cli.Main(cli.Client, args, stdout, stderr)
}
