package ssl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type pkiSet struct {
	ca, other       *pki.Cert
	dir             string
	caFile, otherCA string
}

func newPKI(t *testing.T) *pkiSet {
	t.Helper()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "test root"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewRootCA(pki.Options{CommonName: "some other root"})
	if err != nil {
		t.Fatal(err)
	}
	p := &pkiSet{ca: ca, other: other, dir: t.TempDir()}
	p.caFile = p.writeCA(t, "ca.crt", ca)
	p.otherCA = p.writeCA(t, "other.crt", other)
	return p
}

func (p *pkiSet) writeCA(t *testing.T, name string, c *pki.Cert) string {
	path := filepath.Join(p.dir, name)
	if err := writeFile(path, c.CertPEM()); err != nil {
		t.Fatal(err)
	}
	return path
}

// material writes c and loads it with the given CA bundle.
func (p *pkiSet) material(t *testing.T, name string, c *pki.Cert, caFile string) *Material {
	t.Helper()
	certFile, keyFile := filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	if err := c.WriteFiles(certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	m, err := LoadMaterial(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func issueServer(t *testing.T, ca *pki.Cert, o pki.Options) *pki.Cert {
	t.Helper()
	if o.CommonName == "" {
		o.CommonName = "tunnel-server"
	}
	if o.DNSNames == nil {
		o.DNSNames = []string{"localhost"}
	}
	c, err := ca.IssueServer(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func issueClient(t *testing.T, ca *pki.Cert, o pki.Options) *pki.Cert {
	t.Helper()
	if o.CommonName == "" {
		o.CommonName = "client-a"
	}
	c, err := ca.IssueClient(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// handshake runs both sides over real loopback TCP and returns each side's error.
func handshake(t *testing.T, server, client *tls.Config) (srvErr, cliErr error, srvConn, cliConn *tls.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := ln.Accept()
		if err != nil {
			srvErr = err
			return
		}
		srvConn = tls.Server(raw, server)
		srvErr = Handshake(context.Background(), srvConn, 5*time.Second)
		if srvErr == nil {
			// In TLS 1.3 the server's verdict on the client certificate
			// reaches the client on its first read: give it one.
			_, _ = srvConn.Write([]byte{1})
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cliConn = tls.Client(raw, client)
	cliErr = Handshake(context.Background(), cliConn, 5*time.Second)
	if cliErr == nil {
		cliConn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := cliConn.Read(make([]byte, 1)); err != nil {
			cliErr = &HandshakeError{Err: err}
		}
	}
	<-done
	t.Cleanup(func() {
		cliConn.Close()
		if srvConn != nil {
			srvConn.Close()
		}
	})
	return srvErr, cliErr, srvConn, cliConn
}

func TestHandshakeMatrix(t *testing.T) {
	p := newPKI(t)
	inter, err := p.ca.NewIntermediate(pki.Options{CommonName: "test intermediate"})
	if err != nil {
		t.Fatal(err)
	}
	srv := p.material(t, "server", issueServer(t, p.ca, pki.Options{}), p.caFile)
	cli := p.material(t, "client", issueClient(t, p.ca, pki.Options{}), p.caFile)

	expired := p.material(t, "expired", issueClient(t, p.ca, pki.Options{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour}), p.caFile)
	otherClient := p.material(t, "other-client", issueClient(t, p.other, pki.Options{}), p.caFile)
	viaInterSrv := p.material(t, "inter-server", issueServer(t, inter, pki.Options{}), p.caFile)
	viaInterCli := p.material(t, "inter-client", issueClient(t, inter, pki.Options{}), p.caFile)
	trustsOther := p.material(t, "trusts-other", issueClient(t, p.ca, pki.Options{}), p.otherCA)
	serverAsClient := p.material(t, "server-as-client", issueServer(t, p.ca, pki.Options{CommonName: "sneaky"}), p.caFile)

	noCert := ClientConfig(cli, "localhost")
	noCert.Certificates = nil
	noCert.GetClientCertificate = nil
	tls11 := ClientConfig(cli, "localhost")
	tls11.MinVersion, tls11.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	noALPN := ClientConfig(cli, "localhost")
	noALPN.NextProtos = []string{"h2"}

	for _, tc := range []struct {
		name           string
		server, client *tls.Config
		srvWant        string // "" means success
		cliWant        string
	}{
		{"ok", ServerConfig(srv), ClientConfig(cli, "localhost"), "", ""},
		{"chains through an intermediate both ways", ServerConfig(viaInterSrv), ClientConfig(viaInterCli, "localhost"), "", ""},
		{"client cert from another CA", ServerConfig(srv), ClientConfig(otherClient, "localhost"), "unknown CA", "does not trust the CA"},
		{"client trusts another CA", ServerConfig(srv), ClientConfig(trustsOther, "localhost"), "", "unknown CA"},
		{"expired client cert", ServerConfig(srv), ClientConfig(expired, "localhost"), "expired or not yet valid", "expired"},
		{"name mismatch", ServerConfig(srv), ClientConfig(cli, "tunnel.example.net"), "", `name mismatch: wanted "tunnel.example.net"`},
		{"client sent no certificate", ServerConfig(srv), noCert, "sent no certificate", "requires a client certificate"},
		{"TLS 1.1 offered", ServerConfig(srv), tls11, "older than 1.2", ""},
		{"server cert used as client cert", ServerConfig(srv), ClientConfig(serverAsClient, "localhost"), "not issued for this use", ""},
		{"other application protocol", ServerConfig(srv), noALPN, "does not speak tunnel/1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvErr, cliErr, _, _ := handshake(t, tc.server, tc.client)
			check := func(side string, err error, want string) {
				if want == "" && tc.srvWant == "" && tc.cliWant == "" {
					if err != nil {
						t.Errorf("%s: unexpected error: %v", side, err)
					}
					return
				}
				if want == "" {
					return // this side's wording is not what the case is about
				}
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("%s error = %v; want it to contain %q", side, err, want)
				}
			}
			check("server", srvErr, tc.srvWant)
			check("client", cliErr, tc.cliWant)
			if tc.srvWant != "" || tc.cliWant != "" {
				if srvErr == nil && cliErr == nil {
					t.Error("both sides succeeded")
				}
			}
		})
	}
}

func TestPeerIdentity(t *testing.T) {
	p := newPKI(t)
	srv := p.material(t, "server", issueServer(t, p.ca, pki.Options{}), p.caFile)
	cli := p.material(t, "client", issueClient(t, p.ca, pki.Options{CommonName: "client-a", DNSNames: []string{"edge-1.example"}}), p.caFile)
	srvErr, cliErr, srvConn, cliConn := handshake(t, ServerConfig(srv), ClientConfig(cli, "localhost"))
	if srvErr != nil || cliErr != nil {
		t.Fatal(srvErr, cliErr)
	}
	id, err := PeerIdentity(srvConn.ConnectionState())
	if err != nil {
		t.Fatal(err)
	}
	if id.Name() != "client-a" || !id.Is("edge-1.example") || id.Is("client-b") {
		t.Fatalf("identity %q", id.Name())
	}
	if !id.Allowed([]string{"x", "client-a"}) || id.Allowed(nil) || id.Allowed([]string{""}) {
		t.Fatal("allow rules wrong")
	}
	sid, err := PeerIdentity(cliConn.ConnectionState())
	if err != nil || sid.Name() != "tunnel-server" {
		t.Fatalf("server identity %q, %v", sid.Name(), err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	p := newPKI(t)
	srv := p.material(t, "server", issueServer(t, p.ca, pki.Options{}), p.caFile)
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	start := time.Now()
	err := Handshake(context.Background(), tls.Server(a, ServerConfig(srv)), 200*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not complete it within 200ms") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("handshake deadline not applied")
	}
}

func TestLoadMaterialErrors(t *testing.T) {
	p := newPKI(t)
	good := p.material(t, "good", issueServer(t, p.ca, pki.Options{}), p.caFile)
	otherKey := filepath.Join(p.dir, "other.key")
	o := issueServer(t, p.ca, pki.Options{})
	if err := o.WriteFiles(filepath.Join(p.dir, "o.crt"), otherKey); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(p.dir, "not.pem")
	if err := writeFile(notPEM, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cert, key, ca, want string
	}{
		{"missing cert", filepath.Join(p.dir, "nope.crt"), otherKey, p.caFile, "read certificate"},
		{"key of another cert", good.CertFile, otherKey, p.caFile, "private key does not match"},
		{"CA not PEM", good.CertFile, filepath.Join(p.dir, "good.key"), notPEM, "no CERTIFICATE blocks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadMaterial(tc.cert, tc.key, tc.ca)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal("error leaks key material")
			}
			// crypto/tls's own "tls: " prefix is dropped: the agent says
			// "tls:" once, in front of the file names.
			if strings.Contains(err.Error(), ": tls: ") {
				t.Fatalf("err = %v: crypto/tls's prefix kept", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	p := newPKI(t)
	good := p.material(t, "good", issueServer(t, p.ca, pki.Options{}), p.caFile)
	if errs := good.Check(time.Now(), x509.ExtKeyUsageServerAuth); len(errs) != 0 {
		t.Fatal(errs)
	}
	if errs := good.Check(time.Now(), x509.ExtKeyUsageClientAuth); len(errs) != 1 {
		t.Fatalf("server cert passed as client cert: %v", errs)
	}
	expired := p.material(t, "expired", issueServer(t, p.ca, pki.Options{NotBefore: time.Now().Add(-48 * time.Hour), Validity: time.Hour}), p.caFile)
	errs := expired.Check(time.Now(), x509.ExtKeyUsageServerAuth)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "expired on") {
		t.Fatalf("errs = %v", errs)
	}
	// tls.ca is for the peer: our certificate from another CA is a valid
	// setup (each side trusts the other's CA), but its usage still counts.
	foreign := p.material(t, "foreign", issueServer(t, p.other, pki.Options{}), p.caFile)
	if errs = foreign.Check(time.Now(), x509.ExtKeyUsageServerAuth); len(errs) != 0 {
		t.Fatalf("certificate from another CA refused: %v", errs)
	}
	if foreign.ChainsToBundle(time.Now()) || !good.ChainsToBundle(time.Now()) {
		t.Error("ChainsToBundle wrong")
	}
	errs = foreign.Check(time.Now(), x509.ExtKeyUsageClientAuth)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "not issued for this use") || strings.Contains(errs[0].Error(), "peer") {
		t.Fatalf("server cert from another CA passed as client cert: %v", errs)
	}
	for _, e := range append(good.Check(time.Now(), x509.ExtKeyUsageClientAuth), expired.Check(time.Now(), x509.ExtKeyUsageServerAuth)...) {
		if strings.Contains(e.Error(), "peer") {
			t.Errorf("our own certificate called the peer's: %v", e)
		}
	}
}

// A client pointed at a plain TCP echo gets its own ClientHello back:
// crypto/tls calls that an unexpected message, we call it what it is.
func TestHandshakeWithEchoServer(t *testing.T) {
	p := newPKI(t)
	cli := p.material(t, "client", issueClient(t, p.ca, pki.Options{}), p.caFile)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := ln.Accept()
		if err != nil {
			return
		}
		defer raw.Close()
		_, _ = io.Copy(raw, raw)
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	err = Handshake(context.Background(), tls.Client(raw, ClientConfig(cli, "localhost")), 5*time.Second)
	raw.Close()
	<-done
	if err == nil || !strings.Contains(err.Error(), "not a tunnel server") || strings.Contains(err.Error(), "clientHelloMsg") {
		t.Fatalf("err = %v", err)
	}
	if errors.Unwrap(err) == nil || !strings.Contains(errors.Unwrap(err).Error(), "clientHelloMsg") {
		t.Errorf("the original error is not kept: %#v", errors.Unwrap(err))
	}
	t.Log(err)
}

// CheckUsable refuses what would fail every handshake of ours, names the
// file, and tells a certificate that is only early from a broken one.
func TestCheckUsable(t *testing.T) {
	p := newPKI(t)
	policy := func(name string, c *pki.Cert) *Policy {
		return &Policy{Material: p.material(t, name, c, p.caFile)}
	}
	now := time.Now()
	if err := policy("good", issueServer(t, p.ca, pki.Options{})).CheckUsable(now, x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cert    *pki.Cert
		usage   x509.ExtKeyUsage
		want    string
		pending bool
	}{
		{"expired", issueServer(t, p.ca, pki.Options{NotBefore: now.Add(-48 * time.Hour), Validity: time.Hour}), x509.ExtKeyUsageServerAuth, "expired on", false},
		{"client-as-server", issueClient(t, p.ca, pki.Options{}), x509.ExtKeyUsageServerAuth, "not issued for this use", false},
		{"early", issueServer(t, p.ca, pki.Options{NotBefore: now.Add(time.Hour)}), x509.ExtKeyUsageServerAuth, "is not valid until", true},
	} {
		err := policy(tc.name, tc.cert).CheckUsable(now, tc.usage)
		var own *OwnCertError
		if !errors.As(err, &own) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), filepath.Join(p.dir, tc.name+".crt")) {
			t.Errorf("%s: err = %v", tc.name, err)
			continue
		}
		if own.Pending() != tc.pending {
			t.Errorf("%s: Pending() = %v", tc.name, own.Pending())
		}
	}
}
