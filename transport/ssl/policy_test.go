package ssl

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestRules(t *testing.T) {
	p := newPKI(t)
	inter, err := p.ca.NewIntermediate(pki.Options{CommonName: "routers CA"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse("spiffe://corp.example/router/r1")
	leaf, err := inter.IssueClient(pki.Options{CommonName: "edge-1", DNSNames: []string{"edge-1.corp.example"}, URIs: []*url.URL{u}})
	if err != nil {
		t.Fatal(err)
	}
	other := issueClient(t, p.ca, pki.Options{CommonName: "edge-2"})
	id := Identity{Leaf: leaf.Cert, Chain: []*x509.Certificate{inter.Cert, p.ca.Cert}}
	otherID := Identity{Leaf: other.Cert, Chain: []*x509.Certificate{p.ca.Cert}}
	for _, tc := range []struct {
		rule      string
		id, other bool // matches id, matches otherID
	}{
		{"edge-1", true, false},
		{"edge-1.corp.example", true, false},
		{"cn:edge-1", true, false},
		{"cn:edge-1.corp.example", false, false},
		{"dns:edge-1.corp.example", true, false},
		{"dns:edge-1", false, false},
		{"uri:spiffe://corp.example/router/*", true, false},
		{"spiffe://corp.example/router/*", true, false},
		{"spiffe://corp.example/*", false, false}, // '*' stays within one segment
		{"spiffe://corp.example/switch/*", false, false},
		{SPKIPin(leaf.Cert), true, false},
		{SPKIPin(other.Cert), false, true},
		{"issuer:routers CA", true, false},
		{"issuer:" + SPKIPin(inter.Cert), true, false},
		{"issuer:test root", true, true},
	} {
		r, err := ParseRule(tc.rule)
		if err != nil {
			t.Fatalf("%q: %v", tc.rule, err)
		}
		if got := r.Match(id); got != tc.id {
			t.Errorf("%q matches edge-1: %v, want %v", tc.rule, got, tc.id)
		}
		if got := r.Match(otherID); got != tc.other {
			t.Errorf("%q matches edge-2: %v, want %v", tc.rule, got, tc.other)
		}
	}
	for _, bad := range []string{"", " x", "sha256:abc", "issuer:sha256:!!", "ip:1.2.3.4", "uri:spiffe://[", "cn:"} {
		if _, err := ParseRule(bad); err == nil {
			t.Errorf("ParseRule(%q) accepted", bad)
		}
	}
	if _, errs := ParseRules([]string{"ok", "bad:x", "sha256:zz"}); len(errs) != 2 {
		t.Fatalf("ParseRules reported %d errors, want 2", len(errs))
	}
}

func writeCRL(t *testing.T, dir string, ca *pki.Cert, number int64, next time.Time, revoked ...*x509.Certificate) string {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, c := range revoked {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(number), ThisUpdate: next.Add(-48 * time.Hour), NextUpdate: next,
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ca.Cert.Subject.CommonName+".crl")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// policyPair writes server and client material and returns policies.
func policyFiles(t *testing.T, p *pkiSet, name string, c *pki.Cert) (cert, key string) {
	cert, key = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	if err := c.WriteFiles(cert, key); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func TestRevocation(t *testing.T) {
	p := newPKI(t)
	inter, _ := p.ca.NewIntermediate(pki.Options{CommonName: "routers CA"})
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	good := issueClient(t, inter, pki.Options{CommonName: "good"})
	bad := issueClient(t, inter, pki.Options{CommonName: "bad"})
	gc, gk := policyFiles(t, p, "good", good)
	bc, bk := policyFiles(t, p, "bad", bad)
	crl := writeCRL(t, p.dir, inter, 1, time.Now().Add(24*time.Hour), bad.Cert)

	srvPolicy, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, CRLs: []string{crl}})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewReloader(srvPolicy)
	for _, tc := range []struct {
		cert, key, want string
	}{{gc, gk, ""}, {bc, bk, `certificate "bad" (serial ` + FormatSerial(bad.Cert.SerialNumber) + ") is revoked"}} {
		cp, err := LoadPolicy(PolicySpec{Cert: tc.cert, Key: tc.key, CA: p.caFile})
		if err != nil {
			t.Fatal(err)
		}
		srvErr, cliErr, _, _ := handshake(t, srv.ServerConfig(), NewReloader(cp).ClientConfig("localhost"))
		if tc.want == "" {
			if srvErr != nil || cliErr != nil {
				t.Fatalf("good client refused: %v / %v", srvErr, cliErr)
			}
			continue
		}
		if srvErr == nil || !strings.Contains(srvErr.Error(), tc.want) {
			t.Fatalf("server error %v, want %q", srvErr, tc.want)
		}
		if cliErr == nil {
			t.Fatal("revoked client got through")
		}
	}

	// A stale CRL refuses only when configured to.
	stale := writeCRL(t, t.TempDir(), inter, 2, time.Now().Add(-time.Hour))
	for _, mode := range []string{"warn", "refuse"} {
		sp, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, CRLs: []string{stale}, CRLStale: mode})
		if err != nil {
			t.Fatal(err)
		}
		cp, _ := LoadPolicy(PolicySpec{Cert: gc, Key: gk, CA: p.caFile})
		srvErr, _, _, _ := handshake(t, NewReloader(sp).ServerConfig(), NewReloader(cp).ClientConfig("localhost"))
		if mode == "warn" && srvErr != nil {
			t.Fatalf("stale CRL in warn mode refused: %v", srvErr)
		}
		if mode == "refuse" && (srvErr == nil || !strings.Contains(srvErr.Error(), "is stale")) {
			t.Fatalf("stale CRL in refuse mode: %v", srvErr)
		}
	}
}

func TestParseCRLRefusesGarbageAndNamesV1(t *testing.T) {
	if _, err := ParseCRL([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")); err == nil || !strings.Contains(err.Error(), `want "X509 CRL"`) {
		t.Fatalf("err = %v", err)
	}
	if _, err := ParseCRL([]byte("not a crl")); err == nil {
		t.Fatal("garbage accepted")
	}
}

// The rules change between two handshakes of the same client; the second
// one resumes the TLS session and must still be refused.
func TestResumedSessionCheckedAgainstNewRules(t *testing.T) {
	p := newPKI(t)
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	cc, ck := policyFiles(t, p, "client", issueClient(t, p.ca, pki.Options{CommonName: "client-a"}))
	var allowed atomic.Value
	allowed.Store([]string{"client-a"})
	admit := func(id Identity) error {
		if id.Allowed(allowed.Load().([]string)) {
			return nil
		}
		return errors.New(id.Name() + " is not allowed")
	}
	sp, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, Admit: admit})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewReloader(sp)
	cp, _ := LoadPolicy(PolicySpec{Cert: cc, Key: ck, CA: p.caFile})
	cli := NewReloader(cp)
	// The agents turn resumption off; turn it on here to prove that the
	// policy still applies if it ever is.
	key := [32]byte{1, 2, 3}
	base := srv.ServerConfig()
	srvConf := &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := base.GetConfigForClient(h)
		c.SessionTicketsDisabled = false
		c.SetSessionTicketKeys([][32]byte{key})
		return c, err
	}}
	cache := tls.NewLRUClientSessionCache(4)
	cliConf := func() *tls.Config {
		c := cli.ClientConfig("localhost")
		c.ClientSessionCache = cache
		return c
	}

	srvErr, cliErr, _, c1 := handshake(t, srvConf, cliConf())
	if srvErr != nil || cliErr != nil {
		t.Fatal(srvErr, cliErr)
	}
	if c1.ConnectionState().DidResume {
		t.Fatal("first handshake resumed")
	}
	// Prove resumption works while the rules still allow the client.
	srvErr, cliErr, _, c2 := handshake(t, srvConf, cliConf())
	if srvErr != nil || cliErr != nil || !c2.ConnectionState().DidResume {
		t.Fatalf("second handshake: resumed=%v %v %v", c2.ConnectionState().DidResume, srvErr, cliErr)
	}
	allowed.Store([]string{"client-b"})
	srvErr, _, _, _ = handshake(t, srvConf, cliConf())
	if srvErr == nil || !strings.Contains(srvErr.Error(), "client-a is not allowed") {
		t.Fatalf("resumed session after the rules changed: %v", srvErr)
	}
}

func TestRecheck(t *testing.T) {
	p := newPKI(t)
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	cli := issueClient(t, p.ca, pki.Options{})
	id := Identity{Leaf: cli.Cert, Chain: []*x509.Certificate{p.ca.Cert}}
	pol, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := pol.Recheck(id, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
		t.Fatal(err)
	}
	// The CA bundle no longer holds the client's CA.
	moved, _ := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.otherCA})
	if err := moved.Recheck(id, x509.ExtKeyUsageClientAuth, time.Now()); err == nil || !strings.Contains(err.Error(), "unknown CA") {
		t.Fatalf("recheck after CA removal: %v", err)
	}
	crl := writeCRL(t, p.dir, p.ca, 1, time.Now().Add(time.Hour), cli.Cert)
	revoked, _ := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, CRLs: []string{crl}})
	if err := revoked.Recheck(id, x509.ExtKeyUsageClientAuth, time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("recheck after revocation: %v", err)
	}
	ex := revoked.Expiries()
	if len(ex) != 3 || ex[2].What != "CRL next update" || ex[0].DaysLeft(time.Now()) < 300 {
		t.Fatalf("expiries %+v", ex)
	}
}

func TestAgentsDoNotResume(t *testing.T) {
	p := newPKI(t)
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	cc, ck := policyFiles(t, p, "client", issueClient(t, p.ca, pki.Options{}))
	sp, _ := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile})
	cp, _ := LoadPolicy(PolicySpec{Cert: cc, Key: ck, CA: p.caFile})
	srv, cli := NewReloader(sp), NewReloader(cp)
	cache := tls.NewLRUClientSessionCache(4) // a client that would resume if offered a ticket
	for i := 0; i < 2; i++ {
		conf := cli.ClientConfig("localhost")
		conf.ClientSessionCache = cache
		_, _, _, c := handshake(t, srv.ServerConfig(), conf)
		if c.ConnectionState().DidResume {
			t.Fatal("resumed")
		}
	}
}

// A CA certificate (basicConstraints CA:TRUE) issued by the trusted CA
// verifies as a leaf in crypto/x509; both sides refuse it as the peer's
// own certificate, in the handshake and on a recheck.
func TestCACertificateRefusedAsPeer(t *testing.T) {
	p := newPKI(t)
	const want = "peer certificate is a CA certificate (basicConstraints CA:TRUE); issue a leaf certificate"
	caLeaf, err := p.ca.NewIntermediate(pki.Options{CommonName: "client-a", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	if !caLeaf.Cert.IsCA {
		t.Fatal("test certificate is not a CA")
	}
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	cc, ck := policyFiles(t, p, "client", issueClient(t, p.ca, pki.Options{CommonName: "client-a"}))
	xc, xk := policyFiles(t, p, "ca-leaf", caLeaf)
	load := func(cert, key string) *Reloader {
		pol, err := LoadPolicy(PolicySpec{Cert: cert, Key: key, CA: p.caFile})
		if err != nil {
			t.Fatal(err)
		}
		return NewReloader(pol)
	}

	// A leaf on both sides: accepted (the control case).
	if srvErr, cliErr, _, _ := handshake(t, load(sc, sk).ServerConfig(), load(cc, ck).ClientConfig("localhost")); srvErr != nil || cliErr != nil {
		t.Fatalf("leaf certificates refused: %v / %v", srvErr, cliErr)
	}
	// The client presents a CA certificate: the server refuses it.
	srvErr, cliErr, _, _ := handshake(t, load(sc, sk).ServerConfig(), load(xc, xk).ClientConfig("localhost"))
	if srvErr == nil || !strings.Contains(srvErr.Error(), want) {
		t.Fatalf("server accepted a CA certificate as the client's: %v", srvErr)
	}
	if cliErr == nil {
		t.Fatal("client with a CA certificate got through")
	}
	// The server presents a CA certificate: the client refuses it.
	srvErr, cliErr, _, _ = handshake(t, load(xc, xk).ServerConfig(), load(cc, ck).ClientConfig("localhost"))
	if cliErr == nil || !strings.Contains(cliErr.Error(), want) {
		t.Fatalf("client accepted a CA certificate as the server's: %v", cliErr)
	}
	if srvErr == nil {
		t.Fatal("server with a CA certificate completed the handshake")
	}
	// A session that predates the rule is closed by a recheck.
	pol := load(sc, sk).Policy()
	if err := pol.Recheck(Identity{Leaf: caLeaf.Cert}, x509.ExtKeyUsageClientAuth, time.Now()); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("recheck of a CA certificate: %v", err)
	}
	// Our own CA certificate is a problem `validate` reports.
	own := load(xc, xk).Policy().Material.Check(time.Now(), x509.ExtKeyUsageClientAuth)
	if len(own) != 1 || !strings.Contains(own[0].Error(), "is a CA certificate") {
		t.Fatalf("own CA certificate: problems %v", own)
	}
}

func TestDeadline(t *testing.T) {
	p := newPKI(t)
	now := time.Now()
	inter, err := p.ca.NewIntermediate(pki.Options{CommonName: "routers CA", NotAfter: now.Add(48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	long := issueClient(t, inter, pki.Options{CommonName: "long", NotAfter: now.Add(72 * time.Hour)})
	short := issueClient(t, inter, pki.Options{CommonName: "short", NotAfter: now.Add(24 * time.Hour)})
	crl := writeCRL(t, p.dir, inter, 1, now.Add(36*time.Hour))
	id := func(c *pki.Cert) Identity {
		return Identity{Leaf: c.Cert, Chain: []*x509.Certificate{inter.Cert, p.ca.Cert}}
	}
	for _, tc := range []struct {
		stale string
		peer  *pki.Cert
		want  time.Time
		what  string
	}{
		{"warn", short, short.Cert.NotAfter, `peer certificate "short" expired`},
		{"warn", long, inter.Cert.NotAfter, `CA certificate "routers CA" above the peer expired`},
		{"refuse", long, now.Add(36 * time.Hour), "covering the peer passed its next update"},
		{"refuse", short, short.Cert.NotAfter, `peer certificate "short" expired`},
	} {
		pol, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, CRLs: []string{crl}, CRLStale: tc.stale})
		if err != nil {
			t.Fatal(err)
		}
		at, what := pol.Deadline(id(tc.peer))
		if at.Sub(tc.want).Abs() > time.Second || !strings.Contains(what, tc.what) {
			t.Errorf("crl_stale %s, peer %s: deadline %s (%s), want %s (%s)", tc.stale, tc.peer.Cert.Subject.CommonName, at, what, tc.want, tc.what)
		}
	}
}

// WatchPeer ends a session when its peer's certificate expires, and a
// reload that installs a fresh CRL before a stale-CRL deadline keeps the
// session: the old deadline is rechecked against the new policy.
func TestWatchPeer(t *testing.T) {
	p := newPKI(t)
	sc, sk := policyFiles(t, p, "server", issueServer(t, p.ca, pki.Options{}))
	load := func(crls []string) *Policy {
		pol, err := LoadPolicy(PolicySpec{Cert: sc, Key: sk, CA: p.caFile, CRLs: crls, CRLStale: "refuse"})
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	watch := func(r *Reloader, peer *pki.Cert) (closed chan error, stop func()) {
		closed = make(chan error, 1)
		done, returned := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(returned)
			r.WatchPeer(done, Identity{Leaf: peer.Cert, Chain: []*x509.Certificate{p.ca.Cert}}, x509.ExtKeyUsageClientAuth, func(err error) { closed <- err })
		}()
		return closed, func() { close(done); <-returned }
	}

	t.Run("certificate expires", func(t *testing.T) {
		peer := issueClient(t, p.ca, pki.Options{NotAfter: time.Now().Add(2 * time.Second)})
		closed, stop := watch(NewReloader(load(nil)), peer)
		defer stop()
		select {
		case err := <-closed:
			var expired *ExpiredError
			if !errors.As(err, &expired) || !strings.Contains(err.Error(), "expired") {
				t.Fatalf("closed with %v", err)
			}
			if time.Now().Before(peer.Cert.NotAfter) {
				t.Fatalf("closed at %s, before the certificate's end %s", time.Now(), peer.Cert.NotAfter)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("session outlived its peer's certificate by 18 s")
		}
	})

	t.Run("fresh CRL by reload", func(t *testing.T) {
		peer := issueClient(t, p.ca, pki.Options{})
		staleSoon := writeCRL(t, t.TempDir(), p.ca, 1, time.Now().Add(2*time.Second))
		r := NewReloader(load([]string{staleSoon}))
		if at, _ := r.Policy().Deadline(Identity{Leaf: peer.Cert, Chain: []*x509.Certificate{p.ca.Cert}}); time.Until(at) > 3*time.Second {
			t.Fatalf("deadline %s is not the CRL's next update", at)
		}
		closed, stop := watch(r, peer)
		defer stop()
		r.Store(load([]string{writeCRL(t, t.TempDir(), p.ca, 2, time.Now().Add(time.Hour))}))
		select {
		case err := <-closed:
			t.Fatalf("closed after a reload brought a fresh CRL: %v", err)
		case <-time.After(4 * time.Second): // past the old next update
		}
		// And a reload back to a stale CRL closes it at once.
		r.Store(load([]string{writeCRL(t, t.TempDir(), p.ca, 3, time.Now().Add(-time.Minute))}))
		select {
		case err := <-closed:
			if !strings.Contains(err.Error(), "crl_stale") {
				t.Fatalf("closed with %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("stale CRL installed by reload did not close the session")
		}
	})
}

func TestDeadlineWait(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		at    time.Time
		floor time.Duration
		want  time.Duration
	}{
		{now.Add(time.Minute), 0, time.Minute + 50*time.Millisecond},
		{now.Add(-time.Minute), 0, 0},
		{now.Add(-time.Minute), time.Second, time.Second},
		{now.Add(30 * 24 * time.Hour), 0, 24 * time.Hour},
		{time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), 0, 24 * time.Hour}, // "no expiry" (RFC 5280)
	} {
		if got := deadlineWait(tc.at, now, tc.floor); got != tc.want {
			t.Errorf("deadlineWait(%s, floor %s) = %s, want %s", tc.at, tc.floor, got, tc.want)
		}
	}
}
