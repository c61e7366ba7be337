package ssl

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// A Rule is one entry of an `allow` (or the client's `verify`) list. Forms:
//
//	client-a                       certificate CN or a DNS SAN, exactly
//	cn:client-a                    the CN only
//	dns:edge-1.example.net         a DNS SAN only
//	uri:spiffe://corp/router/*     a URI SAN, '*' matching within one path segment
//	spiffe://corp/router/*         the same (anything with "://")
//	sha256:BASE64                  SPKI pin: SHA-256 of the certificate's public key
//	issuer:NAME                    chain goes through a CA whose CN is NAME
//	issuer:sha256:BASE64           chain goes through the CA with this SPKI pin
//
// Rules are ORed: a peer is allowed when any rule matches; an empty list
// allows nobody.
type Rule struct {
	raw  string
	kind ruleKind
	arg  string
}

type ruleKind int

const (
	ruleName ruleKind = iota
	ruleCN
	ruleDNS
	ruleURI
	rulePin
	ruleIssuerName
	ruleIssuerPin
)

// ParseRule checks one rule; the error says what form was expected.
func ParseRule(s string) (Rule, error) {
	r := Rule{raw: s}
	if s == "" || strings.TrimSpace(s) != s {
		return r, fmt.Errorf("rule %q: empty or surrounded by spaces", s)
	}
	prefix, rest, hasPrefix := strings.Cut(s, ":")
	switch {
	case strings.Contains(s, "://") && !strings.HasPrefix(s, "uri:"):
		r.kind, r.arg = ruleURI, s
	case !hasPrefix:
		r.kind, r.arg = ruleName, s
	case prefix == "cn":
		r.kind, r.arg = ruleCN, rest
	case prefix == "dns":
		r.kind, r.arg = ruleDNS, rest
	case prefix == "uri":
		r.kind, r.arg = ruleURI, rest
	case prefix == "sha256":
		r.kind, r.arg = rulePin, rest
		if err := checkPin(rest); err != nil {
			return r, fmt.Errorf("rule %q: %w", s, err)
		}
	case prefix == "issuer":
		if pin, ok := strings.CutPrefix(rest, "sha256:"); ok {
			r.kind, r.arg = ruleIssuerPin, pin
			if err := checkPin(pin); err != nil {
				return r, fmt.Errorf("rule %q: %w", s, err)
			}
		} else {
			r.kind, r.arg = ruleIssuerName, rest
		}
	default:
		return r, fmt.Errorf("rule %q: unknown prefix %q (want a name, cn:, dns:, uri:, sha256:, or issuer:)", s, prefix+":")
	}
	if r.arg == "" {
		return r, fmt.Errorf("rule %q: nothing after the prefix", s)
	}
	if r.kind == ruleURI {
		if _, err := path.Match(r.arg, ""); err != nil {
			return r, fmt.Errorf("rule %q: bad pattern: %w", s, err)
		}
	}
	return r, nil
}

func checkPin(b64 string) error {
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("an SPKI pin is sha256: followed by 44 characters of base64 (see `cert inspect`)")
	}
	return nil
}

func (r Rule) String() string { return r.raw }

// Rules is a parsed allow list.
type Rules []Rule

// ParseRules parses every entry and returns all errors at once.
func ParseRules(list []string) (Rules, []error) {
	var (
		rules Rules
		errs  []error
	)
	for _, s := range list {
		r, err := ParseRule(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		rules = append(rules, r)
	}
	return rules, errs
}

// Match reports whether id matches any rule and which one.
func (rs Rules) Match(id Identity) (Rule, bool) {
	for _, r := range rs {
		if r.Match(id) {
			return r, true
		}
	}
	return Rule{}, false
}

// Match reports whether the identity satisfies this rule.
func (r Rule) Match(id Identity) bool {
	leaf := id.Leaf
	if leaf == nil {
		return false
	}
	switch r.kind {
	case ruleName:
		return id.Is(r.arg)
	case ruleCN:
		return leaf.Subject.CommonName == r.arg
	case ruleDNS:
		return slices.Contains(leaf.DNSNames, r.arg)
	case ruleURI:
		for _, u := range leaf.URIs {
			if ok, _ := path.Match(r.arg, u.String()); ok {
				return true
			}
		}
	case rulePin:
		return SPKIPin(leaf) == "sha256:"+r.arg
	case ruleIssuerName:
		return slices.ContainsFunc(id.Chain, func(c *x509.Certificate) bool { return c.Subject.CommonName == r.arg })
	case ruleIssuerPin:
		return slices.ContainsFunc(id.Chain, func(c *x509.Certificate) bool { return SPKIPin(c) == "sha256:"+r.arg })
	}
	return false
}

// SPKIPin is "sha256:" and the base64 SHA-256 of the certificate's
// SubjectPublicKeyInfo: it survives renewal with the same key.
func SPKIPin(c *x509.Certificate) string { return pki.SPKIPin(c) }
