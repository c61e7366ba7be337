package config

import (
	"errors"
	"path/filepath"
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
