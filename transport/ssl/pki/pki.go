// Package pki issues the certificates the agents use: a root CA, intermediates,
// server and client leaves. The demo, the tests and the `cert` command share it,
// so what operators make by hand is exactly what the tests exercise.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"time"
)

// Default validity periods.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
)

// Cert is a certificate with its private key and the chain above it
// (intermediates only, not the root).
type Cert struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// Options shape a new certificate. Zero values take sensible defaults.
type Options struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	URIs       []*url.URL
	NotBefore  time.Time     // default: now - 1 minute (clock skew)
	Validity   time.Duration // default: DefaultLeafValidity, or DefaultCAValidity for CAs
}

// NewRootCA makes a self-signed root CA with an ECDSA P-256 key.
func NewRootCA(opts Options) (*Cert, error) {
	if opts.Validity == 0 {
		opts.Validity = DefaultCAValidity
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := template(opts)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	tmpl.SubjectKeyId = keyID(key.Public())
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new root CA certificate: %w", err)
	}
	return &Cert{Cert: cert, Key: key}, nil
}

// NewIntermediate makes a CA signed by ca.
func (ca *Cert) NewIntermediate(opts Options) (*Cert, error) {
	if opts.Validity == 0 {
		opts.Validity = DefaultCAValidity
	}
	return ca.issue(opts, func(t *x509.Certificate) {
		t.IsCA = true
		t.BasicConstraintsValid = true
		t.MaxPathLenZero = false
		t.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	})
}

// IssueServer makes a server leaf certificate for the given names.
func (ca *Cert) IssueServer(opts Options) (*Cert, error) {
	return ca.issue(opts, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
}

// IssueClient makes a client leaf certificate; its identity is the common name.
func (ca *Cert) IssueClient(opts Options) (*Cert, error) {
	return ca.issue(opts, func(t *x509.Certificate) {
		t.KeyUsage = x509.KeyUsageDigitalSignature
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
}

func (ca *Cert) issue(opts Options, shape func(*x509.Certificate)) (*Cert, error) {
	if !ca.Cert.IsCA {
		return nil, fmt.Errorf("issue %q: signer %q is not a CA", opts.CommonName, ca.Cert.Subject.CommonName)
	}
	if opts.Validity == 0 {
		opts.Validity = DefaultLeafValidity
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := template(opts)
	if err != nil {
		return nil, err
	}
	shape(tmpl)
	tmpl.SubjectKeyId = keyID(key.Public())
	tmpl.AuthorityKeyId = ca.Cert.SubjectKeyId
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue %q: %w", opts.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new certificate %q: %w", opts.CommonName, err)
	}
	chain := []*x509.Certificate{}
	if !isSelfSigned(ca.Cert) {
		chain = append(chain, ca.Cert)
		chain = append(chain, ca.Chain...)
	}
	return &Cert{Cert: cert, Key: key, Chain: chain}, nil
}

func template(opts Options) (*x509.Certificate, error) {
	if opts.CommonName == "" {
		return nil, errors.New("certificate needs a common name")
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	notBefore := opts.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Minute)
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: opts.CommonName},
		DNSNames:     opts.DNSNames,
		IPAddresses:  opts.IPs,
		URIs:         opts.URIs,
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(opts.Validity),
	}, nil
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
	}
	return key, nil
}

func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// CertPEM is the leaf followed by its intermediates, as the agents' `cert` file wants it.
func (c *Cert) CertPEM() []byte {
	var buf bytes.Buffer
	for _, x := range append([]*x509.Certificate{c.Cert}, c.Chain...) {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})
	}
	return buf.Bytes()
}

// KeyPEM is the private key in PKCS#8.
func (c *Cert) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteFiles writes the certificate chain (0644) and the private key (0600).
// It refuses to overwrite an existing key file.
func (c *Cert) WriteFiles(certPath, keyPath string) error {
	keyPEM, err := c.KeyPEM()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if _, err := f.Write(keyPEM); err != nil {
		f.Close()
		return fmt.Errorf("write key %s: %w", keyPath, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write key %s: %w", keyPath, err)
	}
	if err := os.WriteFile(certPath, c.CertPEM(), 0o644); err != nil {
		return fmt.Errorf("write certificate: %w", err)
	}
	return nil
}
