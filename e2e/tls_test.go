package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// startPlainServer starts a server with one echo service for client-a and
// returns it with its PKI. It is stopped gracefully on cleanup.
func startPlainServer(t *testing.T, extra string) (*testPKI, *server) {
	t.Helper()
	p := newPKI(t)
	srv := startServer(t, serverHCL(p.serverCert, p.serverKey, p.caFile, extra,
		[]svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}}, nil))
	t.Cleanup(func() { srv.stop(t) })
	return p, srv
}

// stopLater stops a process gracefully on cleanup.
func stopLater(t *testing.T, p *proc) {
	t.Cleanup(func() {
		if p.running() {
			p.stop(t)
		}
	})
}

// Each side refuses a peer certificate signed by a CA it does not trust, and
// both logs say who refused whom and why, in ssl.Describe's words.
func TestWrongCA(t *testing.T) {
	t.Parallel()
	t.Run("client trusts another CA", func(t *testing.T) {
		t.Parallel()
		p, srv := startPlainServer(t, "")
		other := newPKI(t)
		cert, key := p.clientCert(t, "client-a", pki.Options{})
		cli := startClient(t, clientHCL(srv.addr, cert, key, other.caFile, "", nil, nil), 0)
		stopLater(t, cli.proc)
		t.Log(cli.waitLine(t, "cannot reach server; retrying", "we refused the peer's certificate: signed by an unknown CA", "check that tls.ca holds the CA"))
		t.Log(srv.waitLine(t, "client refused", "the peer refused us", "bad certificate"))
	})
	t.Run("server trusts another CA", func(t *testing.T) {
		t.Parallel()
		p := newPKI(t)
		other := newPKI(t)
		srv := startServer(t, serverHCL(p.serverCert, p.serverKey, other.caFile, "",
			[]svc{{name: "echo", target: startEcho(t), allow: []string{"client-a"}}}, nil))
		stopLater(t, srv.proc)
		cert, key := p.clientCert(t, "client-a", pki.Options{})
		cli := startClient(t, clientHCL(srv.addr, cert, key, p.caFile, "", nil, nil), 0)
		stopLater(t, cli.proc)
		t.Log(srv.waitLine(t, "client refused", "we refused the peer's certificate: signed by an unknown CA"))
		t.Log(cli.waitLine(t, "cannot reach server; retrying", "the peer refused us", "unknown CA"))
	})
}

// clientTLS is a tls.Config trusting p's CA, as a client of the server.
func clientTLS(p *testPKI, certs ...tls.Certificate) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{ssl.ALPN}, Certificates: certs, MinVersion: tls.VersionTLS12}
}

// tlsCert turns an issued certificate into a tls.Certificate.
func tlsCert(t *testing.T, c *pki.Cert) tls.Certificate {
	t.Helper()
	keyPEM, err := c.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(c.CertPEM(), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// tlsAttempt dials addr and runs a TLS handshake then one read, returning
// the first error and the local address the server saw.
func tlsAttempt(t *testing.T, addr string, conf *tls.Config) (string, error) {
	t.Helper()
	raw := dial(t, addr, 10*time.Second)
	c := tls.Client(raw, conf)
	defer c.Close()
	if err := c.Handshake(); err != nil {
		return raw.LocalAddr().String(), err
	}
	// In TLS 1.3 a refused client certificate shows on the first read.
	_, err := c.Read(make([]byte, 1))
	return raw.LocalAddr().String(), err
}

func TestClientWithoutCertificate(t *testing.T) {
	t.Parallel()
	p, srv := startPlainServer(t, "")
	local, err := tlsAttempt(t, srv.addr, clientTLS(p))
	if err == nil {
		t.Fatal("a client without a certificate got through")
	}
	t.Logf("client side: %v", err)
	t.Log(srv.waitLine(t, "client refused", "remote="+local, "it sent no certificate"))
}

// The server refuses an expired client certificate and says why; the
// client does not start with one at all (validate's verdict), naming it.
func TestExpiredClientCertificate(t *testing.T) {
	t.Parallel()
	p, srv := startPlainServer(t, "")
	expired := pki.Options{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 24 * time.Hour}
	local, err := tlsAttempt(t, srv.addr, clientTLS(p, tlsCert(t, p.issueClient(t, "client-a", expired))))
	if err == nil {
		t.Fatal("an expired client certificate got through")
	}
	t.Logf("client side: %v", err)
	t.Log(srv.waitLine(t, "client refused", "remote="+local, "we refused the peer's certificate", "client-a", "expired"))
	cert, key := p.clientCert(t, "client-a", expired)
	cli := startProc(t, "tunnel-client", clientBin, "run", "-config", writeConfig(t, "client.hcl", clientHCL(srv.addr, cert, key, p.caFile, "", nil, nil)))
	if code := cli.wait(t); code != 2 {
		t.Errorf("tunnel-client run with an expired certificate: exit %d, want 2", code)
	}
	t.Log(cli.waitLine(t, cert, "expired on"))
}

func TestTLS11Refused(t *testing.T) {
	t.Parallel()
	p, srv := startPlainServer(t, "")
	conf := clientTLS(p, tlsCert(t, p.issueClient(t, "client-a", pki.Options{})))
	conf.MinVersion, conf.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	local, err := tlsAttempt(t, srv.addr, conf)
	if err == nil {
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	t.Logf("client side: %v", err)
	t.Log(srv.waitLine(t, "client refused", "remote="+local, "older than 1.2"))
}
