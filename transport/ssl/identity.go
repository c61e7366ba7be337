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

// Name is the identity shown in logs and matched by default: the common name,
// or the first DNS name when the certificate has no common name.
func (id Identity) Name() string {
	if id.Leaf == nil {
		return ""
	}
	if cn := id.Leaf.Subject.CommonName; cn != "" {
		return cn
	}
	if len(id.Leaf.DNSNames) > 0 {
		return id.Leaf.DNSNames[0]
	}
	return ""
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
