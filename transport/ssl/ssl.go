// Package ssl builds the TLS configuration of both agents, performs the
// handshake under a deadline and names the peer's identity. Every failure is
// translated into words an operator can act on.
package ssl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// ALPN is the application protocol both agents insist on, so that a TLS
// peer speaking something else (HTTPS, another tunnel) is refused during the
// handshake with a clear reason instead of failing later on garbage.
const ALPN = "tunnel/1"

// Material is what one agent holds: its own certificate chain and key, and the
// trust anchors for its peer. It is immutable once built.
type Material struct {
	Cert tls.Certificate
	Leaf *x509.Certificate
	CAs  *x509.CertPool
	// CACerts are the certificates of the CA bundle, for expiry warnings.
	CACerts []*x509.Certificate
	// CAFile and CertFile are kept for messages.
	CertFile, CAFile string
}

// LoadMaterial reads and checks a certificate chain, its private key and a CA bundle.
func LoadMaterial(certFile, keyFile, caFile string) (*Material, error) {
	// Both halves are read whatever the other gave, so one run names
	// every broken file.
	pair, pairErr := loadPair(certFile, keyFile)
	cas, caErr := loadCAs(caFile)
	if err := errors.Join(pairErr, caErr); err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return &Material{Cert: pair, Leaf: pair.Leaf, CAs: pool, CACerts: cas, CertFile: certFile, CAFile: caFile}, nil
}

func loadPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Never echo key bytes: the standard errors don't, and we add only file names.
		return tls.Certificate{}, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, withoutTLSPrefix{err})
	}
	return pair, nil
}

// withoutTLSPrefix drops crypto/tls's "tls: " from its message: callers
// already say the error is in the TLS files, and "tls: ... tls: private
// key does not match" reads as two errors.
type withoutTLSPrefix struct{ err error }

func (e withoutTLSPrefix) Error() string { return strings.TrimPrefix(e.err.Error(), "tls: ") }
func (e withoutTLSPrefix) Unwrap() error { return e.err }

func loadCAs(caFile string) ([]*x509.Certificate, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA bundle: %w", err)
	}
	cas, err := parseCAs(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA bundle %s: %w", caFile, err)
	}
	if len(cas) == 0 {
		return nil, fmt.Errorf("CA bundle %s: no CERTIFICATE blocks found (want PEM)", caFile)
	}
	return cas, nil
}

// CheckPair checks our certificate on its own (its dates, CA flag and
// usage, as Check does without a CA bundle to verify against), for
// validate when the rest of the TLS files could not be loaded: every
// problem in one run. Nil when the pair itself does not load (that error
// is LoadMaterial's).
func CheckPair(certFile, keyFile string, now time.Time, usage x509.ExtKeyUsage) []error {
	pair, err := loadPair(certFile, keyFile)
	if err != nil {
		return nil
	}
	m := &Material{Cert: pair, Leaf: pair.Leaf, CAs: x509.NewCertPool(), CertFile: certFile}
	return m.Check(now, usage)
}

func parseCAs(data []byte) ([]*x509.Certificate, error) {
	var cas []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return cas, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(cas)+1, err)
		}
		cas = append(cas, c)
	}
}

// Check verifies offline what a handshake would of our own certificate: it
// is valid now and issued for usage (x509.ExtKeyUsageServerAuth or
// ClientAuth). tls.ca is the bundle the peer's certificate must chain to, so
// ours not chaining to it is no problem (the peer may trust another CA); when
// it does chain, the chain's dates and usages are checked too.
// It returns every problem found.
func (m *Material) Check(now time.Time, usage x509.ExtKeyUsage) []error {
	var errs []error
	leaf := m.Leaf
	if now.Before(leaf.NotBefore) {
		errs = append(errs, &NotYetValidError{File: m.CertFile, Name: leaf.Subject.CommonName, NotBefore: leaf.NotBefore})
	}
	if now.After(leaf.NotAfter) {
		errs = append(errs, fmt.Errorf("certificate %s (%s) expired on %s", m.CertFile, leaf.Subject.CommonName, leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	if leaf.IsCA {
		errs = append(errs, fmt.Errorf("certificate %s (%s) is a CA certificate (basicConstraints CA:TRUE): peers refuse it; issue a leaf certificate", m.CertFile, leaf.Subject.CommonName))
	}
	inter := x509.NewCertPool()
	for _, der := range m.Cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: m.CAs, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	var (
		invalid x509.CertificateInvalidError
		unknown x509.UnknownAuthorityError
	)
	switch {
	case err == nil:
	case errors.As(err, &unknown):
		// Ours comes from a CA that only the peer needs to trust: check its
		// usage alone.
		if !hasUsage(leaf, usage) {
			errs = append(errs, fmt.Errorf("our certificate %s (%s) is not issued for this use: %s", m.CertFile, leaf.Subject.CommonName, usageHint))
		}
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		if len(errs) == 0 { // the leaf's own dates are reported above; this is a CA's
			errs = append(errs, fmt.Errorf("our certificate %s (%s): a CA of its chain is expired or not yet valid", m.CertFile, leaf.Subject.CommonName))
		}
	case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		errs = append(errs, fmt.Errorf("our certificate %s (%s) is not issued for this use: %s", m.CertFile, leaf.Subject.CommonName, usageHint))
	default:
		errs = append(errs, fmt.Errorf("our certificate %s (%s) does not verify against CA bundle %s: %w", m.CertFile, leaf.Subject.CommonName, m.CAFile, err))
	}
	return errs
}

const usageHint = "a server needs serverAuth, a client clientAuth"

// NotYetValidError is our certificate before its NotBefore: often a fresh
// one from a CA whose clock runs ahead, which will do in a moment.
type NotYetValidError struct {
	File, Name string
	NotBefore  time.Time
}

func (e *NotYetValidError) Error() string {
	return fmt.Sprintf("certificate %s (%s) is not valid until %s", e.File, e.Name, e.NotBefore.UTC().Format(time.RFC3339))
}

// OwnCertError lists what makes our own certificate fail every handshake
// (Material.Check): the agent does not start with it, nor reload to it.
type OwnCertError struct{ Problems []error }

func (e *OwnCertError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	// One line: it goes into a log line's error field.
	return strings.Join(msgs, "; ")
}

func (e *OwnCertError) Unwrap() []error { return e.Problems }

// Pending reports whether the only problem is a NotBefore still ahead, so
// that the same files are worth trying again.
func (e *OwnCertError) Pending() bool {
	for _, p := range e.Problems {
		var nyv *NotYetValidError
		if !errors.As(p, &nyv) {
			return false
		}
	}
	return true
}

// hasUsage reports whether the leaf's extended key usage allows usage (no
// extended key usage at all allows every use, as crypto/x509 treats it).
func hasUsage(leaf *x509.Certificate, usage x509.ExtKeyUsage) bool {
	if len(leaf.ExtKeyUsage) == 0 && len(leaf.UnknownExtKeyUsage) == 0 {
		return true
	}
	return slices.Contains(leaf.ExtKeyUsage, usage) || slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny)
}

// ChainsToBundle reports whether our own certificate chains to the CA
// bundle. Only informational: tls.ca is for the peer's certificate, and the
// two sides may use different CAs.
func (m *Material) ChainsToBundle(now time.Time) bool {
	inter := x509.NewCertPool()
	for _, der := range m.Cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	_, err := m.Leaf.Verify(x509.VerifyOptions{Roots: m.CAs, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	var unknown x509.UnknownAuthorityError
	return !errors.As(err, &unknown)
}

// AEAD-only suites for TLS 1.2; TLS 1.3 suites are not configurable and all AEAD.
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

func base(m *Material) *tls.Config {
	return &tls.Config{
		// Set explicitly: a GODEBUG setting could otherwise lower the default.
		MinVersion:   tls.VersionTLS12,
		MaxVersion:   tls.VersionTLS13,
		CipherSuites: tls12Suites,
		Certificates: []tls.Certificate{m.Cert},
		NextProtos:   []string{ALPN},
	}
}

// ServerConfig requires and verifies a client certificate against m.CAs only
// (never the system roots: the pool is never nil here).
func ServerConfig(m *Material) *tls.Config {
	c := base(m)
	c.ClientAuth = tls.RequireAndVerifyClientCert
	c.ClientCAs = m.CAs
	return c
}

// ClientConfig verifies the server's certificate against m.CAs and serverName.
func ClientConfig(m *Material, serverName string) *tls.Config {
	c := base(m)
	c.RootCAs = m.CAs
	c.ServerName = serverName
	// Always present our certificate. Go's default sends none when its
	// issuer is not among the CAs the server asks for, and the server could
	// then only say "no certificate" instead of naming the unknown CA.
	cert := m.Cert
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return c
}

// Handshake runs the TLS handshake on conn within timeout (or until ctx ends),
// then checks the negotiated protocol. The returned error is already in
// operator words (see Describe).
func Handshake(ctx context.Context, conn *tls.Conn, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := conn.HandshakeContext(ctx); err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return fmt.Errorf("tls handshake: peer did not complete it within %s", timeout)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("tls handshake: %w", ctx.Err())
		}
		return &HandshakeError{Err: err}
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != ALPN {
		return &HandshakeError{Err: fmt.Errorf("peer does not speak %s (ALPN %q)", ALPN, p)}
	}
	return nil
}

// HandshakeError is a TLS failure; Error gives the operator's wording, Unwrap the original.
type HandshakeError struct{ Err error }

func (e *HandshakeError) Error() string { return "tls handshake: " + Describe(e.Err) }
func (e *HandshakeError) Unwrap() error { return e.Err }

// Describe turns a TLS or X.509 error into a sentence an operator can act on.
// Errors it does not recognise keep their own text.
func Describe(err error) string {
	var (
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
		alert    tls.AlertError
		record   tls.RecordHeaderError
		verify   *tls.CertificateVerificationError
		policy   *PolicyError
	)
	switch {
	case errors.As(err, &policy):
		return "we refused the peer: " + policy.Msg
	case errors.As(err, &unknown):
		issuer := "?"
		if unknown.Cert != nil {
			issuer = unknown.Cert.Issuer.String()
		}
		return fmt.Sprintf("we refused the peer's certificate: signed by an unknown CA (issuer %q); check that tls.ca holds the CA that issued it", issuer)
	case errors.As(err, &invalid):
		c := invalid.Cert
		switch invalid.Reason {
		case x509.Expired:
			return fmt.Sprintf("we refused the peer's certificate %q: expired or not yet valid (valid from %s to %s)", c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		case x509.IncompatibleUsage:
			return fmt.Sprintf("we refused the peer's certificate %q: not issued for this use (a server needs serverAuth, a client clientAuth)", c.Subject.CommonName)
		}
		return "we refused the peer's certificate: " + invalid.Error()
	case errors.As(err, &hostname):
		names := slices.Clone(hostname.Certificate.DNSNames)
		for _, ip := range hostname.Certificate.IPAddresses {
			names = append(names, ip.String())
		}
		return fmt.Sprintf("we refused the server's certificate: name mismatch: wanted %q, certificate has %v (set tls.server_name or reissue the certificate)", hostname.Host, names)
	case errors.As(err, &alert):
		return "the peer refused us: " + describeAlert(uint8(alert))
	case errors.As(err, &record):
		return "the peer is not speaking TLS (is this the tunnel's port?)"
	case errors.As(err, &verify):
		return "we refused the peer's certificate: " + verify.Err.Error()
	}
	msg := err.Error()
	// crypto/tls has no type for this: our own ClientHello came back, so the
	// port echoes what it gets (a plain TCP echo, or a loop back to us).
	if strings.Contains(msg, "unexpected handshake message of type *tls.clientHelloMsg") {
		return "the peer is not a tunnel server: it sent our own TLS hello back (a plain TCP echo or a loop; is this the tunnel's port?)"
	}
	// Alerts received over TCP are an unexported type: match their text.
	if i := strings.Index(msg, "remote error: tls: "); i >= 0 {
		text := msg[i+len("remote error: tls: "):]
		for code, name := range alertNames {
			if text == name {
				return "the peer refused us: " + describeAlert(code)
			}
		}
		return "the peer refused us: " + text
	}
	switch {
	case strings.Contains(msg, "client didn't provide a certificate"):
		return "we refused the client: it sent no certificate (configure tls.cert and tls.key on the client)"
	case strings.Contains(msg, "unsupported versions"), strings.Contains(msg, "protocol version not supported"):
		return "we refused the peer: it offered only TLS versions older than 1.2"
	case strings.Contains(msg, "no application protocol"), strings.Contains(msg, "unsupported application protocols"):
		return "the peer does not speak " + ALPN
	case errors.Is(err, net.ErrClosed), strings.Contains(msg, "EOF"), strings.Contains(msg, "connection reset"):
		return "the peer closed the connection during the handshake (" + msg + ")"
	}
	return msg
}

// alertNames are crypto/tls's texts for the alerts describeAlert knows.
var alertNames = map[uint8]string{
	40: "handshake failure", 42: "bad certificate", 43: "unsupported certificate",
	44: "revoked certificate", 45: "expired certificate", 46: "unknown certificate",
	48: "unknown certificate authority", 70: "protocol version not supported",
	116: "certificate required", 120: "no application protocol",
}

func describeAlert(a uint8) string {
	switch a {
	case 42, 43: // bad_certificate, unsupported_certificate
		return "it rejected our certificate (bad certificate)"
	case 44:
		return "it says our certificate is revoked"
	case 45:
		return "it says our certificate has expired"
	case 46:
		// Go sends this for every verification failure, unknown CA included.
		return "it rejected our certificate (its log says why: often a CA it does not trust)"
	case 48:
		return "it does not trust the CA that issued our certificate (unknown CA)"
	case 70:
		return "it refused our TLS version (protocol version)"
	case 116:
		return "it requires a client certificate and we sent none"
	case 120:
		return "it does not speak " + ALPN + " (no application protocol)"
	case 40:
		return "handshake failure (no common cipher suite or parameters)"
	}
	return "tls alert: " + tls.AlertError(a).Error()
}
