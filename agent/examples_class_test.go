package agent

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// Every forward of the README's Quick start and of the packaged examples
// (their commented blocks included) rides the class its protocol needs,
// as the two agents decide it: BGP on control, ssh on bulk.
func TestExamplesGetTheirClass(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	block := func(name string) string {
		m := regexp.MustCompile("(?s)`" + regexp.QuoteMeta(name) + "`:\n\n```hcl\n(.*?)```").FindSubmatch(readme)
		if m == nil {
			t.Fatalf("README has no %s block", name)
		}
		return string(m[1])
	}
	example := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// Uncomment the example blocks, from "# forward "..." or
		// "# service "..." to "# }".
		var out []string
		in := false
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, `# forward "`) || strings.HasPrefix(line, `# service "`) {
				in = true
			}
			if in {
				in = line != "# }"
				line = strings.TrimPrefix(line, "# ")
			}
			out = append(out, line)
		}
		return strings.Join(out, "\n")
	}
	// The files the examples name need not exist for this: point every
	// cert, key and ca at one file.
	dir := t.TempDir()
	pem := dir + "/x.pem"
	if err := os.WriteFile(pem, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	files := regexp.MustCompile(`(?m)^(\s*(?:cert|key|ca)\s*=\s*)"[^"]*"`)
	parse := func(text string) string { return files.ReplaceAllString(text, `$1"`+pem+`"`) }
	for _, tc := range []struct {
		name           string
		server, client string
		want           map[string]string // forward → class
	}{
		{"README", block("server.hcl"), block("client.hcl"), map[string]string{"bgp": classControl, "edge-ssh": classBulk}},
		{"packaging/examples", example("../packaging/examples/server.hcl"), example("../packaging/examples/client.hcl"), map[string]string{"bgp": classControl}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, err := config.ParseServer(dir+"/server.hcl", []byte(parse(tc.server)))
			if err != nil {
				t.Fatal(err)
			}
			cli, err := config.ParseClient(dir+"/client.hcl", []byte(parse(tc.client)))
			if err != nil {
				t.Fatal(err)
			}
			// The client is whoever the server's rules name: the first
			// allow rule's name (edge-1 in both).
			name := srv.Services[0].Allow[0]
			clientID, serverID := testIdentity(t, name), testIdentity(t, "tunnel.example.net")
			fromServer := offered(srv.Services, false)(clientID)
			fromClient := offered(cli.Services, true)(serverID)
			got := map[string]string{}
			for _, f := range cli.Forwards {
				got[f.Name], _ = forwardClass(f, fromServer)
			}
			for _, f := range srv.Forwards {
				got[f.Name], _ = forwardClass(f, fromClient)
			}
			for fwd, class := range tc.want {
				if got[fwd] != class {
					t.Errorf("forward %s rides %q, want %q (all: %v)", fwd, got[fwd], class, got)
				}
			}
			if len(got) != len(tc.want) {
				t.Errorf("forwards %v, want exactly %v", got, tc.want)
			}
		})
	}
}

func testIdentity(t *testing.T, name string) ssl.Identity {
	t.Helper()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "examples CA"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.IssueClient(pki.Options{CommonName: name})
	if err != nil {
		t.Fatal(err)
	}
	return ssl.Identity{Leaf: c.Cert}
}
