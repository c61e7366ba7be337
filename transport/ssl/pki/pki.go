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
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
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
	root  *x509.Certificate // the root above, for CAs; nil for a root itself
}

// Options shape a new certificate. Zero values take sensible defaults.
type Options struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	URIs       []*url.URL
	NotBefore  time.Time     // default: now - 1 minute (clock skew)
	Validity   time.Duration // default: DefaultLeafValidity, or DefaultCAValidity for CAs
	NotAfter   time.Time     // when set, the end of validity (Validity is then ignored)
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
	return &Cert{Cert: cert, Key: key, Chain: chain, root: ca.Root()}, nil
}

func template(opts Options) (*x509.Certificate, error) {
	// A URI-only (SPIFFE) leaf has no common name; a certificate with
	// neither a name nor a SAN would identify nobody.
	if opts.CommonName == "" && len(opts.DNSNames) == 0 && len(opts.IPs) == 0 && len(opts.URIs) == 0 {
		return nil, errors.New("certificate needs a common name or a subject alternative name")
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	notBefore := opts.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-time.Minute)
	}
	notAfter := opts.NotAfter
	if notAfter.IsZero() {
		notAfter = notBefore.Add(opts.Validity)
	}
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("certificate would end (%s) before it starts (%s)", notAfter.UTC().Format(time.RFC3339), notBefore.UTC().Format(time.RFC3339))
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: opts.CommonName},
		DNSNames:     opts.DNSNames,
		IPAddresses:  opts.IPs,
		URIs:         opts.URIs,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
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

// CA files in a CA directory.
const (
	CACertFile  = "ca.crt"    // the CA's certificate (for an intermediate: the intermediate)
	CAKeyFile   = "ca.key"    // its private key, 0600
	CAChainFile = "chain.crt" // intermediates only: the intermediate, its parents, and the root last
)

// ParseCertsPEM reads every CERTIFICATE block of data.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no CERTIFICATE blocks found (want PEM)")
	}
	return out, nil
}

// Root returns the self-signed root above c: c itself for a root CA, the
// last of the chain file for an intermediate loaded with LoadCA.
func (c *Cert) Root() *x509.Certificate {
	if c.root != nil {
		return c.root
	}
	return c.Cert
}

// LoadCA reads a CA directory written by WriteCAFiles: ca.crt and its key
// ca.key, which must match. For an intermediate it keeps the chain up to the
// root from chain.crt (or, without chain.crt, from the certificates that
// follow the first one in ca.crt).
func LoadCA(dir string) (*Cert, error) {
	certPath, keyPath, chainPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile), filepath.Join(dir, CAChainFile)
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load CA: %s does not exist (is --ca-dir right? make a CA with `cert ca create --dir %s`)", certPath, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load CA: %s does not exist: the CA's private key must sit beside %s to sign", keyPath, certPath)
	}
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	certs, err := ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA %s: %w", certPath, err)
	}
	signer, err := parseKeyPEM(keyPEM)
	if err != nil {
		// Only the file name: never the key's bytes.
		return nil, fmt.Errorf("load CA key %s: %w", keyPath, err)
	}
	ca := &Cert{Cert: certs[0], Key: signer}
	if !ca.Cert.IsCA {
		return nil, fmt.Errorf("load CA: %s (%q) is not a CA certificate (basic constraints CA:FALSE)", certPath, ca.Cert.Subject.CommonName)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(ca.Cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s does not match %s (the key belongs to another certificate)", keyPath, certPath)
	}
	chain := certs
	if chainPEM, err := os.ReadFile(chainPath); err == nil {
		if chain, err = ParseCertsPEM(chainPEM); err != nil {
			return nil, fmt.Errorf("load CA chain %s: %w", chainPath, err)
		}
		if len(chain) < 2 || !chain[0].Equal(ca.Cert) {
			return nil, fmt.Errorf("load CA chain %s: want %s's certificate first, then its parents, the root last", chainPath, certPath)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load CA chain: %w", err)
	}
	if len(chain) > 1 {
		for i := 0; i+1 < len(chain); i++ {
			if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
				return nil, fmt.Errorf("load CA chain in %s: %q is not signed by the next certificate %q: %w", dir, chain[i].Subject.CommonName, chain[i+1].Subject.CommonName, err)
			}
		}
		ca.Chain = chain[1 : len(chain)-1]
		ca.root = chain[len(chain)-1]
	}
	return ca, nil
}

// parseKeyPEM reads a PKCS#8, SEC 1 (EC) or PKCS#1 (RSA) private key.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	var block *pem.Block
	for {
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			break
		}
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("the key is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain) and keep the result 0600")
	default:
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T is not a signing key", k)
	}
	return signer, nil
}

// SPKIPin is "sha256:" and the standard base64 of the SHA-256 of the
// certificate's DER SubjectPublicKeyInfo, the form `allow` rules take. It
// is what `openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER |
// openssl dgst -sha256 -binary | base64` prints, and survives renewal with
// the same key.
func SPKIPin(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "sha256:" + base64.StdEncoding.EncodeToString(sum[:])
}

// WriteCAFiles writes the CA into dir (created 0700): ca.crt, ca.key
// (0600) and, for an intermediate, chain.crt. It never overwrites a CA.
func (c *Cert) WriteCAFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write CA: %w", err)
	}
	for _, name := range []string{CACertFile, CAKeyFile, CAChainFile} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return fmt.Errorf("write CA: %s already exists; a CA is never overwritten (choose another directory)", filepath.Join(dir, name))
		}
	}
	if err := c.WriteFiles(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)); err != nil {
		return err
	}
	if c.root != nil {
		var buf bytes.Buffer
		for _, x := range append(append([]*x509.Certificate{c.Cert}, c.Chain...), c.root) {
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: x.Raw})
		}
		if err := os.WriteFile(filepath.Join(dir, CAChainFile), buf.Bytes(), 0o644); err != nil {
			return fmt.Errorf("write CA chain: %w", err)
		}
	}
	return nil
}

// Verify checks that the leaf chains to the CA's root for usage.
func (c *Cert) Verify(leaf *Cert, usage x509.ExtKeyUsage) error {
	roots := x509.NewCertPool()
	roots.AddCert(c.Root())
	inter := x509.NewCertPool()
	for _, x := range leaf.Chain {
		inter.AddCert(x)
	}
	_, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: leaf.Cert.NotBefore.Add(time.Minute)})
	return err
}

// NewCRL returns a version 2 CRL in PEM signed by the CA.
func (c *Cert) NewCRL(entries []x509.RevocationListEntry, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: number, ThisUpdate: thisUpdate, NextUpdate: nextUpdate, RevokedCertificateEntries: entries,
	}, c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("create CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}
