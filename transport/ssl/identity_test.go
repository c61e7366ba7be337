package ssl

import (
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestIdentityKeyTellsSameNamesApart(t *testing.T) {
	p := newPKI(t)
	a := Identity{Leaf: issueClient(t, p.ca, pki.Options{CommonName: "edge"}).Cert}
	b := Identity{Leaf: issueClient(t, p.ca, pki.Options{CommonName: "edge"}).Cert}
	if a.Name() != b.Name() {
		t.Fatalf("names %q and %q, want the same", a.Name(), b.Name())
	}
	if a.Key() == b.Key() {
		t.Fatal("two certificates with their own keys have the same Key")
	}
	if !strings.HasPrefix(a.Key(), "sha256:") || len(a.Key()) != len("sha256:")+44 {
		t.Fatalf("key %q, want sha256: and 44 characters of base64", a.Key())
	}
	// The key is exactly what an allow rule pins.
	r, err := ParseRule(a.Key())
	if err != nil {
		t.Fatalf("the key does not parse as a rule: %v", err)
	}
	if !r.Match(a) || r.Match(b) {
		t.Fatal("the key's rule matches the wrong certificates")
	}
	if (Identity{}).Key() != "" || (Identity{}).Name() != "" {
		t.Fatal("an empty identity has a key or a name")
	}
}

func TestIdentityNameFallbacks(t *testing.T) {
	p := newPKI(t)
	u, _ := url.Parse("spiffe://corp/router/edge-1")
	for _, tc := range []struct {
		opts pki.Options
		want string
	}{
		{pki.Options{CommonName: "cn", DNSNames: []string{"dns.example"}, URIs: []*url.URL{u}}, "cn"},
		{pki.Options{DNSNames: []string{"dns.example"}, URIs: []*url.URL{u}}, "dns.example"},
		{pki.Options{URIs: []*url.URL{u}}, "spiffe://corp/router/edge-1"},
		{pki.Options{IPs: []net.IP{net.ParseIP("192.0.2.7")}}, "192.0.2.7"},
	} {
		c, err := p.ca.IssueClient(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		id := Identity{Leaf: c.Cert}
		if got := id.Name(); got != tc.want {
			t.Errorf("name %q, want %q", got, tc.want)
		}
	}
	// A certificate with neither name nor SAN identifies nobody: refused.
	if _, err := p.ca.IssueClient(pki.Options{}); err == nil || !strings.Contains(err.Error(), "common name or a subject alternative name") {
		t.Fatalf("issue without any name: %v", err)
	}
}
