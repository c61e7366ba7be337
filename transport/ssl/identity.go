package ssl

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
)

// Identity is who the peer proved to be in the handshake: its verified leaf
// certificate and the CAs above it (intermediates and root).
type Identity struct {
	Leaf  *x509.Certificate
	Chain []*x509.Certificate
}

// PeerIdentity returns the identity from a completed handshake. Go fills the
// verified chain on resumed sessions too, so the identity is never stale.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, errors.New("peer presented no verified certificate")
	}
	chain := cs.VerifiedChains[0]
	return Identity{Leaf: chain[0], Chain: chain[1:]}, nil
}

// Key is what tells peers apart: the SPKI pin of the leaf
// ("sha256:BASE64", the text a `sha256:` rule takes). Readable names are
// not unique (two hosts may share a CN; URI-only certificates have none),
// so sessions, limits and lookups are keyed by Key and shown by Name. It
// stays the same across a renewal with the same key, so a renewed client
// still replaces its own old session. "" when there is no certificate.
func (id Identity) Key() string {
	if id.Leaf == nil {
		return ""
	}
	return SPKIPin(id.Leaf)
}

// Name is the identity shown in logs and matched by default: the common
// name, else the first DNS name, else the first URI SAN (a SPIFFE ID),
// else the first IP SAN, else the Key, so a log line never names nobody.
// It need not be unique: see Key.
func (id Identity) Name() string {
	if id.Leaf == nil {
		return ""
	}
	switch l := id.Leaf; {
	case l.Subject.CommonName != "":
		return l.Subject.CommonName
	case len(l.DNSNames) > 0:
		return l.DNSNames[0]
	case len(l.URIs) > 0:
		return l.URIs[0].String()
	case len(l.IPAddresses) > 0:
		return l.IPAddresses[0].String()
	}
	return id.Key()
}

// Is reports whether the identity answers to name: the certificate's common
// name or one of its DNS SANs, compared exactly.
func (id Identity) Is(name string) bool {
	if id.Leaf == nil || name == "" {
		return false
	}
	return id.Leaf.Subject.CommonName == name || slices.Contains(id.Leaf.DNSNames, name)
}

// Allowed reports whether the identity matches any rule of allow (see
// Rule). Entries that do not parse match nothing; config validation reports
// them. An empty list allows nobody: deny unless allowed.
func (id Identity) Allowed(allow []string) bool {
	for _, s := range allow {
		if r, err := ParseRule(s); err == nil && r.Match(id) {
			return true
		}
	}
	return false
}
