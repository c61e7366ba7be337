package ssl

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// A refusal by our rules completes the handshake under
// DeferringServerConfig, recorded with its kind and the words the client
// may hear (no file names); a chain that does not verify still fails.
func TestDeferringServerConfig(t *testing.T) {
	p := newPKI(t)
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	good := issueClient(t, p.ca, pki.Options{CommonName: "good"})
	bad := issueClient(t, p.ca, pki.Options{CommonName: "bad"})
	gc, gk := policyFiles(t, p, "good", good)
	bc, bk := policyFiles(t, p, "bad", bad)
	crl := writeCRL(t, p.dir, p.ca, 1, time.Now().Add(24*time.Hour), bad.Cert)
	sp, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, CRLs: []string{crl}})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewReloader(sp)
	other := newPKI(t)
	stranger := issueClient(t, other.ca, pki.Options{CommonName: "good"})
	oc, ok := policyFiles(t, other, "stranger", stranger)
	for _, tc := range []struct {
		name, cert, key string
		kind            string // "" and pass: accepted; "fail": the handshake fails
	}{
		{"good", gc, gk, ""},
		{"revoked", bc, bk, KindRevoked},
		{"unknown CA", oc, ok, "fail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp, err := LoadPolicy(PolicySpec{Cert: tc.cert, Key: tc.key, CA: p.caFile})
			if err != nil {
				t.Fatal(err)
			}
			var deferred atomic.Pointer[PolicyError]
			srvErr, _, _, _ := handshake(t, srv.DeferringServerConfig(&deferred), NewReloader(cp).ClientConfig("localhost"))
			pe := deferred.Load()
			switch tc.kind {
			case "":
				if srvErr != nil || pe != nil {
					t.Fatalf("good client: %v, deferred %v", srvErr, pe)
				}
			case "fail":
				if srvErr == nil || pe != nil {
					t.Fatalf("a chain that does not verify: %v, deferred %v", srvErr, pe)
				}
			default:
				if srvErr != nil || pe == nil || pe.Kind != tc.kind {
					t.Fatalf("handshake %v, deferred %+v, want kind %s", srvErr, pe, tc.kind)
				}
				if !strings.Contains(pe.Msg, crl) || strings.Contains(pe.Public, crl) || !strings.Contains(pe.Public, "is revoked") {
					t.Fatalf("msg %q, public %q", pe.Msg, pe.Public)
				}
			}
		})
	}
}
