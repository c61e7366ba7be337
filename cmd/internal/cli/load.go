package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// printLoadError reports a config that did not load: with the program's
// name first (as every other error of the command line), and, when the file
// is the other agent's config, a first line that says so: its dozen
// "client key" / "missing listen" errors all have that one cause.
func printLoadError(w io.Writer, role Role, prog, path string, err error) {
	if other := otherSideConfig(role, path); other != "" {
		fmt.Fprintf(w, "%s: %s\n", prog, other)
	}
	fmt.Fprintf(w, "%s: %v\n", prog, err)
}

// otherSideConfig says, when the file at path looks like the other agent's
// config, which one it looks like and why; otherwise "". A client config
// sets server and never listen at the top level, a server config the
// reverse.
func otherSideConfig(role Role, path string) string {
	src, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	src = bytes.TrimPrefix(src, []byte("\ufeff"))
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() || f == nil {
		return ""
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		return ""
	}
	_, hasServer := body.Attributes["server"]
	_, hasListen := body.Attributes["listen"]
	switch {
	case role == Server && hasServer && !hasListen:
		return fmt.Sprintf("%s looks like a tunnel-client config (it sets server, not listen): use it with tunnel-client, or give tunnel-server its own config", path)
	case role == Client && hasListen && !hasServer:
		return fmt.Sprintf("%s looks like a tunnel-server config (it sets listen, not server): use it with tunnel-server, or give tunnel-client its own config", path)
	}
	return ""
}
