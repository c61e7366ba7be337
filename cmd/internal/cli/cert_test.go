package cli

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func run2(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(Server, args, &out, &errb)
	return out.String(), errb.String(), code
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := run2(t, args...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, errs)
	}
	return out
}

func TestCertLifecycle(t *testing.T) {
	dir := t.TempDir()
	ca, routers := filepath.Join(dir, "ca"), filepath.Join(dir, "routers")
	mustRun(t, "cert", "ca", "create", "--dir", ca)
	if _, errs, code := run2(t, "cert", "ca", "create", "--dir", ca); code != 1 || !strings.Contains(errs, "never overwritten") {
		t.Fatalf("second ca create: %d %s", code, errs)
	}
	mustRun(t, "cert", "ca", "intermediate", "--ca-dir", ca, "--out-dir", routers, "--name", "Routers CA")
	mustRun(t, "cert", "issue", "--ca-dir", ca, "--server", "tunnel-server", "--dns", "localhost", "--ip", "127.0.0.1", "--out-dir", dir)
	out := mustRun(t, "cert", "issue", "--ca-dir", routers, "--client", "edge-1", "--uri", "spiffe://corp/router/edge-1", "--out-dir", dir)
	if !strings.Contains(out, "pin for allow/verify: sha256:") {
		t.Fatalf("issue output: %s", out)
	}
	for _, key := range []string{filepath.Join(ca, "ca.key"), filepath.Join(routers, "ca.key"), filepath.Join(dir, "edge-1.key"), filepath.Join(dir, "tunnel-server.key")} {
		st, err := os.Stat(key)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v %v", key, st.Mode(), err)
		}
	}
	if _, errs, code := run2(t, "cert", "issue", "--ca-dir", routers, "--client", "edge-1", "--out-dir", dir); code != 1 || !strings.Contains(errs, "refusing to overwrite") {
		t.Fatalf("reissue over a key: %d %s", code, errs)
	}
	// The files work with the agents' TLS code: chains through the
	// intermediate verify against the root alone.
	srv, err := ssl.LoadMaterial(filepath.Join(dir, "tunnel-server.crt"), filepath.Join(dir, "tunnel-server.key"), filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := srv.Check(time.Now(), x509.ExtKeyUsageServerAuth); len(errs) > 0 {
		t.Fatal(errs)
	}
	cli, err := ssl.LoadMaterial(filepath.Join(dir, "edge-1.crt"), filepath.Join(dir, "edge-1.key"), filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cli.Check(time.Now(), x509.ExtKeyUsageClientAuth); len(errs) > 0 {
		t.Fatal(errs)
	}

	// inspect shows the serial; revoke it; the CRL names it and the
	// agents' policy refuses the certificate.
	insp := mustRun(t, "cert", "inspect", filepath.Join(dir, "edge-1.crt"))
	serial := regexp.MustCompile(`serial:\s+(\S+)`).FindStringSubmatch(insp)[1]
	if !strings.Contains(insp, "intermediate CA: CN=Routers CA") || !strings.Contains(insp, "spiffe://corp/router/edge-1") {
		t.Fatalf("inspect:\n%s", insp)
	}
	mustRun(t, "cert", "revoke", "--ca-dir", routers, serial)
	out = mustRun(t, "cert", "revoke", "--ca-dir", routers, strings.ReplaceAll(serial, ":", ""))
	if !strings.Contains(out, "already revoked") || !strings.Contains(out, "CRL #2") {
		t.Fatalf("second revoke: %s", out)
	}
	crlOut := mustRun(t, "cert", "inspect", filepath.Join(routers, "ca.crl"))
	if !strings.Contains(crlOut, serial) || !strings.Contains(crlOut, "number:      2") {
		t.Fatalf("CRL inspect:\n%s", crlOut)
	}
	p, err := ssl.LoadPolicy(ssl.PolicySpec{Cert: filepath.Join(dir, "tunnel-server.crt"), Key: filepath.Join(dir, "tunnel-server.key"), CA: filepath.Join(ca, "ca.crt"), CRLs: []string{filepath.Join(routers, "ca.crl")}})
	if err != nil {
		t.Fatal(err)
	}
	// validate runs the same checks offline: the revoked certificate fails.
	cfgPath := filepath.Join(dir, "client.hcl")
	os.WriteFile(cfgPath, []byte(`server = "127.0.0.1:1"
tls {
  cert = "edge-1.crt"
  key  = "edge-1.key"
  ca   = "ca/ca.crt"
  crl  = ["routers/ca.crl"]
}
`), 0o644)
	var vout, verr bytes.Buffer
	if code := Main(Client, []string{"validate", "-config", cfgPath}, &vout, &verr); code != 2 || !strings.Contains(verr.String(), "is revoked") {
		t.Fatalf("validate of a revoked certificate: exit %d\n%s%s", code, vout.String(), verr.String())
	}
	inter, _ := pki.LoadCA(routers)
	id := ssl.Identity{Leaf: mustLeaf(t, filepath.Join(dir, "edge-1.crt")), Chain: []*x509.Certificate{inter.Cert, inter.Root()}}
	if err := p.Recheck(id, x509.ExtKeyUsageClientAuth, time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked client passes: %v", err)
	}
}

func mustLeaf(t *testing.T, path string) *x509.Certificate {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertsPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

func TestCertUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"cert"},
		{"cert", "bogus"},
		{"cert", "issue", "--ca-dir", "x"},
		{"cert", "issue", "--ca-dir", "x", "--server", "a", "--client", "b"},
		{"cert", "issue", "--ca-dir", "x", "--client", "b", "--ip", "nope"},
		{"cert", "revoke", "--ca-dir", "x", "zz"},
		{"cert", "ca", "create"},
		{"cert", "ca", "create", "--dir", "d", "--days", "0"},
		{"cert", "inspect"},
	} {
		if _, errs, code := run2(t, args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, errs)
		}
	}
	if _, errs, code := run2(t, "cert", "issue", "--ca-dir", t.TempDir(), "--client", "x"); code != 1 || !strings.Contains(errs, "cert ca create") {
		t.Errorf("missing CA: %d %s", code, errs)
	}
}

func FuzzParseCertsPEM(f *testing.F) {
	ca, _ := pki.NewRootCA(pki.Options{CommonName: "fuzz"})
	f.Add(ca.CertPEM())
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = pki.ParseCertsPEM(b) })
}

func FuzzParseCRL(f *testing.F) {
	ca, _ := pki.NewRootCA(pki.Options{CommonName: "fuzz"})
	crl, _ := ca.NewCRL(nil, nil, time.Now(), time.Now().Add(time.Hour))
	f.Add(crl)
	f.Add([]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) { _, _ = ssl.ParseCRL(b) })
}

func FuzzParseRule(f *testing.F) {
	for _, s := range []string{"client-a", "cn:x", "dns:a.b", "spiffe://corp/*", "sha256:" + strings.Repeat("A", 43) + "=", "issuer:Routers CA", "issuer:sha256:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ssl.ParseRule(s)
		if err == nil && r.String() != s {
			t.Fatalf("rule %q round-trips as %q", s, r.String())
		}
	})
}
