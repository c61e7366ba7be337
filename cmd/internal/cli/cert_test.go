package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/agent"
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
	if !regexp.MustCompile(`pin:\s+sha256:`).MatchString(out) || !strings.Contains(out, "followed by 1 intermediate") {
		t.Fatalf("issue output: %s", out)
	}
	for _, key := range []string{filepath.Join(ca, "ca.key"), filepath.Join(routers, "ca.key"), filepath.Join(dir, "edge-1.key"), filepath.Join(dir, "tunnel-server.key")} {
		st, err := os.Stat(key)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v %v", key, st.Mode(), err)
		}
		if w := agent.SetupWarnings(key, "", false); len(w) != 0 {
			t.Errorf("a key written by cert is warned about: %q", w)
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
	// Flags after the serial; the pin inspect prints is the agents' pin.
	out = mustRun(t, "cert", "revoke", "--ca-dir", routers, serial, "--reason", "keyCompromise")
	if !strings.Contains(out, "revoked serial "+serial) || !strings.Contains(out, "CRL #1") {
		t.Fatalf("revoke: %s", out)
	}
	if pin := regexp.MustCompile(`pin:\s+(\S+)`).FindStringSubmatch(insp)[1]; pin != ssl.SPKIPin(mustLeaf(t, filepath.Join(dir, "edge-1.crt"))) {
		t.Fatalf("inspect pin %s", pin)
	}
	out = mustRun(t, "cert", "revoke", "--ca-dir", routers, strings.ReplaceAll(serial, ":", ""))
	if !strings.Contains(out, "already revoked") || !strings.Contains(out, "CRL #2") {
		t.Fatalf("second revoke: %s", out)
	}
	crlOut := mustRun(t, "cert", "inspect", "--ca", filepath.Join(routers, "ca.crt"), filepath.Join(routers, "ca.crl"))
	if !strings.Contains(crlOut, serial+"  revoked") || !strings.Contains(crlOut, "keyCompromise") || !strings.Contains(crlOut, "number:      2") || !strings.Contains(crlOut, "signature:   verified") {
		t.Fatalf("CRL inspect:\n%s", crlOut)
	}
	// The CRL is signed by the intermediate, not the root.
	if _, errs, code := run2(t, "cert", "inspect", "--ca", filepath.Join(ca, "ca.crt"), filepath.Join(routers, "ca.crl")); code != 1 || !strings.Contains(errs, "does not verify") {
		t.Fatalf("CRL against the wrong CA: %d %s", code, errs)
	}
	crl, err := pki.LoadCRL(mustRead(t, filepath.Join(routers, "ca.crl")))
	if err != nil {
		t.Fatal(err)
	}
	if crl.Number.Int64() != 2 || len(crl.RevokedCertificateEntries) != 1 {
		t.Fatalf("CRL number %v, %d entries", crl.Number, len(crl.RevokedCertificateEntries))
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

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
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
	t.Chdir(t.TempDir()) // the default CA directory must not be found here
	for _, args := range [][]string{
		{"cert"},
		{"cert", "bogus"},
		{"cert", "issue", "--ca-dir", "x"},
		{"cert", "issue", "--ca-dir", "x", "--server", "a", "--client", "b"},
		{"cert", "issue", "--ca-dir", "x", "--client", "b", "--ip", "nope"},
		{"cert", "revoke", "--ca-dir", "x", "zz"},
		{"cert", "ca", "create", "--dir", ""},
		{"cert", "ca", "create", "--dir", "d", "--days", "0"},
		{"cert", "inspect"},
		{"cert", "inspect", "a", "b"},
		{"cert", "revoke", "--ca-dir", "x", "1000"},
		{"cert", "revoke", "--ca-dir", "x", "--reason", "certificateHold", "0A:1B"},
		{"cert", "revoke", "--ca-dir", "x", "--next-update-days", "0"},
		{"cert", "revoke", "--ca-dir", "", "0A:1B"},
		{"cert", "issue", "--ca-dir", "x", "--client", "../evil"},
		{"cert", "issue", "--ca-dir", "x", "--client", "b", "--uri", "not-a-uri"},
		{"cert", "issue", "--ca-dir", "x", "--client", "b", "--days", "-1"},
		{"cert", "issue", "--ca-dir", "x", "--client", "b", "extra"},
		{"cert", "issue", "--bogus-flag"},
		{"cert", "ca", "create", "--dir", "d", "--name", ""},
		{"cert", "ca", "intermediate", "--ca-dir", "x", "--out-dir", "y"},
		{"cert", "ca"},
	} {
		if _, errs, code := run2(t, args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, errs)
		}
	}
	if _, errs, code := run2(t, "cert", "issue", "--ca-dir", t.TempDir(), "--client", "x"); code != 1 || !strings.Contains(errs, "cert ca create") {
		t.Errorf("missing CA: %d %s", code, errs)
	}
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

func TestCertHelp(t *testing.T) {
	for _, args := range [][]string{{"cert", "help"}, {"cert", "--help"}} {
		out, _, code := run2(t, args...)
		if code != 0 || !strings.Contains(out, "ca create [--dir ca]") || !strings.Contains(out, "dec:") {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}
	if out, _, code := run2(t, "cert", "issue", "-h"); code != 0 || !strings.Contains(out, "-ca-dir") {
		t.Fatalf("issue -h: exit %d\n%s", code, out)
	}
	if out, _, _ := run2(t, "help"); !strings.Contains(out, "cert ...") {
		t.Fatalf("main usage lacks cert:\n%s", out)
	}
}

// A server and a client issued by `cert` complete a real handshake with the
// agents' TLS configuration, over loopback TCP.
func TestCertIssuedPairHandshakes(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	mustRun(t, "cert", "ca", "create", "--dir", ca, "--name", "Handshake CA", "--days", "30")
	mustRun(t, "cert", "issue", "--ca-dir", ca, "--server", "localhost", "--out-dir", dir)
	mustRun(t, "cert", "issue", "--ca-dir", ca, "--client", "client-a", "--out-dir", dir, "--days", "2")
	srv, err := ssl.LoadMaterial(filepath.Join(dir, "localhost.crt"), filepath.Join(dir, "localhost.key"), filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := srv.Check(time.Now(), x509.ExtKeyUsageServerAuth); len(errs) > 0 {
		t.Fatal(errs)
	}
	if errs := srv.Check(time.Now(), x509.ExtKeyUsageClientAuth); len(errs) == 0 {
		t.Fatal("a server certificate passes as a client")
	}
	cli, err := ssl.LoadMaterial(filepath.Join(dir, "client-a.crt"), filepath.Join(dir, "client-a.key"), filepath.Join(ca, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := cli.Check(time.Now(), x509.ExtKeyUsageClientAuth); len(errs) > 0 {
		t.Fatal(errs)
	}
	if d := time.Until(cli.Leaf.NotAfter); d < 47*time.Hour || d > 49*time.Hour {
		t.Fatalf("--days 2 gave %v", d)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	var serverErr error
	var peer string
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, ssl.ServerConfig(srv))
		if serverErr = ssl.Handshake(context.Background(), tc, 5*time.Second); serverErr == nil {
			peer = tc.ConnectionState().PeerCertificates[0].Subject.CommonName
			_, serverErr = tc.Write([]byte("ok"))
		}
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(c, ssl.ClientConfig(cli, "localhost"))
	herr := ssl.Handshake(context.Background(), tc, 5*time.Second)
	buf := make([]byte, 2)
	if herr == nil {
		_, herr = io.ReadFull(tc, buf)
	}
	tc.Close()
	wg.Wait()
	if herr != nil || serverErr != nil || peer != "client-a" || string(buf) != "ok" {
		t.Fatalf("handshake: client %v, server %v, peer %q", herr, serverErr, peer)
	}
}

func TestCertRevokeSerialForms(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	mustRun(t, "cert", "ca", "create", "--dir", ca)
	mustRun(t, "cert", "issue", "--ca-dir", ca, "--client", "c1", "--out-dir", dir)
	leaf := mustLeaf(t, filepath.Join(dir, "c1.crt"))
	// Decimal needs its prefix; inspect shows the same serial in hex.
	mustRun(t, "cert", "revoke", "--ca-dir", ca, "--reason", "superseded", "--next-update-days", "1", "dec:"+leaf.SerialNumber.String())
	out := mustRun(t, "cert", "inspect", filepath.Join(ca, "ca.crl"))
	if !strings.Contains(out, pki.FormatSerial(leaf.SerialNumber)) || !strings.Contains(out, "superseded") || !strings.Contains(out, "number:      1") {
		t.Fatalf("inspect:\n%s", out)
	}
	// Re-signing without a serial bumps the number and keeps the list.
	out = mustRun(t, "cert", "revoke", "--ca-dir", ca)
	if !strings.Contains(out, "CRL #2 with 1 revoked") {
		t.Fatalf("refresh: %s", out)
	}
	// DER CRL and DER certificate inspect the same way.
	crl := mustRead(t, filepath.Join(ca, "ca.crl"))
	block, _ := pem.Decode(crl)
	os.WriteFile(filepath.Join(dir, "ca.crl.der"), block.Bytes, 0o644)
	if out := mustRun(t, "cert", "inspect", filepath.Join(dir, "ca.crl.der")); !strings.Contains(out, pki.FormatSerial(leaf.SerialNumber)) {
		t.Fatalf("DER CRL:\n%s", out)
	}
	os.WriteFile(filepath.Join(dir, "c1.der"), leaf.Raw, 0o644)
	if out := mustRun(t, "cert", "inspect", "--ca", filepath.Join(ca, "ca.crt"), filepath.Join(dir, "c1.der")); !strings.Contains(out, "leaf: CN=c1") || !strings.Contains(out, "verified against --ca") || !strings.Contains(out, "ECDSA P-256") || !strings.Contains(out, "days left") {
		t.Fatalf("DER cert:\n%s", out)
	}
	// A key file is refused without a byte of it.
	key := mustRead(t, filepath.Join(dir, "c1.key"))
	keyBody := strings.Split(string(key), "\n")[1]
	o, errs, code := run2(t, "cert", "inspect", filepath.Join(dir, "c1.key"))
	if code != 1 || !strings.Contains(errs, "private key") || strings.Contains(o+errs, keyBody) {
		t.Fatalf("inspect key: %d %q %q", code, o, errs)
	}
	// A second intermediate in an existing CA directory is refused.
	if _, errs, code := run2(t, "cert", "ca", "intermediate", "--ca-dir", ca, "--out-dir", dir+"/int", "--name", "I"); code != 0 {
		t.Fatalf("intermediate: %s", errs)
	}
	if _, errs, code := run2(t, "cert", "ca", "intermediate", "--ca-dir", ca, "--out-dir", dir+"/int", "--name", "I2"); code != 1 || !strings.Contains(errs, "never overwritten") {
		t.Fatalf("second intermediate: %d %s", code, errs)
	}
}

// The README's three commands with no directories named: the CA goes to
// ./ca, the certificates to the current directory, keys 0600, and nothing
// is ever overwritten.
func TestCertDefaults(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	out := mustRun(t, "cert", "ca", "create")
	if !strings.Contains(out, filepath.Join("ca", "ca.crt")) || !strings.Contains(out, "next: tunnel-server cert issue --server") {
		t.Fatalf("ca create output: %s", out)
	}
	mustRun(t, "cert", "issue", "--server", "tunnel.example.net")
	mustRun(t, "cert", "issue", "--client", "edge-1")
	for _, key := range []string{"ca/ca.key", "tunnel.example.net.key", "edge-1.key"} {
		if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", key, st, err)
		}
	}
	leaf, err := tls.LoadX509KeyPair("tunnel.example.net.crt", "tunnel.example.net.key")
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := x509.ParseCertificate(leaf.Certificate[0]); c == nil || len(c.DNSNames) != 1 || c.DNSNames[0] != "tunnel.example.net" {
		t.Fatalf("server certificate names: %v", c.DNSNames)
	}

	// Again: every command refuses and leaves the files as they were.
	before := map[string][]byte{}
	for _, f := range []string{"ca/ca.crt", "ca/ca.key", "edge-1.crt", "edge-1.key"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		before[f] = b
	}
	for _, args := range [][]string{{"cert", "ca", "create"}, {"cert", "issue", "--client", "edge-1"}} {
		if _, errs, code := run2(t, args...); code != exitFailure || !strings.Contains(errs, "already exists") {
			t.Errorf("%v again: exit %d, %s; want 1 and 'already exists'", args, code, errs)
		}
	}
	// A certificate without its key is not replaced either.
	if err := os.Remove("edge-1.key"); err != nil {
		t.Fatal(err)
	}
	if _, errs, code := run2(t, "cert", "issue", "--client", "edge-1"); code != exitFailure || !strings.Contains(errs, "edge-1.crt already exists") {
		t.Errorf("issue over a lone certificate: exit %d, %s", code, errs)
	}
	if _, err := os.Stat("edge-1.key"); err == nil {
		t.Error("issue wrote a key beside a certificate it refused to replace")
	}
	for f, b := range before {
		if now, err := os.ReadFile(f); f != "edge-1.key" && (err != nil || !bytes.Equal(now, b)) {
			t.Errorf("%s changed (%v)", f, err)
		}
	}

	// The defaults are listed in the help.
	help := mustRun(t, "cert", "issue", "--help")
	for _, want := range []string{`-ca-dir string`, `(default "ca")`, `-out-dir string`, `(default ".")`, `(default 365)`, "Never overwrites"} {
		if !strings.Contains(help, want) {
			t.Errorf("cert issue --help lacks %q:\n%s", want, help)
		}
	}
	// Without a CA where the default says, the error says how to make one.
	t.Chdir(t.TempDir())
	if _, errs, code := run2(t, "cert", "issue", "--client", "x"); code != exitFailure || !strings.Contains(errs, "cert ca create") {
		t.Errorf("issue without a CA: exit %d, %s", code, errs)
	}
}

// A CRL as `cert revoke` writes it (7 days) passes validate without an
// expiry warning; one in the last third of its validity is warned about.
func TestValidateCRLExpiryWarning(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	mustRun(t, "cert", "ca", "create")
	mustRun(t, "cert", "issue", "--client", "edge-1")
	mustRun(t, "cert", "revoke")
	cfg := filepath.Join(dir, "client.hcl")
	if err := os.WriteFile(cfg, []byte("server = \"127.0.0.1:1\"\ntls {\n  cert = \"edge-1.crt\"\n  key = \"edge-1.key\"\n  ca = \"ca/ca.crt\"\n  crl = [\"ca/ca.crl\"]\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if code := Main(Client, []string{"validate", "-config", cfg}, &out, &errs); code != 0 || strings.Contains(errs.String(), "expires") {
		t.Fatalf("validate with a fresh 7-day CRL: exit %d, stderr %q; want 0 and no expiry warning", code, errs.String())
	}
	ca, err := pki.LoadCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := ca.Revoke("ca", nil, 0, now.Add(-6*24*time.Hour), now.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	errs.Reset()
	if code := Main(Client, []string{"validate", "-config", cfg}, &out, &errs); code != 0 || !strings.Contains(errs.String(), "ca.crl is due for its next update in 23 hours") {
		t.Fatalf("validate with a CRL due in a day: exit %d, stderr %q; want 0 and a warning", code, errs.String())
	}
}
