package pki_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// onDisk writes a root and an intermediate below dir and loads them back,
// as `cert ca create` and `cert ca intermediate` do.
func onDisk(t *testing.T) (dir string, root, inter *pki.Cert) {
	t.Helper()
	dir = t.TempDir()
	r := must[*pki.Cert](t)(pki.NewRootCA(pki.Options{CommonName: "Test Root"}))
	if err := r.WriteCAFiles(filepath.Join(dir, "root")); err != nil {
		t.Fatal(err)
	}
	root = must[*pki.Cert](t)(pki.LoadCA(filepath.Join(dir, "root")))
	i := must[*pki.Cert](t)(root.NewIntermediate(pki.Options{CommonName: "Test Routers CA"}))
	if err := i.WriteCAFiles(filepath.Join(dir, "inter")); err != nil {
		t.Fatal(err)
	}
	inter = must[*pki.Cert](t)(pki.LoadCA(filepath.Join(dir, "inter")))
	return dir, root, inter
}

func TestRootIntermediateLeafChainVerifies(t *testing.T) {
	dir, root, inter := onDisk(t)
	if !inter.Root().Equal(root.Cert) || len(inter.Chain) != 0 {
		t.Fatalf("loaded intermediate: root %q, chain %d", inter.Root().Subject.CommonName, len(inter.Chain))
	}
	leaf := must[*pki.Cert](t)(inter.IssueServer(pki.Options{CommonName: "srv", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}))
	if err := inter.Verify(leaf, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
	if err := inter.Verify(leaf, x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("a server certificate verified for clientAuth")
	}
	// The cert file is leaf then intermediate; the root alone is the trust anchor.
	certs := must[[]*x509.Certificate](t)(pki.ParseCertsPEM(leaf.CertPEM()))
	if len(certs) != 2 || !certs[1].Equal(inter.Cert) {
		t.Fatalf("cert file holds %d certificates", len(certs))
	}
	crt, key := filepath.Join(dir, "srv.crt"), filepath.Join(dir, "srv.key")
	if err := leaf.WriteFiles(crt, key); err != nil {
		t.Fatal(err)
	}
	m := must[*ssl.Material](t)(ssl.LoadMaterial(crt, key, filepath.Join(dir, "root", pki.CACertFile)))
	if errs := m.Check(time.Now(), x509.ExtKeyUsageServerAuth); len(errs) > 0 {
		t.Fatal(errs)
	}
	// A second-level intermediate keeps the whole chain.
	sub := must[*pki.Cert](t)(inter.NewIntermediate(pki.Options{CommonName: "Sub CA"}))
	if err := sub.WriteCAFiles(filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	sub = must[*pki.Cert](t)(pki.LoadCA(filepath.Join(dir, "sub")))
	if len(sub.Chain) != 1 || !sub.Chain[0].Equal(inter.Cert) || !sub.Root().Equal(root.Cert) {
		t.Fatalf("sub CA chain %d, root %q", len(sub.Chain), sub.Root().Subject.CommonName)
	}
	deep := must[*pki.Cert](t)(sub.IssueClient(pki.Options{CommonName: "deep"}))
	if len(deep.Chain) != 2 {
		t.Fatalf("leaf under sub CA has %d intermediates, want 2", len(deep.Chain))
	}
	if err := sub.Verify(deep, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
}

func TestClientWithURISAN(t *testing.T) {
	_, root, _ := onDisk(t)
	u := must[*url.URL](t)(url.Parse("spiffe://corp/router/edge-1"))
	c := must[*pki.Cert](t)(root.IssueClient(pki.Options{CommonName: "edge-1", URIs: []*url.URL{u}}))
	if len(c.Cert.URIs) != 1 || c.Cert.URIs[0].String() != u.String() {
		t.Fatalf("URIs %v", c.Cert.URIs)
	}
	if len(c.Chain) != 0 {
		t.Fatalf("a leaf of a root carries %d chain certificates", len(c.Chain))
	}
	if err := root.Verify(c, x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
	if c.Cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("key %v, want ECDSA", c.Cert.PublicKeyAlgorithm)
	}
}

func TestRevokeCRLRoundTrip(t *testing.T) {
	dir, root, inter := onDisk(t)
	caDir := filepath.Join(dir, "inter")
	a := must[*pki.Cert](t)(inter.IssueClient(pki.Options{CommonName: "a"}))
	b := must[*pki.Cert](t)(inter.IssueClient(pki.Options{CommonName: "b"}))
	now := time.Now()

	res := must[*pki.RevokeResult](t)(inter.Revoke(caDir, []*big.Int{a.Cert.SerialNumber}, 1, now, now.Add(pki.DefaultCRLValidity)))
	if res.Number.Int64() != 1 || len(res.Added) != 1 || res.Total != 1 {
		t.Fatalf("first revoke: %+v", res)
	}
	crl := loadCRL(t, res.CRLPath)
	if err := crl.CheckSignatureFrom(inter.Cert); err != nil {
		t.Fatalf("CRL signature against its CA: %v", err)
	}
	if err := crl.CheckSignatureFrom(root.Cert); err == nil {
		t.Fatal("CRL verifies against the root that did not sign it")
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(a.Cert.SerialNumber) != 0 || crl.RevokedCertificateEntries[0].ReasonCode != 1 {
		t.Fatalf("entries %+v", crl.RevokedCertificateEntries)
	}
	if !bytes.Equal(crl.AuthorityKeyId, inter.Cert.SubjectKeyId) {
		t.Fatal("CRL lacks the CA's authority key identifier")
	}
	if got := crl.NextUpdate.Sub(crl.ThisUpdate); got < pki.DefaultCRLValidity-time.Second || got > pki.DefaultCRLValidity+time.Second {
		t.Fatalf("nextUpdate - thisUpdate = %v", got)
	}

	// Again with a known and a new serial: the number goes up, the list grows.
	res = must[*pki.RevokeResult](t)(inter.Revoke(caDir, []*big.Int{a.Cert.SerialNumber, b.Cert.SerialNumber}, 0, now, now.Add(time.Hour)))
	if res.Number.Int64() != 2 || len(res.Added) != 1 || len(res.Already) != 1 || res.Total != 2 {
		t.Fatalf("second revoke: %+v", res)
	}
	// No serials: a re-signed CRL, number 3.
	res = must[*pki.RevokeResult](t)(inter.Revoke(caDir, nil, 0, now, now.Add(time.Hour)))
	crl = loadCRL(t, res.CRLPath)
	if crl.Number.Int64() != 3 || len(crl.RevokedCertificateEntries) != 2 {
		t.Fatalf("refresh: number %v, %d entries", crl.Number, len(crl.RevokedCertificateEntries))
	}
	// The number never goes back: a lost crlnumber file is recovered from ca.crl.
	if err := os.Remove(filepath.Join(caDir, pki.CRLNumberFile)); err != nil {
		t.Fatal(err)
	}
	res = must[*pki.RevokeResult](t)(inter.Revoke(caDir, nil, 0, now, now.Add(time.Hour)))
	if res.Number.Int64() != 4 {
		t.Fatalf("after losing crlnumber: number %v, want 4", res.Number)
	}
	// A corrupt crlnumber stops with the file's name instead of restarting at 1.
	os.WriteFile(filepath.Join(caDir, pki.CRLNumberFile), []byte("garbage\n"), 0o600)
	if _, err := inter.Revoke(caDir, nil, 0, now, now.Add(time.Hour)); err == nil || !strings.Contains(err.Error(), pki.CRLNumberFile) {
		t.Fatalf("corrupt crlnumber: %v", err)
	}
	os.WriteFile(filepath.Join(caDir, pki.CRLNumberFile), []byte("4\n"), 0o600)

	// revoked.txt is the record; the reason survives a rebuild.
	entries := must[[]x509.RevocationListEntry](t)(pki.ReadRevoked(filepath.Join(caDir, pki.RevokedFile)))
	if len(entries) != 2 || entries[0].ReasonCode != 1 || entries[1].ReasonCode != 0 {
		t.Fatalf("revoked.txt: %+v", entries)
	}
	for _, name := range []string{pki.RevokedFile, pki.CRLNumberFile} {
		if st, err := os.Stat(filepath.Join(caDir, name)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", name, st.Mode(), err)
		}
	}

	// The package function and DER input.
	pemCRL := must[[]byte](t)(pki.NewCRL(root, []x509.RevocationListEntry{{SerialNumber: big.NewInt(7), RevocationTime: now}}, big.NewInt(9), now.Add(time.Hour)))
	block, _ := pem.Decode(pemCRL)
	der := must[*x509.RevocationList](t)(pki.LoadCRL(block.Bytes))
	if der.Number.Int64() != 9 || der.CheckSignatureFrom(root.Cert) != nil {
		t.Fatal("DER CRL round trip")
	}
	if _, err := inter.Revoke(caDir, nil, 0, now, now); err == nil {
		t.Fatal("nextUpdate == now accepted")
	}
}

func loadCRL(t *testing.T, path string) *x509.RevocationList {
	t.Helper()
	return must[*x509.RevocationList](t)(pki.LoadCRL(must[[]byte](t)(os.ReadFile(path))))
}

// v1CRL builds a version 1 CRL by hand: a TBSCertList without the version
// field, as `openssl ca -gencrl` writes without crl_extensions.
func v1CRL(t testing.TB, ca *pki.Cert, serial *big.Int) []byte {
	type algorithm struct{ Algorithm asn1.ObjectIdentifier }
	type revoked struct {
		Serial *big.Int
		When   time.Time `asn1:"utc"`
	}
	type tbsCertList struct {
		Signature  algorithm
		Issuer     asn1.RawValue
		ThisUpdate time.Time `asn1:"utc"`
		NextUpdate time.Time `asn1:"utc"`
		Revoked    []revoked
	}
	type certificateList struct {
		TBS       asn1.RawValue
		Algorithm algorithm
		Signature asn1.BitString
	}
	ecdsaWithSHA256 := algorithm{asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}}
	now := time.Now().UTC().Truncate(time.Second)
	tbs := must[[]byte](t)(asn1.Marshal(tbsCertList{
		Signature: ecdsaWithSHA256, Issuer: asn1.RawValue{FullBytes: ca.Cert.RawSubject},
		ThisUpdate: now, NextUpdate: now.Add(24 * time.Hour),
		Revoked: []revoked{{serial, now}},
	}))
	digest := sha256.Sum256(tbs)
	sig := must[[]byte](t)(ca.Key.Sign(rand.Reader, digest[:], crypto.SHA256))
	return must[[]byte](t)(asn1.Marshal(certificateList{asn1.RawValue{FullBytes: tbs}, ecdsaWithSHA256, asn1.BitString{Bytes: sig, BitLength: len(sig) * 8}}))
}

func TestLoadCRLRefusesVersion1WithHowToFix(t *testing.T) {
	_, root, _ := onDisk(t)
	der := v1CRL(t, root, big.NewInt(4096))
	// It is a real v1 CRL: the deprecated parser reads it and its signature checks.
	old, err := x509.ParseCRL(der) //nolint:staticcheck // the only reader of v1 CRLs, to prove the fixture
	if err != nil {
		t.Fatalf("fixture is not a CRL: %v", err)
	}
	if old.TBSCertList.Version != 0 || root.Cert.CheckCRLSignature(old) != nil { //nolint:staticcheck
		t.Fatalf("fixture: version %d, signature %v", old.TBSCertList.Version, root.Cert.CheckCRLSignature(old)) //nolint:staticcheck
	}
	for name, data := range map[string][]byte{"DER": der, "PEM": pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})} {
		_, err := pki.LoadCRL(data)
		if !errors.Is(err, pki.ErrCRLVersion1) {
			t.Fatalf("%s v1 CRL: %v", name, err)
		}
		for _, want := range []string{"version 2", "cert revoke", "crl_extensions", "authorityKeyIdentifier=keyid:always"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s v1 CRL error lacks %q: %v", name, want, err)
			}
		}
	}
}

// An openssl-made v1 CRL, when openssl is installed.
func TestLoadCRLRefusesOpenSSLVersion1(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	dir, _, _ := onDisk(t)
	ca := filepath.Join(dir, "root")
	os.WriteFile(filepath.Join(dir, "index.txt"), nil, 0o600)
	cnf := "[ca]\ndefault_ca = d\n[d]\ndatabase = " + filepath.Join(dir, "index.txt") + "\ndefault_md = sha256\ndefault_crl_days = 7\n"
	os.WriteFile(filepath.Join(dir, "openssl.cnf"), []byte(cnf), 0o600)
	out, err := exec.Command("openssl", "ca", "-gencrl", "-config", filepath.Join(dir, "openssl.cnf"),
		"-cert", filepath.Join(ca, pki.CACertFile), "-keyfile", filepath.Join(ca, pki.CAKeyFile), "-out", filepath.Join(dir, "v1.crl")).CombinedOutput()
	if err != nil {
		t.Skipf("openssl ca -gencrl: %v\n%s", err, out)
	}
	if _, err := pki.LoadCRL(must[[]byte](t)(os.ReadFile(filepath.Join(dir, "v1.crl")))); !errors.Is(err, pki.ErrCRLVersion1) {
		t.Fatalf("openssl v1 CRL: %v", err)
	}
}

func TestLoadCRLRefusesOtherPEM(t *testing.T) {
	_, root, _ := onDisk(t)
	for _, in := range [][]byte{root.CertPEM(), []byte("garbage"), []byte("-----BEGIN X509 CRL-----\nAAAA")} {
		if _, err := pki.LoadCRL(in); err == nil {
			t.Fatalf("%q accepted", in)
		}
	}
	if _, err := pki.LoadCRL(root.CertPEM()); err == nil || !strings.Contains(err.Error(), `"CERTIFICATE"`) {
		t.Fatalf("certificate as CRL: %v", err)
	}
}

func TestSPKIPin(t *testing.T) {
	dir, root, _ := onDisk(t)
	pin := pki.SPKIPin(root.Cert)
	der := must[[]byte](t)(x509.MarshalPKIXPublicKey(root.Key.Public()))
	sum := sha256.Sum256(der)
	if want := "sha256:" + base64.StdEncoding.EncodeToString(sum[:]); pin != want {
		t.Fatalf("pin %s, want %s", pin, want)
	}
	if pin != pki.SPKIPin(root.Cert) || pin != ssl.SPKIPin(root.Cert) {
		t.Fatal("pin unstable or differs from the agents' allow rules")
	}
	reloaded := must[*pki.Cert](t)(pki.LoadCA(filepath.Join(dir, "root")))
	if pki.SPKIPin(reloaded.Cert) != pin {
		t.Fatal("pin changed across write and load")
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		return
	}
	// openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | base64
	pub, err := exec.Command("openssl", "x509", "-in", filepath.Join(dir, "root", pki.CACertFile), "-pubkey", "-noout").Output()
	if err != nil {
		t.Skip("openssl x509:", err)
	}
	cmd := exec.Command("openssl", "pkey", "-pubin", "-outform", "DER")
	cmd.Stdin = bytes.NewReader(pub)
	spki, err := cmd.Output()
	if err != nil {
		t.Skip("openssl pkey:", err)
	}
	osum := sha256.Sum256(spki)
	if got := "sha256:" + base64.StdEncoding.EncodeToString(osum[:]); got != pin {
		t.Fatalf("openssl pin %s, ours %s", got, pin)
	}
}

func TestLoadCARefusesMissingAndWrongFiles(t *testing.T) {
	dir, root, _ := onDisk(t)
	empty := t.TempDir()
	if _, err := pki.LoadCA(empty); err == nil || !strings.Contains(err.Error(), filepath.Join(empty, pki.CACertFile)) || !strings.Contains(err.Error(), "cert ca create") {
		t.Fatalf("empty dir: %v", err)
	}
	onlyCert := t.TempDir()
	os.WriteFile(filepath.Join(onlyCert, pki.CACertFile), root.CertPEM(), 0o644)
	if _, err := pki.LoadCA(onlyCert); err == nil || !strings.Contains(err.Error(), filepath.Join(onlyCert, pki.CAKeyFile)) {
		t.Fatalf("missing key: %v", err)
	}
	// The key of another CA.
	other := must[*pki.Cert](t)(pki.NewRootCA(pki.Options{CommonName: "other"}))
	os.WriteFile(filepath.Join(onlyCert, pki.CAKeyFile), must[[]byte](t)(other.KeyPEM()), 0o600)
	if _, err := pki.LoadCA(onlyCert); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("wrong key: %v", err)
	}
	// A leaf is not a CA.
	leafDir := t.TempDir()
	leaf := must[*pki.Cert](t)(root.IssueClient(pki.Options{CommonName: "leaf"}))
	if err := leaf.WriteFiles(filepath.Join(leafDir, pki.CACertFile), filepath.Join(leafDir, pki.CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.LoadCA(leafDir); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("leaf as CA: %v", err)
	}
	// Garbage key: the error names the file and never echoes its bytes.
	garbage := t.TempDir()
	os.WriteFile(filepath.Join(garbage, pki.CACertFile), root.CertPEM(), 0o644)
	os.WriteFile(filepath.Join(garbage, pki.CAKeyFile), []byte("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"), 0o600)
	if _, err := pki.LoadCA(garbage); err == nil || !strings.Contains(err.Error(), pki.CAKeyFile) || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatalf("garbage key: %v", err)
	}
	// A chain file that does not start with ca.crt.
	os.WriteFile(filepath.Join(dir, "root", pki.CAChainFile), other.CertPEM(), 0o644)
	if _, err := pki.LoadCA(filepath.Join(dir, "root")); err == nil || !strings.Contains(err.Error(), pki.CAChainFile) {
		t.Fatalf("bad chain: %v", err)
	}
}

func TestWriteCAFilesRefusesOverwriteAndKeepsKeysPrivate(t *testing.T) {
	dir, root, inter := onDisk(t)
	for _, sub := range []string{"root", "inter"} {
		for _, name := range []string{pki.CAKeyFile} {
			st := must[os.FileInfo](t)(os.Stat(filepath.Join(dir, sub, name)))
			if st.Mode().Perm() != 0o600 {
				t.Fatalf("%s/%s mode %v", sub, name, st.Mode().Perm())
			}
		}
		if st := must[os.FileInfo](t)(os.Stat(filepath.Join(dir, sub))); st.Mode().Perm() != 0o700 {
			t.Fatalf("%s mode %v", sub, st.Mode().Perm())
		}
	}
	before := must[[]byte](t)(os.ReadFile(filepath.Join(dir, "root", pki.CAKeyFile)))
	fresh := must[*pki.Cert](t)(pki.NewRootCA(pki.Options{CommonName: "fresh"}))
	if err := fresh.WriteCAFiles(filepath.Join(dir, "root")); err == nil || !strings.Contains(err.Error(), "never overwritten") {
		t.Fatalf("overwrite: %v", err)
	}
	if err := root.WriteCAFiles(filepath.Join(dir, "inter")); err == nil {
		t.Fatal("overwrote the intermediate")
	}
	if !bytes.Equal(before, must[[]byte](t)(os.ReadFile(filepath.Join(dir, "root", pki.CAKeyFile)))) {
		t.Fatal("key changed")
	}
	// Only the key left behind (a half-deleted CA) still blocks.
	half := t.TempDir()
	os.WriteFile(filepath.Join(half, pki.CAKeyFile), []byte("x"), 0o600)
	if err := fresh.WriteCAFiles(half); err == nil {
		t.Fatal("wrote beside a stray key")
	}
	// Leaves: WriteFiles refuses an existing key, and keys are 0600.
	leaf := must[*pki.Cert](t)(inter.IssueServer(pki.Options{CommonName: "s", DNSNames: []string{"s"}}))
	crt, key := filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
	if err := leaf.WriteFiles(crt, key); err != nil {
		t.Fatal(err)
	}
	if st := must[os.FileInfo](t)(os.Stat(key)); st.Mode().Perm() != 0o600 {
		t.Fatalf("leaf key mode %v", st.Mode().Perm())
	}
	if err := leaf.WriteFiles(crt, key); err == nil {
		t.Fatal("leaf key overwritten")
	}
}

func TestParseSerial(t *testing.T) {
	big1 := must[*big.Int](t)(func() (*big.Int, error) {
		n, _ := new(big.Int).SetString("0a1b2c", 16)
		return n, nil
	}())
	for _, c := range []struct {
		in   string
		want *big.Int
		err  string
	}{
		{"0A:1B:2C", big1, ""},
		{"0a1b2c", big1, ""},
		{"0x0A1B2C", big1, ""},
		{"serial=0A1B2C", big1, ""},
		{"dec:662316", big1, ""},
		{" 0A:1B:2C ", big1, ""},
		{"10:00", big.NewInt(4096), ""},
		{"0x1000", big.NewInt(4096), ""},
		{"dec:4096", big.NewInt(4096), ""},
		{"1000", nil, "ambiguous"},
		{"zz", nil, "not a number"},
		{"0xzz", nil, "not hexadecimal"},
		{"dec:1a", nil, "not decimal"},
		{"dec:-5", nil, "not decimal"},
		{"", nil, "empty"},
		{"0x", nil, "empty"},
	} {
		got, err := pki.ParseSerial(c.in)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("ParseSerial(%q) error %v, want %q", c.in, err, c.err)
		case c.err == "" && (err != nil || got.Cmp(c.want) != 0):
			t.Errorf("ParseSerial(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	// What inspect prints reads back, for a serial the size pki makes.
	leaf := must[*pki.Cert](t)(pki.NewRootCA(pki.Options{CommonName: "x"}))
	s := pki.FormatSerial(leaf.Cert.SerialNumber)
	if got, err := pki.ParseSerial(s); err != nil || got.Cmp(leaf.Cert.SerialNumber) != 0 {
		t.Fatalf("round trip of %s: %v %v", s, got, err)
	}
	if s != ssl.FormatSerial(leaf.Cert.SerialNumber) {
		t.Fatal("pki and ssl print serials differently")
	}
}

func TestReasons(t *testing.T) {
	if c, err := pki.ParseReason("keycompromise"); err != nil || c != 1 {
		t.Fatalf("keycompromise: %d %v", c, err)
	}
	if _, err := pki.ParseReason("certificateHold"); err == nil || !strings.Contains(err.Error(), "keyCompromise") {
		t.Fatalf("certificateHold: %v", err)
	}
	for _, n := range pki.ReasonNames() {
		c := must[int](t)(pki.ParseReason(n))
		if pki.ReasonName(c) != n {
			t.Fatalf("%s -> %d -> %s", n, c, pki.ReasonName(c))
		}
	}
}

func FuzzLoadCRL(f *testing.F) {
	ca, err := pki.NewRootCA(pki.Options{CommonName: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	crl, err := pki.NewCRL(ca, []x509.RevocationListEntry{{SerialNumber: big.NewInt(1), RevocationTime: time.Now(), ReasonCode: 1}}, big.NewInt(1), time.Now().Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(crl)
	block, _ := pem.Decode(crl)
	f.Add(block.Bytes)
	f.Add(v1CRL(f, ca, big.NewInt(5)))
	f.Add([]byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		list, err := pki.LoadCRL(b)
		if err == nil && list == nil {
			t.Fatal("nil CRL without an error")
		}
	})
}

func FuzzParseCertsPEM(f *testing.F) {
	ca, err := pki.NewRootCA(pki.Options{CommonName: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	leaf, err := ca.IssueServer(pki.Options{CommonName: "s", DNSNames: []string{"s"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ca.CertPEM())
	f.Add(append(leaf.CertPEM(), ca.CertPEM()...))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := pki.ParseCertsPEM(b)
		if err == nil && len(certs) == 0 {
			t.Fatal("no certificates without an error")
		}
	})
}

func FuzzParseSerial(f *testing.F) {
	for _, s := range []string{"0A:1B", "0x10", "dec:12", "1000", "serial=FF", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := pki.ParseSerial(s)
		if err == nil && n.Sign() < 0 {
			t.Fatalf("%q parsed as negative %v", s, n)
		}
	})
}
