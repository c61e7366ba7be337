package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

const serverExample = `# server.hcl
listen = "0.0.0.0:8443"
tls {
  cert = "server.crt"
  key  = "server.key"
  ca   = "ca.crt"
}
service "echo" {
  target = "127.0.0.1:7"
  allow  = ["client-a"]
}
forward "edge-ssh" {
  listen  = "127.0.0.1:2222"
  client  = "edge-1"
  service = "ssh"
}
`

const clientExample = `# client.hcl
server = "tunnel.example.net:8443"  # or ["a:8443", "b:8443"]
tls {
  cert        = "client.crt"
  key         = "client.key"
  ca          = "ca.crt"
  server_name = "tunnel.example.net"
}
forward "echo" {
  listen  = "127.0.0.1:10007"
  service = "echo"
}
service "ssh" {
  target = "127.0.0.1:22"
}
`

// pemFiles are the files the test configs name; their contents are not
// parsed by this package.
var pemFiles = []string{
	"server.crt", "server.key", "ca.crt", "client.crt", "client.key",
	"c", "k", "a", "pki/ca.crt", "ca.crl", "pki/inter.crl",
}

// pemDir returns a new directory holding pemFiles.
func pemDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range pemFiles {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("-----BEGIN NOTHING-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestParseServer(t *testing.T) {
	dir := pemDir(t)
	file := filepath.Join(dir, "server.hcl")
	abs := func(name string) string { return filepath.Join(dir, name) }
	tls := TLS{Cert: abs("server.crt"), Key: abs("server.key"), CA: abs("ca.crt")}
	tests := []struct {
		name string
		src  string
		want *Server
	}{{
		name: "example",
		src:  serverExample,
		want: &Server{
			Path:                   file,
			Listen:                 "0.0.0.0:8443",
			TLS:                    tls,
			HandshakeTimeout:       10 * time.Second,
			MaxHandshakes:          64,
			MaxHandshakesPerSource: 16,
			DialTimeout:            10 * time.Second,
			LogLevel:               "info",
			LogFormat:              "text",
			Services:               []Service{{Name: "echo", Target: "127.0.0.1:7", Allow: []string{"client-a"}, AllowRules: rulesOf("client-a")}},
			Forwards:               []Forward{{Name: "edge-ssh", Listen: "127.0.0.1:2222", Service: "ssh", Client: "edge-1"}},
			ForwardLines:           map[string]int{"edge-ssh": 13},
		},
	}, {
		name: "every key set, absolute and nested paths, blocks in file order",
		src: `
listen            = "[::1]:0"
handshake_timeout = "2s"
max_handshakes    = 1
dial_timeout      = "250ms"
log_level         = "trace"
log_format        = "json"
forward "b" {
  listen = ":0"
  client = "edge-2"
}
service "z" {
  target = "[fe80::1%eth0]:22"
  allow  = ["x", "y"]
}
tls {
  cert = "` + abs("server.crt") + `"
  key  = "./pki/../server.key"
  ca   = "pki/ca.crt"
}
service "a.b_c-d" {
  target = "db.internal:5432"
  allow  = ["x"]
}
forward "a" {
  listen  = ":0" # ephemeral ports never clash
  client  = "edge-1"
  service = "z"
}
`,
		want: &Server{
			Path:                   file,
			Listen:                 "[::1]:0",
			TLS:                    TLS{Cert: abs("server.crt"), Key: abs("server.key"), CA: abs("pki/ca.crt")},
			HandshakeTimeout:       2 * time.Second,
			MaxHandshakes:          1,
			MaxHandshakesPerSource: 1,
			DialTimeout:            250 * time.Millisecond,
			LogLevel:               "trace",
			LogFormat:              "json",
			Services: []Service{
				{Name: "z", Target: "[fe80::1%eth0]:22", Allow: []string{"x", "y"}, AllowRules: rulesOf("x", "y")},
				{Name: "a.b_c-d", Target: "db.internal:5432", Allow: []string{"x"}, AllowRules: rulesOf("x")},
			},
			Forwards: []Forward{
				{Name: "b", Listen: ":0", Service: "b", Client: "edge-2"},
				{Name: "a", Listen: ":0", Service: "z", Client: "edge-1"},
			},
			ForwardLines: map[string]int{"b": 9, "a": 26},
		},
	}, {
		name: "minimal",
		src:  "listen = \":8443\"\ntls {\n  cert = \"server.crt\"\n  key = \"server.key\"\n  ca = \"ca.crt\"\n}\n",
		want: &Server{
			Path:                   file,
			Listen:                 ":8443",
			TLS:                    tls,
			HandshakeTimeout:       DefaultHandshakeTimeout,
			MaxHandshakes:          DefaultMaxHandshakes,
			MaxHandshakesPerSource: DefaultMaxHandshakes / 4,
			DialTimeout:            DefaultDialTimeout,
			LogLevel:               DefaultLogLevel,
			LogFormat:              DefaultLogFormat,
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseServer(file, []byte(tt.src))
			if err != nil {
				t.Fatalf("ParseServer: %v", err)
			}
			withServerDefaults(tt.want)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseServer:\n got %+v\nwant %+v", got, tt.want)
			}
			if err := checkServer(got); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestParseClient(t *testing.T) {
	dir := pemDir(t)
	file := filepath.Join(dir, "client.hcl")
	abs := func(name string) string { return filepath.Join(dir, name) }
	tls := func(serverName string) TLS {
		return TLS{Cert: abs("client.crt"), Key: abs("client.key"), CA: abs("ca.crt"), ServerName: serverName}
	}
	const tlsBlock = "tls {\n  cert = \"client.crt\"\n  key = \"client.key\"\n  ca = \"ca.crt\"\n}\n"
	defaults := func(c *Client) *Client {
		c.Path = file
		c.HandshakeTimeout = 10 * time.Second
		c.DialTimeout = 10 * time.Second
		c.LogLevel = "info"
		c.LogFormat = "text"
		return c
	}
	tests := []struct {
		name string
		src  string
		want *Client
	}{{
		name: "example",
		src:  clientExample,
		want: defaults(&Client{
			Servers:      []string{"tunnel.example.net:8443"},
			TLS:          tls("tunnel.example.net"),
			Services:     []Service{{Name: "ssh", Target: "127.0.0.1:22"}},
			Forwards:     []Forward{{Name: "echo", Listen: "127.0.0.1:10007", Service: "echo"}},
			ForwardLines: map[string]int{"echo": 10},
		}),
	}, {
		name: "server as a string defaults server_name",
		src:  `server = "tunnel.example.net:8443"` + "\n" + tlsBlock,
		want: defaults(&Client{
			Servers: []string{"tunnel.example.net:8443"},
			TLS:     tls("tunnel.example.net"),
		}),
	}, {
		name: "byte order mark",
		src:  "\ufeffserver = \"tunnel.example.net:8443\"\n" + tlsBlock,
		want: defaults(&Client{
			Servers: []string{"tunnel.example.net:8443"},
			TLS:     tls("tunnel.example.net"),
		}),
	}, {
		name: "server as a list, server_name from the first",
		src:  "server = [\n  \"a.example:8443\",\n  \"b.example:443\",\n]\n" + tlsBlock,
		want: defaults(&Client{
			Servers: []string{"a.example:8443", "b.example:443"},
			TLS:     tls("a.example"),
		}),
	}, {
		name: "server as a list of one IPv6 address",
		src:  `server = ["[2001:db8::1]:8443"]` + "\n" + tlsBlock,
		want: defaults(&Client{
			Servers: []string{"[2001:db8::1]:8443"},
			TLS:     tls("2001:db8::1"),
		}),
	}, {
		name: "every key set",
		src: `server = "10.0.0.1:8443"
handshake_timeout = "1m30s"
dial_timeout = "3s"
log_level = "warn"
log_format = "json"
tls {
  cert = "client.crt"
  key = "client.key"
  ca = "ca.crt"
  server_name = "tunnel.internal"
}
service "web" {
  target = "localhost:8080"
  allow = ["tunnel-server"]
}
forward "db" {
  listen = "127.0.0.1:5432"
}
`,
		want: &Client{
			Path:             file,
			Servers:          []string{"10.0.0.1:8443"},
			TLS:              tls("tunnel.internal"),
			HandshakeTimeout: 90 * time.Second,
			DialTimeout:      3 * time.Second,
			LogLevel:         "warn",
			LogFormat:        "json",
			Services:         []Service{{Name: "web", Target: "localhost:8080", Allow: []string{"tunnel-server"}, AllowRules: rulesOf("tunnel-server")}},
			Forwards:         []Forward{{Name: "db", Listen: "127.0.0.1:5432", Service: "db"}},
			ForwardLines:     map[string]int{"db": 17},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseClient(file, []byte(tt.src))
			if err != nil {
				t.Fatalf("ParseClient: %v", err)
			}
			withClientDefaults(tt.want)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseClient:\n got %+v\nwant %+v", got, tt.want)
			}
			if err := checkClient(got); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := pemDir(t)
	for name, src := range map[string]string{"server.hcl": serverExample, "client.hcl": clientExample} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Relative paths in the file resolve against its directory, not the
	// working directory, whatever path the file itself is named by.
	t.Chdir(filepath.Join(dir, "pki"))

	s, err := LoadServer("../server.hcl")
	if err != nil {
		t.Fatalf("LoadServer: %v", err)
	}
	if want := filepath.Join(dir, "server.hcl"); s.Path != want {
		t.Errorf("Path = %q, want %q", s.Path, want)
	}
	if want := filepath.Join(dir, "ca.crt"); s.TLS.CA != want {
		t.Errorf("TLS.CA = %q, want %q", s.TLS.CA, want)
	}

	c, err := LoadClient(filepath.Join(dir, "client.hcl"))
	if err != nil {
		t.Fatalf("LoadClient: %v", err)
	}
	if want := filepath.Join(dir, "client.key"); c.TLS.Key != want {
		t.Errorf("TLS.Key = %q, want %q", c.TLS.Key, want)
	}

	missing := filepath.Join(dir, "nope.hcl")
	if _, err := LoadServer(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("LoadServer(%q) = %v, want a not-exist error naming the path", missing, err)
	}
	if _, err := LoadClient(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("LoadClient(%q) = %v, want an error naming the path", dir, err)
	}
}

// The bases complete a config; bad inputs are written before them so that
// line numbers in the tests count from the case's own first line.
const (
	serverBase = "\nlisten = \":8443\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n"
	clientBase = "\nserver = \"tunnel.example.net:8443\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n"
)

func TestParseErrors(t *testing.T) {
	dir := pemDir(t)
	tests := []struct {
		name   string
		client bool   // parse as a client config
		whole  bool   // src is the whole file, without the base
		src    string // a bad input
		line   int    // where the problem is, 0 for the file as a whole
		want   string // in the message
	}{
		// Syntax and expressions.
		{name: "syntax error", src: "log_level = \n", line: 1, want: "invalid expression"},
		{name: "unclosed block", src: "service \"x\" {\n  target = \"a:1\"\n", line: 1, want: "unclosed configuration block"},
		{name: "same key twice", src: "log_level = \"info\"\nlog_level = \"warn\"\n", line: 2, want: "attribute redefined"},
		{name: "bare word", src: "log_level = debug\n", line: 1, want: `quote it: log_level = "debug"`},
		{name: "null", src: "log_level = null\n", line: 1, want: "log_level must not be null"},
		{name: "for expression", src: "log_level = [for x in [\"info\"]: x][0]\n", line: 1, want: "for expressions are not supported"},
		{name: "template for", src: "log_level = \"%{for x in [\"a\"]}${x}%{endfor}\"\n", line: 1, want: "for expressions are not supported"},
		{name: "variable", src: "log_level = \"${level}\"\n", line: 1, want: "variables not allowed"},
		{name: "function call", src: "log_level = lower(\"INFO\")\n", line: 1, want: "function calls not allowed"},

		// Unknown and misplaced keys and blocks.
		{name: "typo key", src: "lisen = \":1\"\n", line: 1, want: `unknown key "lisen" in the server config (did you mean "listen"? allowed keys: listen,`},
		{name: "unknown key", src: "color = true\n", line: 1, want: "allowed blocks: tls, service, forward"},
		{name: "typo block", src: "servce \"x\" {}\n", line: 1, want: `unknown block "servce" in the server config (did you mean "service"?`},
		{name: "key as block", src: "log_level {}\n", line: 1, want: "log_level is a key, not a block (write log_level = ...)"},
		{name: "block as key", src: "service = {}\n", line: 1, want: "service is a block, not a key"},
		{name: "client key on server", src: "server = \"a:1\"\n", line: 1, want: "server is a client key"},
		{name: "server key on client", client: true, src: "\n\nmax_handshakes = 3\n", line: 3, want: "max_handshakes is only for the server"},
		{name: "listen on client", client: true, src: "listen = \":1\"\n", line: 1, want: "listen is a server key"},
		{name: "unknown key in tls", whole: true, src: "listen = \":1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n  crt = \"c\"\n}\n", line: 6, want: `unknown key "crt" in the tls block (did you mean "cert"? allowed keys: cert, key, ca, crl, crl_stale; no blocks are allowed here)`},
		{name: "server_name on server", whole: true, src: "listen = \":1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n  server_name = \"x\"\n}\n", line: 6, want: "server_name is only for the client's tls block"},
		{name: "block in service", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  health {}\n}\n", line: 4, want: `unknown block "health" in service "x"`},
		{name: "client key on client forward", client: true, src: "forward \"f\" {\n  listen = \":1\"\n  client = \"c\"\n}\n", line: 3, want: "client is only for the server's forwards"},

		// Required keys and blocks.
		{name: "missing listen", whole: true, src: "tls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 0, want: `missing required key listen in the server config (add listen = "0.0.0.0:8443")`},
		{name: "missing server", client: true, whole: true, src: "tls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 0, want: "missing required key server in the client config"},
		{name: "missing tls", whole: true, src: "listen = \":1\"\n", line: 0, want: "missing tls block (add tls {"},
		{name: "missing tls key", whole: true, src: "listen = \":1\"\n\ntls {\n  cert = \"c\"\n  ca = \"a\"\n}\n", line: 3, want: "missing required key key in the tls block"},
		{name: "duplicate tls", whole: true, src: "listen = \":1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\ntls {\n}\n", line: 7, want: "duplicate tls block, the first is at line 2"},
		{name: "tls with a name", whole: true, src: "listen = \":1\"\ntls \"x\" {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 2, want: "the tls block takes no name"},
		{name: "missing target", src: "service \"x\" {\n  allow = [\"c\"]\n}\n", line: 1, want: `missing required key target in service "x"`},
		{name: "missing allow", src: "service \"x\" {\n  target = \"a:1\"\n}\n", line: 1, want: `service "x" has no allow list: services are deny by default; list the client identities that may open it`},
		{name: "missing forward listen", src: "forward \"f\" {\n  client = \"c\"\n}\n", line: 1, want: `missing required key listen in forward "f"`},
		{name: "missing forward client", src: "forward \"f\" {\n  listen = \":1\"\n}\n", line: 1, want: `missing required key client in forward "f"`},

		// Names and duplicates.
		{name: "name with a space", src: "service \"a b\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n}\n", line: 1, want: `service name "a b" contains ' '`},
		{name: "empty name", src: "forward \"\" {\n  listen = \":1\"\n  client = \"c\"\n}\n", line: 1, want: `forward name "" is empty`},
		{name: "long name", src: "forward \"" + strings.Repeat("x", 65) + "\" {\n  listen = \":1\"\n  client = \"c\"\n}\n", line: 1, want: "is 65 bytes long (use only letters, digits, '.', '_' and '-', at most 64 of them)"},
		{name: "no name", src: "service {\n  target = \"a:1\"\n  allow = [\"c\"]\n}\n", line: 1, want: `a service block takes exactly one name, got 0 (write service "name" { ... })`},
		{name: "two names", src: "\nservice \"a\" \"b\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n}\n", line: 2, want: "takes exactly one name, got 2"},
		{name: "bad service reference", src: "forward \"f\" {\n  listen = \":1\"\n  client = \"c\"\n  service = \"a:b\"\n}\n", line: 4, want: `forward "f" service "a:b" contains ':'`},
		{name: "duplicate service", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n}\nservice \"x\" {\n  target = \"a:2\"\n  allow = [\"c\"]\n}\n", line: 5, want: `duplicate service "x", the first is at line 1`},
		{name: "duplicate forward", src: "forward \"f\" {\n  listen = \":1\"\n  client = \"c\"\n}\nforward \"f\" {\n  listen = \":2\"\n  client = \"c\"\n}\n", line: 5, want: `duplicate forward "f", the first is at line 1`},
		{name: "same listen", src: "forward \"f\" {\n  listen = \"127.0.0.1:2222\"\n  client = \"c\"\n}\nforward \"g\" {\n  listen = \"127.0.0.1:2222\"\n  client = \"c\"\n}\n", line: 6, want: `forward "g" listens on 127.0.0.1:2222, which clashes with forward "f" on 127.0.0.1:2222 at line 2`},
		{name: "listen inside a wildcard", src: "forward \"f\" {\n  listen = \":2222\"\n  client = \"c\"\n}\nforward \"g\" {\n  listen = \"127.0.0.1:2222\"\n  client = \"c\"\n}\n", line: 6, want: "clashes with"},
		{name: "forward on the server's listen", src: "forward \"f\" {\n  listen = \"127.0.0.1:8443\"\n  client = \"c\"\n}\n", line: 2, want: `which clashes with the server's listen = ":8443"`},

		// Addresses.
		{name: "listen not a string", whole: true, src: "listen = 8443\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: "listen must be a string, not a number (quote it)"},
		{name: "listen without port", whole: true, src: "listen = \"0.0.0.0\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: `listen = "0.0.0.0": missing port in address (write host:port`},
		{name: "listen port too big", whole: true, src: "listen = \":65536\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: "port 65536 is out of range"},
		{name: "target port 0", src: "service \"x\" {\n  target = \"127.0.0.1:0\"\n  allow = [\"c\"]\n}\n", line: 2, want: "port 0 cannot be dialed"},
		{name: "target named port", src: "service \"x\" {\n  target = \"127.0.0.1:ssh\"\n  allow = [\"c\"]\n}\n", line: 2, want: `port "ssh" is not a number from 1 to 65535`},
		{name: "target without host", src: "service \"x\" {\n  target = \":22\"\n  allow = [\"c\"]\n}\n", line: 2, want: "missing host"},
		{name: "target IPv6 without brackets", src: "service \"x\" {\n  target = \"::1:22\"\n  allow = [\"c\"]\n}\n", line: 2, want: "too many colons in address (write host:port, e.g. \"127.0.0.1:22\""},
		{name: "target IPv4 in brackets", src: "service \"x\" {\n  target = \"[10.0.0.1]:22\"\n  allow = [\"c\"]\n}\n", line: 2, want: "is not an IPv6 address"},
		{name: "target URL", src: "service \"x\" {\n  target = \"http://a:80\"\n  allow = [\"c\"]\n}\n", line: 2, want: "too many colons"},
		{name: "server port 0", client: true, whole: true, src: "server = \"a:0\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: `server = "a:0": port 0 cannot be dialed`},
		{name: "server list element", client: true, whole: true, src: "server = [\n  \"a:1\",\n  \"b\",\n]\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 3, want: `server[1] = "b": missing port in address`},
		{name: "server list not strings", client: true, whole: true, src: "server = [\n  \"a:1\",\n  2,\n]\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 3, want: "server[1] must be a string, not a number"},
		{name: "server empty list", client: true, whole: true, src: "server = []\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: "server lists no addresses"},
		{name: "server a number", client: true, whole: true, src: "server = 8443\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: "server must be a string, not a number"},
		{name: "server an object", client: true, whole: true, src: "server = {a = 1}\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 1, want: "server must be a list of strings, not an object"},

		// Allow lists.
		{name: "allow a string", src: "service \"x\" {\n  target = \"a:1\"\n  allow = \"c\"\n}\n", line: 3, want: `service "x" allow must be a list of strings, not a string`},
		{name: "allow empty", src: "service \"x\" {\n  target = \"a:1\"\n  allow = []\n}\n", line: 3, want: "allow is empty, so nobody may open the service"},
		{name: "allow empty on client", client: true, src: "service \"x\" {\n  target = \"a:1\"\n  allow = []\n}\n", line: 3, want: "allow is empty"},
		{name: "allow empty string", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\n    \"c\",\n    \"\",\n  ]\n}\n", line: 5, want: `allow[1] is empty (give a client identity)`},
		{name: "allow a number", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [7]\n}\n", line: 3, want: "allow[0] must be a string, not a number"},
		{name: "allow padded", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\" c\"]\n}\n", line: 3, want: "has spaces around it"},
		{name: "client empty", src: "forward \"f\" {\n  listen = \":1\"\n  client = \"\"\n}\n", line: 3, want: `client = "" is not an identity`},

		// TLS files.
		{name: "tls file missing", whole: true, src: "listen = \":1\"\ntls {\n  cert = \"c\"\n  key = \"nope.key\"\n  ca = \"a\"\n}\n", line: 4, want: "cannot read tls.key file " + filepath.Join(dir, "nope.key") + ": no such file or directory"},
		{name: "tls file a directory", whole: true, src: "listen = \":1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"pki\"\n}\n", line: 5, want: "cannot read tls.ca file " + filepath.Join(dir, "pki") + ": it is a directory"},
		{name: "tls file empty", whole: true, src: "listen = \":1\"\ntls {\n  cert = \"\"\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 3, want: "tls.cert must not be empty"},
		{name: "tls file a number", whole: true, src: "listen = \":1\"\ntls {\n  cert = 1\n  key = \"k\"\n  ca = \"a\"\n}\n", line: 3, want: "tls.cert must be a string"},
		{name: "server_name empty", client: true, whole: true, src: "server = \"a:1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n  server_name = \"\"\n}\n", line: 6, want: "tls.server_name must not be empty"},

		// Durations, numbers and enumerations.
		{name: "duration zero", src: "handshake_timeout = \"0s\"\n", line: 1, want: `handshake_timeout = "0s" must be more than zero`},
		{name: "duration negative", src: "dial_timeout = \"-1s\"\n", line: 1, want: "must be more than zero"},
		{name: "duration without unit", src: "dial_timeout = \"10\"\n", line: 1, want: `dial_timeout = "10" is not a duration`},
		{name: "duration a number", src: "dial_timeout = 10\n", line: 1, want: `dial_timeout must be a duration string, not a number (e.g. dial_timeout = "10s"; a bare number has no unit`},
		{name: "max_handshakes zero", src: "max_handshakes = 0\n", line: 1, want: "max_handshakes must be at least 1, got 0"},
		{name: "max_handshakes negative", src: "max_handshakes = -3\n", line: 1, want: "at least 1, got -3"},
		{name: "max_handshakes fraction", src: "max_handshakes = 1.5\n", line: 1, want: "max_handshakes must be a whole number, got 1.5"},
		{name: "max_handshakes huge", src: "max_handshakes = 1e100\n", line: 1, want: "max_handshakes is too large"},
		{name: "max_handshakes a string", src: "max_handshakes = \"64\"\n", line: 1, want: "max_handshakes must be a number, not a string (write it without quotes)"},
		{name: "max_handshakes_per_source zero", src: "max_handshakes_per_source = 0\n", line: 1, want: "max_handshakes_per_source"},
		{name: "max_handshakes_per_source over max_handshakes", src: "max_handshakes = 8\nmax_handshakes_per_source = 9\n", line: 2, want: "max_handshakes_per_source is 9, more than max_handshakes (8)"},
		{name: "max_handshakes_per_source on the client", client: true, src: "max_handshakes_per_source = 2\n", line: 1, want: "max_handshakes_per_source is only for the server"},
		{name: "log_level typo", src: "log_level = \"warning\"\n", line: 1, want: `log_level = "warning" is not allowed (did you mean "warn"? use one of: trace, debug, info, warn, error)`},
		{name: "log_level case", client: true, src: "log_level = \"INFO\"\n", line: 1, want: `did you mean "info"?`},
		{name: "log_format", src: "log_format = \"xml\"\n", line: 1, want: "use one of: text, json"},
		{name: "log_format a bool", src: "log_format = true\n", line: 1, want: "log_format must be a string, not a bool"},
		// Keys of Settings, classes, socket options, identity rules, CRLs.
		{name: "reload_interval too short", src: "reload_interval = \"10ms\"\n", line: 1, want: "too short"},
		{name: "dead_after not after ping_after", src: "ping_after = \"30s\"\ndead_after = \"20s\"\n", line: 2, want: "must be longer than ping_after"},
		{name: "drain_timeout negative", src: "drain_timeout = \"-1s\"\n", line: 1, want: "more than zero"},
		{name: "max_streams_per_session zero", src: "max_streams_per_session = 0\n", line: 1, want: "out of range (1 to"},
		{name: "max_sessions on the client", client: true, src: "max_sessions = 3\n", line: 1, want: "only for the server"},
		{name: "session_wait on the server", src: "session_wait = \"1s\"\n", line: 1, want: "only for the client"},
		{name: "dscp name", src: "dscp = \"CS9\"\n", line: 1, want: "not a DiffServ code point name"},
		{name: "dscp number", src: "dscp = 64\n", line: 1, want: "out of range (0 to 63)"},
		{name: "admin public address", src: "admin {\n  listen = \"0.0.0.0:9090\"\n}\n", line: 2, want: "must be on loopback"},
		{name: "admin without listen", src: "admin {\n}\n", line: 1, want: "missing required key listen"},
		{name: "service class", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  class = \"fast\"\n}\n", line: 4, want: "use one of: control, bulk"},
		{name: "service source", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  source = \"10.0.0.1:179\"\n}\n", line: 4, want: "is not an IP address"},
		{name: "service ttl", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  ttl = 256\n}\n", line: 4, want: "out of range (1 to 255)"},
		{name: "service proxy_protocol", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  proxy_protocol = \"yes\"\n}\n", line: 4, want: "must be true or false"},
		{name: "allow rule", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\",\n    \"sha256:short\"]\n}\n", line: 4, want: "allow[1]: rule \"sha256:short\""},
		{name: "allow prefix", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"ip:10.0.0.1\"]\n}\n", line: 3, want: "unknown prefix"},
		{name: "forward min_ttl", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  min_ttl = 0\n}\n", line: 4, want: "out of range (1 to 255)"},
		{name: "forward max_conns", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  max_conns = -1\n}\n", line: 4, want: "out of range"},

		// reload_interval, expiry_warning, ping_after, dead_after, drain_timeout.
		{name: "reload_interval 0s", src: "reload_interval = \"0s\"\n", line: 1, want: `reload_interval = "0s" is too short (at least "1s"; leave it out to reload only on SIGHUP)`},
		{name: "reload_interval 999ms", client: true, src: "reload_interval = \"999ms\"\n", line: 1, want: `reload_interval = "999ms" is too short`},
		{name: "reload_interval negative", src: "reload_interval = \"-1m\"\n", line: 1, want: "reload_interval = \"-1m\" must be more than zero"},
		{name: "reload_interval a number", src: "reload_interval = 60\n", line: 1, want: "reload_interval must be a duration string, not a number"},
		{name: "expiry_warning zero", src: "expiry_warning = \"0s\"\n", line: 1, want: `expiry_warning = "0s" must be more than zero`},
		{name: "expiry_warning in days", client: true, src: "expiry_warning = \"30d\"\n", line: 1, want: `expiry_warning = "30d" is not a duration`},
		{name: "ping_after zero", src: "ping_after = \"0s\"\n", line: 1, want: `ping_after = "0s" must be more than zero`},
		{name: "ping_after past the default dead_after", src: "\nping_after = \"40s\"\n", line: 2, want: "ping_after (40s) must be shorter than dead_after (30s, the default)"},
		{name: "dead_after below the default ping_after", client: true, src: "dead_after = \"5s\"\n", line: 1, want: "dead_after (5s) must be longer than ping_after (10s)"},
		{name: "dead_after equal to ping_after", src: "dead_after = \"2s\"\nping_after = \"2s\"\n", line: 1, want: "dead_after (2s) must be longer than ping_after (2s)"},
		{name: "dead_after zero", src: "dead_after = \"0s\"\n", line: 1, want: `dead_after = "0s" must be more than zero`},
		{name: "bad ping_after is not compared", src: "ping_after = \"x\"\ndead_after = \"5s\"\n", line: 1, want: `ping_after = "x" is not a duration`},
		{name: "bad dead_after is not compared", src: "ping_after = \"1m\"\ndead_after = 5\n", line: 2, want: "dead_after must be a duration string"},
		{name: "drain_timeout a number", client: true, src: "drain_timeout = 0\n", line: 1, want: "drain_timeout must be a duration string, not a number"},

		// max_streams_per_session, max_sessions, max_sessions_per_identity, session_wait.
		{name: "max_streams_per_session a string", client: true, src: "max_streams_per_session = \"10\"\n", line: 1, want: "max_streams_per_session must be a number, not a string"},
		{name: "max_streams_per_session fraction", src: "max_streams_per_session = 2.5\n", line: 1, want: "must be a whole number, got 2.5"},
		{name: "max_session_buffer a number", src: "max_session_buffer = 268435456\n", line: 1, want: `max_session_buffer must be a size string, not a number (e.g. max_session_buffer = "256MiB"; a bare number has no unit: write "256MiB")`},
		{name: "max_session_buffer no unit", client: true, src: "max_session_buffer = \"256\"\n", line: 1, want: `max_session_buffer = "256" is not a size (write a whole number with a unit, e.g. "256MiB" or "1GiB"; units KiB, MiB, GiB, TiB)`},
		{name: "max_session_buffer decimal unit", src: "max_session_buffer = \"256MB\"\n", line: 1, want: `max_session_buffer = "256MB" is not a size`},
		{name: "max_session_buffer fraction", src: "max_session_buffer = \"1.5GiB\"\n", line: 1, want: `max_session_buffer = "1.5GiB" is not a size`},
		{name: "max_session_buffer too small", src: "max_session_buffer = \"4MiB\"\n", line: 1, want: `max_session_buffer = "4MiB" is out of range (8MiB to 1TiB)`},
		{name: "max_session_buffer too large", client: true, src: "max_session_buffer = \"2TiB\"\n", line: 1, want: "is out of range (8MiB to 1TiB)"},
		{name: "max_session_buffer overflow", src: "max_session_buffer = \"99999999999999999TiB\"\n", line: 1, want: "is out of range (8MiB to 1TiB)"},
		{name: "max_session_buffer negative", src: "max_session_buffer = \"-1GiB\"\n", line: 1, want: "is not a size"},
		{name: "header_timeout zero", src: "header_timeout = \"0s\"\n", line: 1, want: `header_timeout = "0s" must be more than zero`},
		{name: "header_timeout a number", client: true, src: "header_timeout = 10\n", line: 1, want: "header_timeout must be a duration string, not a number"},

		// resume_window: "0s" to "1h", at the top and in service and forward blocks.
		{name: "resume_window negative", src: "resume_window = \"-1s\"\n", line: 1, want: `resume_window = "-1s" must not be negative (write "0s" to turn resumption off, or a window such as "120s")`},
		{name: "resume_window too long", client: true, src: "resume_window = \"61m\"\n", line: 1, want: `resume_window = "61m" is too long: a suspended stream holds its local connection and its replay buffer all that time (at most "1h"`},
		{name: "resume_window far too long", src: "resume_window = \"99999h\"\n", line: 1, want: "is too long"},
		{name: "resume_window a number", src: "resume_window = 120\n", line: 1, want: `resume_window must be a duration string, not a number (e.g. resume_window = "10s"; a bare number has no unit`},
		{name: "resume_window zero as a number", client: true, src: "resume_window = 0\n", line: 1, want: "resume_window must be a duration string, not a number"},
		{name: "resume_window without unit", src: "resume_window = \"120\"\n", line: 1, want: `resume_window = "120" is not a duration`},
		{name: "resume_window a bool", src: "resume_window = false\n", line: 1, want: "resume_window must be a duration string, not a bool"},
		{name: "resume_window empty", client: true, src: "resume_window = \"\"\n", line: 1, want: `resume_window = "" is not a duration`},
		{name: "resume_window as a block", src: "resume_window {}\n", line: 1, want: "resume_window is a key, not a block"},
		{name: "service resume_window negative", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  resume_window = \"-5m\"\n}\n", line: 4, want: `service "x" resume_window = "-5m" must not be negative`},
		{name: "service resume_window too long", client: true, src: "service \"x\" {\n  target = \"a:1\"\n  resume_window = \"2h\"\n}\n", line: 3, want: `service "x" resume_window = "2h" is too long`},
		{name: "service resume_window a number", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  resume_window = 0\n}\n", line: 4, want: `service "x" resume_window must be a duration string, not a number`},
		{name: "forward resume_window too long", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  resume_window = \"1h0m0.001s\"\n}\n", line: 4, want: `forward "f" resume_window = "1h0m0.001s" is too long`},
		{name: "forward resume_window negative", client: true, src: "forward \"f\" {\n  listen = \":0\"\n  resume_window = \"-1ns\"\n}\n", line: 3, want: `forward "f" resume_window = "-1ns" must not be negative`},
		{name: "forward resume_window a number", client: true, src: "forward \"f\" {\n  listen = \":0\"\n  resume_window = 30\n}\n", line: 3, want: `forward "f" resume_window must be a duration string, not a number`},
		{name: "forward resume_window typo", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  resume_windw = \"1m\"\n}\n", line: 4, want: `unknown key "resume_windw" in forward "f" (did you mean "resume_window"?`},
		{name: "max_sessions zero", src: "max_sessions = 0\n", line: 1, want: "max_sessions = 0 is out of range (1 to 2147483647)"},
		{name: "max_sessions_per_identity negative", src: "max_sessions_per_identity = -1\n", line: 1, want: "max_sessions_per_identity = -1 is out of range (1 to"},
		{name: "max_sessions_per_identity on the client", client: true, src: "max_sessions_per_identity = 3\n", line: 1, want: "max_sessions_per_identity is only for the server"},
		{name: "session_wait negative", client: true, src: "session_wait = \"-1s\"\n", line: 1, want: `session_wait = "-1s" must be more than zero`},
		{name: "session_wait a number", client: true, src: "session_wait = 10\n", line: 1, want: "session_wait must be a duration string, not a number"},
		{name: "bulk_connections zero", client: true, src: "bulk_connections = 0\n", line: 1, want: "bulk_connections = 0 is out of range (1 to 8): one TLS connection per core of crypto; more than 1 suits hosts with cores to spare"},
		{name: "bulk_connections over 8", client: true, src: "bulk_connections = 9\n", line: 1, want: "bulk_connections = 9 is out of range (1 to 8)"},
		{name: "bulk_connections negative", client: true, src: "bulk_connections = -2\n", line: 1, want: "bulk_connections = -2 is out of range (1 to 8)"},
		{name: "bulk_connections fraction", client: true, src: "bulk_connections = 1.5\n", line: 1, want: "bulk_connections must be a whole number, got 1.5"},
		{name: "bulk_connections a string", client: true, src: "bulk_connections = \"2\"\n", line: 1, want: "bulk_connections must be a number, not a string (write it without quotes)"},
		{name: "bulk_connections huge", client: true, src: "bulk_connections = 1e100\n", line: 1, want: "bulk_connections is too large"},
		{name: "bulk_connections as a block", client: true, src: "bulk_connections {}\n", line: 1, want: "bulk_connections is a key, not a block"},
		{name: "bulk_connections on the server", src: "bulk_connections = 2\n", line: 1, want: "bulk_connections is only for the client (remove it)"},
		{name: "bulk_spread a string", client: true, src: "bulk_spread = \"yes\"\n", line: 1, want: "bulk_spread must be true or false, not a string (write it without quotes)"},
		{name: "bulk_spread a number", client: true, src: "bulk_spread = 1\n", line: 1, want: "bulk_spread must be true or false"},
		{name: "bulk_spread on the server", src: "bulk_spread = true\n", line: 1, want: "bulk_spread is only for the client (remove it)"},

		// dscp.
		{name: "dscp negative", src: "dscp = -1\n", line: 1, want: "dscp = -1 is out of range (0 to 63)"},
		{name: "dscp a bool", client: true, src: "dscp = true\n", line: 1, want: `dscp must be a number 0..63 or a code point name such as "EF", not a bool`},
		{name: "dscp a quoted number", src: "dscp = \"46\"\n", line: 1, want: `dscp = "46" is not a DiffServ code point name (use CS0..CS7, EF, AF11..AF43, or a number 0..63)`},
		{name: "dscp AF14", src: "dscp = \"AF14\"\n", line: 1, want: "not a DiffServ code point name"},
		{name: "dscp fraction", src: "dscp = 4.5\n", line: 1, want: "dscp must be a whole number"},

		// admin.
		{name: "admin wildcard", client: true, src: "admin {\n  listen = \":9090\"\n}\n", line: 2, want: `admin listen must be on loopback (127.0.0.1 or [::1]) unless public = true, got ":9090"`},
		{name: "admin IPv6 wildcard", src: "admin {\n  listen = \"[::]:9090\"\n}\n", line: 2, want: "admin listen must be on loopback (127.0.0.1 or [::1]) unless public = true"},
		{name: "admin public = false", src: "admin {\n  listen = \"10.0.0.1:9090\"\n  public = false\n}\n", line: 2, want: "add public = true to the admin block"},
		{name: "admin host name", src: "admin {\n  listen = \"admin.example:9090\"\n}\n", line: 2, want: "must be on loopback"},
		{name: "admin public a string", src: "admin {\n  listen = \"0.0.0.0:9090\"\n  public = \"yes\"\n}\n", line: 3, want: "admin.public must be true or false, not a string"},
		{name: "admin listen without port", src: "admin {\n  listen = \"127.0.0.1\"\n}\n", line: 2, want: `admin.listen = "127.0.0.1": missing port in address`},
		{name: "admin listen a number", src: "admin {\n  listen = 9090\n}\n", line: 2, want: "admin.listen must be a string"},
		{name: "admin with a name", src: "admin \"x\" {\n  listen = \"127.0.0.1:9090\"\n}\n", line: 1, want: "the admin block takes no name"},
		{name: "admin twice", client: true, src: "admin {\n  listen = \"127.0.0.1:9090\"\n}\nadmin {\n  listen = \"127.0.0.1:9091\"\n}\n", line: 4, want: "duplicate admin block, the first is at line 1"},
		{name: "admin without listen on the client", client: true, src: "\nadmin {\n  public = true\n}\n", line: 2, want: "missing required key listen in the admin block"},
		{name: "admin unknown key", src: "admin {\n  listen = \"127.0.0.1:9090\"\n  port = 9090\n}\n", line: 3, want: `unknown key "port" in the admin block (allowed keys: listen, public; no blocks are allowed here)`},
		{name: "admin as a key", src: "admin = \"127.0.0.1:9090\"\n", line: 1, want: "admin is a block, not a key (write admin { ... } without =)"},
		{name: "admin on the server's listen", src: "admin {\n  listen = \"127.0.0.1:8443\"\n}\n", line: 2, want: `admin listens on 127.0.0.1:8443, which clashes with the server's listen = ":8443" at line 5 (give admin another address)`},
		{name: "forward on the admin listen", src: "admin {\n  listen = \"127.0.0.1:9090\"\n}\nforward \"f\" {\n  listen = \"0.0.0.0:9090\"\n  client = \"c\"\n}\n", line: 5, want: `forward "f" listens on 0.0.0.0:9090, which clashes with admin on 127.0.0.1:9090 at line 2`},
		{name: "client forward on the admin listen", client: true, src: "forward \"f\" {\n  listen = \"[::1]:9090\"\n}\nadmin {\n  listen = \"[::1]:9090\"\n}\n", line: 2, want: "clashes with admin on [::1]:9090 at line 5"},

		// tls: crl, crl_stale, verify.
		{name: "crl missing", whole: true, src: tlsWith(false, "  crl = [\n    \"ca.crl\",\n    \"nope.crl\",\n  ]\n"), line: 8, want: "cannot read tls.crl[1] file " + filepath.Join(dir, "nope.crl") + ": no such file or directory (check the path and its permissions; relative paths resolve against " + dir + ")"},
		{name: "crl a directory", client: true, whole: true, src: tlsWith(true, "  crl = [\"pki\"]\n"), line: 6, want: "cannot read tls.crl[0] file " + filepath.Join(dir, "pki") + ": it is a directory"},
		{name: "crl empty path", whole: true, src: tlsWith(false, "  crl = [\"\"]\n"), line: 6, want: "tls.crl[0] must not be empty (give the path of a CRL file, PEM or DER)"},
		{name: "crl a string", whole: true, src: tlsWith(false, "  crl = \"ca.crl\"\n"), line: 6, want: `tls.crl must be a list of strings, not a string (write crl = ["...", "..."])`},
		{name: "crl a number in the list", whole: true, src: tlsWith(false, "  crl = [\"ca.crl\", 1]\n"), line: 6, want: "tls.crl[1] must be a string, not a number"},
		{name: "crl_stale unknown", whole: true, src: tlsWith(false, "  crl_stale = \"ignore\"\n"), line: 6, want: `tls.crl_stale = "ignore" is not allowed (use one of: warn, refuse)`},
		{name: "crl_stale typo", client: true, whole: true, src: tlsWith(true, "  crl_stale = \"refused\"\n"), line: 6, want: `did you mean "refuse"?`},
		{name: "crl_stale a bool", whole: true, src: tlsWith(false, "  crl_stale = true\n"), line: 6, want: "tls.crl_stale must be a string, not a bool"},
		{name: "verify on the server", whole: true, src: tlsWith(false, "  verify = [\"x\"]\n"), line: 6, want: "verify is for the client; the server's allow lists are in its service blocks"},
		{name: "verify empty", client: true, whole: true, src: tlsWith(true, "  verify = []\n"), line: 6, want: "tls.verify is empty"},
		{name: "verify a string", client: true, whole: true, src: tlsWith(true, "  verify = \"x\"\n"), line: 6, want: "tls.verify must be a list of strings, not a string"},
		{name: "verify bad rule at its line", client: true, whole: true, src: tlsWith(true, "  verify = [\n    \"tunnel-server\",\n    \"ip:192.0.2.1\",\n  ]\n"), line: 8, want: `tls.verify[1]: rule "ip:192.0.2.1": unknown prefix "ip:"`},
		{name: "verify padded", client: true, whole: true, src: tlsWith(true, "  verify = [\"x \"]\n"), line: 6, want: `tls.verify[0]: rule "x ": empty or surrounded by spaces`},
		{name: "verify bad pin", client: true, whole: true, src: tlsWith(true, "  verify = [\"issuer:sha256:abc\"]\n"), line: 6, want: "an SPKI pin is sha256: followed by 44 characters of base64"},

		// allow rules.
		{name: "allow nothing after the prefix", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"cn:\"]\n}\n", line: 3, want: `allow[0]: rule "cn:": nothing after the prefix`},
		{name: "allow bad pattern", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\", \"spiffe://corp/[\"]\n}\n", line: 3, want: `service "x" allow[1]: rule "spiffe://corp/[": bad pattern`},
		{name: "allow rule on the client", client: true, src: "service \"x\" {\n  target = \"a:1\"\n\n  allow = [\"sha256:\"]\n}\n", line: 4, want: `allow[0]: rule "sha256:"`},

		// service class, source, ttl, dscp, proxy_protocol, idle_timeout.
		{name: "service class case", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  class = \"Control\"\n}\n", line: 4, want: `service "x" class = "Control" is not allowed (did you mean "control"? use one of: control, bulk)`},
		{name: "service class a number", client: true, src: "service \"x\" {\n  target = \"a:1\"\n  class = 1\n}\n", line: 3, want: `service "x" class must be a string, not a number`},
		{name: "source empty", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  source = \"\"\n}\n", line: 4, want: `service "x" source = "" is not an IP address (give the local address to dial from, without a port)`},
		{name: "source a host name", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  source = \"router.local\"\n}\n", line: 4, want: "is not an IP address"},
		{name: "source a prefix", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  source = \"192.0.2.0/24\"\n}\n", line: 4, want: "is not an IP address"},
		{name: "source IPv6 for an IPv4 target", src: "service \"x\" {\n  target = \"192.0.2.1:179\"\n  allow = [\"c\"]\n  source = \"2001:db8::2\"\n}\n", line: 4, want: `service "x" source = "2001:db8::2" cannot dial target 192.0.2.1:179: one is IPv4, the other IPv6`},
		{name: "source IPv4 for an IPv6 target", client: true, src: "service \"x\" {\n  target = \"[2001:db8::1]:179\"\n  source = \"192.0.2.2\"\n}\n", line: 3, want: "one is IPv4, the other IPv6"},
		{name: "ttl zero", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  ttl = 0\n}\n", line: 4, want: `service "x" ttl = 0 is out of range (1 to 255); leave it out for the system default`},
		{name: "ttl a string", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  ttl = \"255\"\n}\n", line: 4, want: `service "x" ttl must be a number, not a string`},
		{name: "service dscp name", client: true, src: "service \"x\" {\n  target = \"a:1\"\n  dscp = \"EF1\"\n}\n", line: 3, want: `service "x" dscp = "EF1" is not a DiffServ code point name`},
		{name: "service dscp 64", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  dscp = 64\n}\n", line: 4, want: `service "x" dscp = 64 is out of range (0 to 63)`},
		{name: "proxy_protocol a number", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  proxy_protocol = 1\n}\n", line: 4, want: `service "x" proxy_protocol must be true or false, not a number`},
		{name: "service idle_timeout negative", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  idle_timeout = \"-5s\"\n}\n", line: 4, want: `service "x" idle_timeout = "-5s" must be more than zero`},
		{name: "service idle_timeout a number", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  idle_timeout = 300\n}\n", line: 4, want: `idle_timeout must be a duration string, not a number`},
		{name: "service key typo", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  tll = 255\n}\n", line: 4, want: `unknown key "tll" in service "x" (did you mean "ttl"?`},

		// forward class, max_conns, idle_timeout, min_ttl, dscp.
		{name: "forward class", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  class = \"fast\"\n}\n", line: 4, want: `forward "f" class = "fast" is not allowed (use one of: control, bulk)`},
		{name: "forward max_conns zero", client: true, src: "forward \"f\" {\n  listen = \":0\"\n  max_conns = 0\n}\n", line: 3, want: `forward "f" max_conns = 0 is out of range (1 to 2147483647)`},
		{name: "forward idle_timeout", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  idle_timeout = \"soon\"\n}\n", line: 4, want: `forward "f" idle_timeout = "soon" is not a duration`},
		{name: "forward min_ttl 256", client: true, src: "forward \"f\" {\n  listen = \":0\"\n  min_ttl = 256\n}\n", line: 3, want: `forward "f" min_ttl = 256 is out of range (1 to 255); leave it out for no TTL check`},
		{name: "forward min_ttl a string", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  min_ttl = \"254\"\n}\n", line: 4, want: "min_ttl must be a number, not a string"},
		{name: "forward dscp", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  dscp = \"CS8\"\n}\n", line: 4, want: `forward "f" dscp = "CS8" is not a DiffServ code point name`},
		{name: "forward ttl", src: "forward \"f\" {\n  listen = \":0\"\n  client = \"c\"\n  ttl = 1\n}\n", line: 4, want: `unknown key "ttl" in forward "f"`},
		{name: "service min_ttl", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\"]\n  min_ttl = 1\n}\n", line: 4, want: `unknown key "min_ttl" in service "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.src
			if !tt.whole {
				src += serverBase
				if tt.client {
					src = tt.src + clientBase
				}
			}
			file := filepath.Join(dir, "bad.hcl")
			var err error
			if tt.client {
				var c *Client
				c, err = ParseClient(file, []byte(src))
				if c != nil {
					t.Errorf("ParseClient returned %+v with its error", c)
				}
			} else {
				var s *Server
				s, err = ParseServer(file, []byte(src))
				if s != nil {
					t.Errorf("ParseServer returned %+v with its error", s)
				}
			}
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error = %v (%T), want an *Error", err, err)
			}
			if len(cerr.Problems) != 1 {
				t.Errorf("got %d problems, want 1:\n%v", len(cerr.Problems), err)
			}
			p := cerr.Problems[0]
			if p.File != file || p.Line != tt.line || !strings.Contains(p.Msg, tt.want) {
				t.Errorf("problem = %s\nwant line %d containing %q", p.format(), tt.line, tt.want)
			}
			if p.Msg != lowerFirst(p.Msg) {
				t.Errorf("message %q does not start in lowercase", p.Msg)
			}
			prefix := fmt.Sprintf("%s:%d:", file, tt.line)
			if tt.line == 0 {
				prefix = file + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("Error() = %q, want it to start with %q", err.Error(), prefix)
			}
		})
	}
}

// TestParseErrorsAll proves that one parse reports every problem, in file
// order, each on its own line.
func TestParseErrorsAll(t *testing.T) {
	dir := pemDir(t)
	file := filepath.Join(dir, "server.hcl")
	src := `listen = "0.0.0.0"
max_handshakes = 0
tls {
  cert = "missing.crt"
  key  = "k"
}
service "echo" {
  target = "127.0.0.1:7"
}
service "echo" {
  target = "127.0.0.1:7"
  allow  = ["a"]
}
forward "f" {
  listen = "127.0.0.1:9000"
}
forward "g" {
  listen = "127.0.0.1:9000"
  client = "c"
  sevice = "echo"
}
log_format = "yaml"
`
	_, err := ParseServer(file, []byte(src))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("error = %v, want an *Error", err)
	}
	want := []struct {
		line int
		msg  string
	}{
		{1, "missing port in address"},
		{2, "max_handshakes must be at least 1"},
		{3, "missing required key ca in the tls block"},
		{4, "cannot read tls.cert file"},
		{7, `service "echo" has no allow list`},
		{10, `duplicate service "echo", the first is at line 7`},
		{14, `missing required key client in forward "f"`},
		{18, "clashes with forward \"f\""},
		{20, `unknown key "sevice" in forward "g" (did you mean "service"?`},
		{22, `log_format = "yaml" is not allowed`},
	}
	if len(cerr.Problems) != len(want) {
		t.Errorf("got %d problems, want %d:\n%v", len(cerr.Problems), len(want), err)
	}
	lines := strings.Split(err.Error(), "\n")
	for i, w := range want {
		if i >= len(cerr.Problems) {
			break
		}
		p := cerr.Problems[i]
		if p.Line != w.line || !strings.Contains(p.Msg, w.msg) {
			t.Errorf("problem %d = %s\nwant line %d containing %q", i, p.format(), w.line, w.msg)
		}
		if i < len(lines) && lines[i] != p.format() {
			t.Errorf("line %d of Error() = %q, want %q", i, lines[i], p.format())
		}
	}
}

func TestErrorFormat(t *testing.T) {
	e := &Error{Problems: []Problem{
		{File: "a.hcl", Line: 3, Col: 7, Msg: "one"},
		{File: "a.hcl", Line: 4, Msg: "two"},
		{File: "a.hcl", Msg: "three"},
	}}
	if got, want := e.Error(), "a.hcl:3:7: one\na.hcl:4: two\na.hcl: three"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestCheckAddr(t *testing.T) {
	tests := []struct {
		addr         string
		listen, dial bool // valid as a listen / dial address
	}{
		{"127.0.0.1:22", true, true},
		{"example.net:65535", true, true},
		{"[::1]:8443", true, true},
		{"[fe80::1%eth0]:22", true, true},
		{":8443", true, false},
		{"127.0.0.1:0", true, false},
		{":0", true, false},
		{"[::]:0", true, false},
		{"127.0.0.1", false, false},
		{"127.0.0.1:", false, false},
		{"127.0.0.1:65536", false, false},
		{"127.0.0.1:-1", false, false},
		{"127.0.0.1:+22", false, false},
		{"127.0.0.1:0x16", false, false},
		{"127.0.0.1:000022", false, false},
		{"::1:22", false, false},
		{"[127.0.0.1]:22", false, false},
		{"[::ffff:127.0.0.1]:22", true, true},
		{"[host]:22", false, false},
		{"a b:22", false, false},
		{"a/b:22", false, false},
		{"", false, false},
	}
	for _, tt := range tests {
		if got := checkAddr(tt.addr, listenAddr) == ""; got != tt.listen {
			t.Errorf("checkAddr(%q, listen) valid = %v, want %v", tt.addr, got, tt.listen)
		}
		if got := checkAddr(tt.addr, dialAddr) == ""; got != tt.dial {
			t.Errorf("checkAddr(%q, dial) valid = %v, want %v", tt.addr, got, tt.dial)
		}
	}
}

func TestOverlap(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:1", "127.0.0.1:1", true},
		{"127.0.0.1:1", "127.0.0.1:2", false},
		{"127.0.0.1:1", "127.0.0.2:1", false},
		{":1", "127.0.0.1:1", true},
		{"[::]:1", "127.0.0.1:1", true},
		{"0.0.0.0:1", "127.0.0.1:1", true},
		{"0.0.0.0:1", "[::1]:1", false},
		{"[::1]:1", "[0:0::1]:1", true},
		{"LocalHost:1", "localhost:1", true},
		{"localhost:1", "127.0.0.1:1", true},
		{"localhost:1", "[::1]:1", false},
		{"localhost:1", "0.0.0.0:1", true},
		{":0", ":0", false},
	}
	for _, tt := range tests {
		if got := overlap(tt.a, tt.b); got != tt.want {
			t.Errorf("overlap(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := overlap(tt.b, tt.a); got != tt.want {
			t.Errorf("overlap(%q, %q) = %v, want %v", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestLowerFirst(t *testing.T) {
	for in, want := range map[string]string{
		"":                  "",
		"Unsupported block": "unsupported block",
		"HCL is fine":       "HCL is fine",
		"already":           "already",
		"É":                 "é",
	} {
		if got := lowerFirst(in); got != want {
			t.Errorf("lowerFirst(%q) = %q, want %q", in, got, want)
		}
	}
}

// checkServer returns what makes s invalid, or nil: what a config returned
// without error promises.
func checkServer(s *Server) error {
	if s == nil {
		return errors.New("nil server")
	}
	var errs []error
	if !filepath.IsAbs(s.Path) {
		errs = append(errs, fmt.Errorf("path %q is not absolute", s.Path))
	}
	if msg := checkAddr(s.Listen, listenAddr); msg != "" {
		errs = append(errs, fmt.Errorf("listen %q: %s", s.Listen, msg))
	}
	if s.TLS.ServerName != "" {
		errs = append(errs, errors.New("server has a tls server_name"))
	}
	for _, f := range s.Forwards {
		if overlap(s.Listen, f.Listen) {
			errs = append(errs, fmt.Errorf("forward %q listen %q clashes with the server's %q", f.Name, f.Listen, s.Listen))
		}
	}
	if s.MaxHandshakes < 1 {
		errs = append(errs, fmt.Errorf("max_handshakes %d", s.MaxHandshakes))
	}
	errs = append(errs, checkCommon(s.TLS, s.HandshakeTimeout, s.DialTimeout, s.LogLevel, s.LogFormat, s.Services, s.Forwards, true))
	errs = append(errs, checkExtras(s.TLS, s.Settings, s.Services, s.Forwards, true))
	if s.MaxSessions < 1 || s.MaxSessionsPerIdentity < 1 {
		errs = append(errs, fmt.Errorf("max_sessions %d, per identity %d", s.MaxSessions, s.MaxSessionsPerIdentity))
	}
	if s.Admin != "" && overlap(s.Admin, s.Listen) {
		errs = append(errs, fmt.Errorf("admin %q clashes with listen %q", s.Admin, s.Listen))
	}
	return errors.Join(errs...)
}

// checkClient is checkServer for a client.
func checkClient(c *Client) error {
	if c == nil {
		return errors.New("nil client")
	}
	var errs []error
	if !filepath.IsAbs(c.Path) {
		errs = append(errs, fmt.Errorf("path %q is not absolute", c.Path))
	}
	if len(c.Servers) == 0 {
		errs = append(errs, errors.New("no servers"))
	}
	for _, s := range c.Servers {
		if msg := checkAddr(s, dialAddr); msg != "" {
			errs = append(errs, fmt.Errorf("server %q: %s", s, msg))
		}
	}
	if c.TLS.ServerName == "" {
		errs = append(errs, errors.New("empty server_name"))
	}
	errs = append(errs, checkCommon(c.TLS, c.HandshakeTimeout, c.DialTimeout, c.LogLevel, c.LogFormat, c.Services, c.Forwards, false))
	errs = append(errs, checkExtras(c.TLS, c.Settings, c.Services, c.Forwards, false))
	if c.SessionWait < 0 {
		errs = append(errs, fmt.Errorf("session_wait %v", c.SessionWait))
	}
	if c.BulkConnections < 1 || c.BulkConnections > MaxBulkConnections {
		errs = append(errs, fmt.Errorf("bulk_connections %d", c.BulkConnections))
	}
	return errors.Join(errs...)
}

func checkCommon(t TLS, hs, dial time.Duration, level, format string, services []Service, forwards []Forward, server bool) error {
	var errs []error
	for _, p := range []string{t.Cert, t.Key, t.CA} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("tls path %q is not absolute", p))
		}
	}
	if hs <= 0 || dial <= 0 {
		errs = append(errs, fmt.Errorf("timeouts %v, %v", hs, dial))
	}
	if !slices.Contains(logLevels, level) || !slices.Contains(logFormats, format) {
		errs = append(errs, fmt.Errorf("log level %q, format %q", level, format))
	}
	names := map[string]bool{}
	for _, s := range services {
		if checkName(s.Name) != "" || names[s.Name] {
			errs = append(errs, fmt.Errorf("service name %q", s.Name))
		}
		names[s.Name] = true
		if msg := checkAddr(s.Target, dialAddr); msg != "" {
			errs = append(errs, fmt.Errorf("service %q target: %s", s.Name, msg))
		}
		if server && len(s.Allow) == 0 || s.Allow != nil && len(s.Allow) == 0 || slices.Contains(s.Allow, "") {
			errs = append(errs, fmt.Errorf("service %q allow %q", s.Name, s.Allow))
		}
	}
	clear(names)
	var listens []string
	for _, f := range forwards {
		if checkName(f.Name) != "" || names[f.Name] || checkName(f.Service) != "" {
			errs = append(errs, fmt.Errorf("forward name %q, service %q", f.Name, f.Service))
		}
		names[f.Name] = true
		if msg := checkAddr(f.Listen, listenAddr); msg != "" {
			errs = append(errs, fmt.Errorf("forward %q listen: %s", f.Name, msg))
		}
		for _, l := range listens {
			if overlap(l, f.Listen) {
				errs = append(errs, fmt.Errorf("forward %q listen %q clashes with %q", f.Name, f.Listen, l))
			}
		}
		listens = append(listens, f.Listen)
		if server == (f.Client == "") {
			errs = append(errs, fmt.Errorf("forward %q client %q", f.Name, f.Client))
		}
	}
	return errors.Join(errs...)
}

// The cases above predate the keys of Settings, classes and socket
// options, and set none of them: fill in their defaults.
func defaultSettings() Settings {
	return Settings{ExpiryWarning: DefaultExpiryWarning, PingAfter: DefaultPingAfter, DeadAfter: DefaultDeadAfter,
		DrainTimeout: DefaultDrainTimeout, MaxStreamsPerSession: DefaultMaxStreamsPerSession,
		MaxSessionBuffer: DefaultMaxSessionBuffer, HeaderTimeout: DefaultHeaderTimeout, ResumeWindow: DefaultResumeWindow, DSCP: -1}
}

func withCommonDefaults(t *TLS, st *Settings, svcs []Service, fwds []Forward) {
	if t.CRLStale == "" {
		t.CRLStale = DefaultCRLStale
	}
	if *st == (Settings{}) {
		*st = defaultSettings()
	}
	for i := range svcs {
		if svcs[i].Class == "" {
			svcs[i].Class, svcs[i].DSCP = DefaultClass(portOf(svcs[i].Target)), -1
		}
	}
	for i := range fwds {
		if fwds[i].Class == "" {
			fwds[i].Class, fwds[i].DSCP, fwds[i].MaxConns = DefaultClass(portOf(fwds[i].Listen)), -1, DefaultMaxConns
		}
	}
}

func withServerDefaults(s *Server) {
	withCommonDefaults(&s.TLS, &s.Settings, s.Services, s.Forwards)
	if s.MaxSessions == 0 {
		s.MaxSessions, s.MaxSessionsPerIdentity = DefaultMaxSessions, DefaultMaxSessionsPerIdentity
	}
}

func withClientDefaults(c *Client) {
	withCommonDefaults(&c.TLS, &c.Settings, c.Services, c.Forwards)
	if c.SessionWait == 0 {
		c.SessionWait = DefaultSessionWait
	}
	if c.BulkConnections == 0 {
		c.BulkConnections = DefaultBulkConnections
	}
}

// rulesOf parses rules that must be valid: the parsed allow and verify
// lists a config carries.
func rulesOf(list ...string) ssl.Rules {
	rules, errs := ssl.ParseRules(list)
	if len(errs) > 0 {
		panic(errs[0])
	}
	return rules
}
