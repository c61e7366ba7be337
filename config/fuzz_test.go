package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzSeeds are inputs for both fuzzers besides the examples.
var fuzzSeeds = []string{
	"",
	serverBase,
	clientBase,
	"server = [\"a:1\", \"[::1]:2\"]" + clientBase[len("\nserver = \"tunnel.example.net:8443\""):],
	"log_level = [for x in [\"info\"]: x][0]\n",
	"max_handshakes = 1e100\nlisten = \"[fe80::1%eth0]:0\"\n",
	"forward \"a\" {\n  listen = \":0\"\n  client = \"c\"\n}\nforward \"b\" {\n  listen = \":0\"\n  client = \"c\"\n}\n" + serverBase,
	"service \"x\" \"y\" {}\ntls \"z\" {}\ntls {}\n",
	"x = \"${\"",
	"listen = <<EOT\n:1\nEOT\n",
	// The keys beyond the basics.
	"reload_interval = \"1m\"\nexpiry_warning = \"240h\"\nping_after = \"2s\"\ndead_after = \"6s\"\ndrain_timeout = \"0s\"\n" +
		"max_streams_per_session = 10\nmax_session_buffer = \"64MiB\"\nheader_timeout = \"3s\"\nmax_sessions = 5\nmax_sessions_per_identity = 1\nsession_wait = \"0s\"\ndscp = \"CS6\"\n" +
		"admin {\n  listen = \"127.0.0.1:9090\"\n}\n" + serverBase,
	"admin {\n  listen = \"0.0.0.0:0\"\n  public = true\n}\n" + clientBase,
	"admin {\n  listen = \":9090\"\n}\nadmin {\n}\nforward \"f\" {\n  listen = \"127.0.0.1:9090\"\n}\n" + clientBase,
	"listen = \":1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n  crl = [\"ca.crl\", \"pki/inter.crl\"]\n  crl_stale = \"refuse\"\n  verify = [\"x\"]\n}\n",
	"server = \"a:1\"\ntls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n  crl = [\"\", \"nope\"]\n  verify = [\"cn:x\", \"issuer:sha256:" + strings.Repeat("A", 43) + "=\", \"uri:[\"]\n}\n",
	"service \"bgp\" {\n  target = \"192.0.2.1:179\"\n  allow = [\"edge-1\", \"spiffe://corp/r/*\", \"issuer:Routers CA\"]\n  class = \"control\"\n" +
		"  source = \"192.0.2.2\"\n  ttl = 255\n  dscp = 48\n  proxy_protocol = true\n  idle_timeout = \"0s\"\n}\n" + serverBase,
	"service \"x\" {\n  target = \"[2001:db8::1]:22\"\n  allow = [\"sha256:x\"]\n  source = \"192.0.2.2\"\n  ttl = 0\n  dscp = \"af42\"\n}\n" + clientBase,
	"forward \"of\" {\n  listen = \"127.0.0.1:6653\"\n  client = \"edge-1\"\n  class = \"bulk\"\n  max_conns = 2\n" +
		"  idle_timeout = \"5m\"\n  min_ttl = 254\n  dscp = \"EF\"\n}\n" + serverBase,
	"forward \"f\" {\n  listen = \":2605\"\n  min_ttl = 256\n  dscp = 64\n  max_conns = 0\n}\nping_after = \"40s\"\n" + clientBase,
	// resume_window: at the top, and overriding it in blocks, "0s" included.
	"resume_window = \"90s\"\nservice \"bgp\" {\n  target = \"192.0.2.1:179\"\n  allow = [\"edge-1\"]\n  resume_window = \"0s\"\n}\n" +
		"forward \"f\" {\n  listen = \"127.0.0.1:1179\"\n  client = \"edge-1\"\n  resume_window = \"1h\"\n}\n" + serverBase,
	"resume_window = \"0s\"\nforward \"f\" {\n  listen = \":0\"\n  resume_window = \"2m\"\n}\nservice \"s\" {\n  target = \"a:1\"\n  resume_window = \"0\"\n}\n" + clientBase,
	"resume_window = 120\nservice \"x\" {\n  target = \"a:1\"\n  resume_window = \"-1s\"\n}\nforward \"f\" {\n  listen = \":0\"\n  resume_window = \"61m\"\n}\n" + clientBase,
}

func FuzzParseServer(f *testing.F) {
	dir := pemDir(f)
	file := filepath.Join(dir, "server.hcl")
	f.Add([]byte(serverExample))
	f.Add([]byte(clientExample))
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := ParseServer(file, src)
		if err == nil {
			if err := checkServer(s); err != nil {
				t.Fatalf("ParseServer returned an invalid config without error: %v\n%+v", err, s)
			}
			return
		}
		checkError(t, err)
		if s != nil {
			t.Fatalf("ParseServer returned %+v with error %v", s, err)
		}
	})
}

func FuzzParseClient(f *testing.F) {
	dir := pemDir(f)
	file := filepath.Join(dir, "client.hcl")
	f.Add([]byte(clientExample))
	f.Add([]byte(serverExample))
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := ParseClient(file, src)
		if err == nil {
			if err := checkClient(c); err != nil {
				t.Fatalf("ParseClient returned an invalid config without error: %v\n%+v", err, c)
			}
			return
		}
		checkError(t, err)
		if c != nil {
			t.Fatalf("ParseClient returned %+v with error %v", c, err)
		}
	})
}

// checkError checks that err is an *Error with at least one well-formed
// problem.
func checkError(t *testing.T, err error) {
	t.Helper()
	var cerr *Error
	if !errors.As(err, &cerr) || len(cerr.Problems) == 0 {
		t.Fatalf("error %v (%T) is not an *Error with problems", err, err)
	}
	for _, p := range cerr.Problems {
		if p.Msg == "" || p.Line < 0 || p.Col < 0 || p.Line == 0 && p.Col != 0 {
			t.Fatalf("malformed problem %+v", p)
		}
	}
}
