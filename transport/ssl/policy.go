package ssl

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// PolicySpec names the files and choices a Policy is built from.
type PolicySpec struct {
	Cert, Key, CA string
	CRLs          []string
	// CRLStale is "refuse" to refuse peers while a CRL covering them is past
	// its nextUpdate; anything else only warns (see Policy.Warnings).
	CRLStale string
	// Admit decides whether a verified peer may connect at all (the server:
	// any service or forward names it; the client: the verify rules). It runs
	// in VerifyConnection, so on resumed sessions too. nil admits every
	// verified peer.
	Admit func(Identity) error
}

// Policy is one immutable snapshot of everything a handshake is checked
// against. Reload builds a new one and publishes it in one atomic store.
type Policy struct {
	Material *Material
	CRLs     []*CRL
	spec     PolicySpec
}

// CRL is a loaded revocation list.
type CRL struct {
	File    string
	List    *x509.RevocationList
	revoked map[string]bool // serial numbers, as decimal strings
}

// LoadPolicy reads every file of spec. It fails on anything unreadable,
// malformed, or a CRL that no CA in the bundle signed; Reload keeps the
// old policy when it does.
func LoadPolicy(spec PolicySpec) (*Policy, error) {
	m, err := LoadMaterial(spec.Cert, spec.Key, spec.CA)
	errs := []error{err}
	var crls []*CRL
	for _, file := range spec.CRLs {
		crl, err := loadCRLFile(file)
		errs = append(errs, err)
		crls = append(crls, crl)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &Policy{Material: m, spec: spec, CRLs: crls}, nil
}

func loadCRLFile(file string) (*CRL, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CRL: %w", err)
	}
	list, err := ParseCRL(data)
	if err != nil {
		return nil, fmt.Errorf("CRL %s: %w", file, err)
	}
	c := &CRL{File: file, List: list, revoked: map[string]bool{}}
	for _, e := range list.RevokedCertificateEntries {
		c.revoked[e.SerialNumber.String()] = true
	}
	return c, nil
}

// ParseCRL reads a PEM or DER CRL; version 1 CRLs are refused with how to
// make a version 2 one (see pki.LoadCRL, which `cert` uses too).
func ParseCRL(data []byte) (*x509.RevocationList, error) { return pki.LoadCRL(data) }

// Stale reports whether the CRL is past its nextUpdate at now.
func (c *CRL) Stale(now time.Time) bool {
	return !c.List.NextUpdate.IsZero() && now.After(c.List.NextUpdate)
}

// checkRevocation checks every certificate of a verified chain (leaf first,
// root last) against the CRLs its issuer signed.
func (p *Policy) checkRevocation(chain []*x509.Certificate, now time.Time) error {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		for _, crl := range p.crlsFor(cert, issuer) {
			if crl.revoked[cert.SerialNumber.String()] {
				what := fmt.Sprintf("certificate %q (serial %s) is revoked", cert.Subject.CommonName, FormatSerial(cert.SerialNumber))
				return &PolicyError{Msg: what + " (CRL " + crl.File + ")", Kind: KindRevoked, Public: what}
			}
			if crl.Stale(now) && p.spec.CRLStale == "refuse" {
				due := crl.List.NextUpdate.UTC().Format(time.RFC3339)
				return &PolicyError{Msg: fmt.Sprintf("CRL %s for %q is stale (next update was due %s) and crl_stale = \"refuse\"", crl.File, issuer.Subject.CommonName, due), Kind: KindCRLStale,
					Public: fmt.Sprintf("the CRL of %q it holds is stale (next update was due %s) and it refuses until it has a fresh one", issuer.Subject.CommonName, due)}
			}
		}
	}
	return nil
}

// crlsFor are the CRLs that cover cert: issued by its issuer, by name and
// signature (another CA of the same name does not count).
func (p *Policy) crlsFor(cert, issuer *x509.Certificate) []*CRL {
	var out []*CRL
	for _, crl := range p.CRLs {
		if bytes.Equal(crl.List.RawIssuer, cert.RawIssuer) && crl.List.CheckSignatureFrom(issuer) == nil {
			out = append(out, crl)
		}
	}
	return out
}

// FormatSerial prints a serial number as colon-separated hex, as `cert inspect` and openssl do.
func FormatSerial(n *big.Int) string { return pki.FormatSerial(n) }

// Recheck runs the checks of a handshake again on an existing peer's
// identity, against this policy: after a reload, sessions whose peer no
// longer passes (CA removed, revoked, no longer allowed) are closed.
func (p *Policy) Recheck(id Identity, usage x509.ExtKeyUsage, now time.Time) error {
	if id.Leaf == nil {
		return errors.New("no peer certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range id.Chain {
		inter.AddCert(c)
	}
	if err := checkLeaf(id.Leaf); err != nil {
		return err
	}
	chains, err := id.Leaf.Verify(x509.VerifyOptions{Roots: p.Material.CAs, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		return &PolicyError{Msg: Describe(err)}
	}
	if err := p.checkRevocation(chains[0], now); err != nil {
		return err
	}
	if p.spec.Admit != nil {
		return p.spec.Admit(Identity{Leaf: chains[0][0], Chain: chains[0][1:]})
	}
	return nil
}

// verifyConnection runs on every handshake, resumed or not (unlike
// VerifyPeerCertificate), after the chain was verified.
func (p *Policy) verifyConnection(cs tls.ConnectionState) error {
	id, err := PeerIdentity(cs)
	if err != nil {
		return err
	}
	if err := checkLeaf(id.Leaf); err != nil {
		return err
	}
	if err := p.checkRevocation(append([]*x509.Certificate{id.Leaf}, id.Chain...), time.Now()); err != nil {
		return err
	}
	if p.spec.Admit != nil {
		if err := p.spec.Admit(id); err != nil {
			return &PolicyError{Msg: err.Error(), Kind: KindNotAllowed, Public: err.Error()}
		}
	}
	return nil
}

// checkLeaf refuses a CA certificate as a peer's own. crypto/x509 verifies
// a CA certificate as a leaf when its usages allow it (a CA without
// extended key usages allows every usage), and a CA key is meant to sign
// certificates, not to live on a host: whoever holds it could also issue
// certificates for any other name.
func checkLeaf(leaf *x509.Certificate) error {
	if leaf.IsCA {
		msg := fmt.Sprintf("peer certificate is a CA certificate (basicConstraints CA:TRUE); issue a leaf certificate (subject %q, serial %s)", leaf.Subject.String(), FormatSerial(leaf.SerialNumber))
		return &PolicyError{Msg: msg, Kind: KindCACert, Public: msg}
	}
	return nil
}

// PolicyError is a refusal by our own rules (revoked, not allowed); its
// text is already in operator words.
type PolicyError struct {
	Msg string
	// Kind is one of the Kind* constants when the refusal can be told to
	// the peer in words (a server defers it past the handshake, see
	// Reloader.DeferringServerConfig); "" otherwise.
	Kind string
	// Public is what the peer may be told: Msg without our file names.
	Public string
}

// Kinds of PolicyError a server can tell the client about.
const (
	KindNotAllowed = "not_allowed"
	KindRevoked    = "revoked"
	KindCRLStale   = "crl_stale"
	KindCACert     = "ca_certificate"
)

func (e *PolicyError) Error() string { return e.Msg }

// Reloader holds the current Policy and builds TLS configurations from it,
// per handshake on the server and per dial on the client, so a reload
// applies to the next handshake without a restart.
//
// TLS session resumption is off: the agents reconnect rarely, and a full
// handshake makes every new session present and check the current
// certificates, so a rotated certificate is visible at once. Should it be
// turned on, VerifyConnection still applies the current policy to resumed
// sessions (tested).
type Reloader struct {
	current atomic.Pointer[Policy]

	mu      sync.Mutex
	changed chan struct{} // closed and replaced by every Store
}

// NewReloader starts with p.
func NewReloader(p *Policy) *Reloader {
	r := &Reloader{changed: make(chan struct{})}
	r.current.Store(p)
	return r
}

// Policy is the current snapshot.
func (r *Reloader) Policy() *Policy { return r.current.Load() }

// Store publishes a new snapshot; handshakes from now on use it.
func (r *Reloader) Store(p *Policy) {
	r.current.Store(p)
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// Changed is closed by the next Store: a session's deadline (see
// Policy.Deadline) is computed again when the policy changes.
func (r *Reloader) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// WatchPeer ends a session when time alone makes its peer fail the
// current policy: its certificate or a CA above it expires or, with
// crl_stale = "refuse", a CRL covering it passes its next update. When the
// deadline comes the peer is checked again against the policy then current
// (Recheck), so a reload that installed a fresh CRL or a renewed CA is
// never undone by an old deadline; a reload also recomputes the deadline.
// closeSession is called at most once, with why, and WatchPeer returns;
// it returns too when done is closed. It holds one timer, stopped on
// return.
func (r *Reloader) WatchPeer(done <-chan struct{}, id Identity, usage x509.ExtKeyUsage, closeSession func(error)) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	floor := time.Duration(0)
	for {
		changed := r.Changed()
		p := r.Policy()
		at, what := p.Deadline(id)
		t.Reset(deadlineWait(at, time.Now(), floor))
		select {
		case <-done:
			return
		case <-changed:
			floor = 0
			continue
		case <-t.C:
		}
		if err := r.Policy().Recheck(id, usage, time.Now()); err != nil {
			closeSession(&ExpiredError{What: what, Err: err})
			return
		}
		floor = time.Second
	}
}

// deadlineWait is how long WatchPeer waits for a deadline at: until just
// after it (x509 holds a certificate valid through its NotAfter), at least
// floor (a deadline that passed yet still passes the recheck is looked at
// again no sooner), and at most a day, then computed again: a NotAfter of
// 9999 would overflow a Duration.
func deadlineWait(at, now time.Time, floor time.Duration) time.Duration {
	const slack, most = 50 * time.Millisecond, 24 * time.Hour
	if at.Sub(now) >= most {
		return most
	}
	return max(at.Sub(now)+slack, floor)
}

// ExpiredError ends a session whose peer stopped passing with time: What
// names the deadline ("certificate expired", "CRL next update passed"),
// Err is the recheck's refusal, in operator words.
type ExpiredError struct {
	What string
	Err  error
}

func (e *ExpiredError) Error() string { return e.What + ": " + e.Err.Error() }
func (e *ExpiredError) Unwrap() error { return e.Err }

// Deadline is when id stops passing this policy by the passing of time
// alone: the earliest NotAfter of its leaf and the CAs above it and, when
// crl_stale is "refuse", the earliest next update of a CRL that covers a
// certificate of its chain. what says which, for the log.
func (p *Policy) Deadline(id Identity) (at time.Time, what string) {
	if id.Leaf == nil {
		return time.Time{}, ""
	}
	chain := append([]*x509.Certificate{id.Leaf}, id.Chain...)
	at, what = id.Leaf.NotAfter, fmt.Sprintf("peer certificate %q expired", id.Name())
	for _, c := range id.Chain {
		if c.NotAfter.Before(at) {
			at, what = c.NotAfter, fmt.Sprintf("CA certificate %q above the peer expired", c.Subject.CommonName)
		}
	}
	if p.spec.CRLStale != "refuse" {
		return at, what
	}
	for i := 0; i+1 < len(chain); i++ {
		for _, crl := range p.crlsFor(chain[i], chain[i+1]) {
			if next := crl.List.NextUpdate; !next.IsZero() && next.Before(at) {
				at, what = next, fmt.Sprintf("CRL %s covering the peer passed its next update and crl_stale = \"refuse\"", crl.File)
			}
		}
	}
	return at, what
}

// ServerConfig picks the current policy for each client hello.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			p := r.current.Load()
			c := ServerConfig(p.Material)
			c.SessionTicketsDisabled = true
			c.VerifyConnection = p.verifyConnection
			return c, nil
		},
	}
}

// DeferringServerConfig is ServerConfig for one connection, except that a
// refusal by our own rules that the client may be told about (a
// PolicyError with a Kind: not allowed, revoked, a CA certificate, a stale
// CRL) does not fail the handshake: it is stored in deferred, and the
// caller must refuse the client in the tunnel protocol, in words, and
// serve it nothing. TLS can only say "bad certificate" for all of these.
// A chain that does not verify (unknown CA, expired, wrong usage) still
// fails the handshake.
func (r *Reloader) DeferringServerConfig(deferred *atomic.Pointer[PolicyError]) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			p := r.current.Load()
			c := ServerConfig(p.Material)
			c.SessionTicketsDisabled = true
			c.VerifyConnection = func(cs tls.ConnectionState) error {
				err := p.verifyConnection(cs)
				var pe *PolicyError
				if errors.As(err, &pe) && pe.Kind != "" {
					deferred.Store(pe)
					return nil
				}
				return err
			}
			return c, nil
		},
	}
}

// ClientConfig is for one dial, from the current policy.
func (r *Reloader) ClientConfig(serverName string) *tls.Config {
	p := r.current.Load()
	c := ClientConfig(p.Material, serverName)
	c.VerifyConnection = p.verifyConnection
	return c
}

// Expiry is one dated thing the agent depends on.
type Expiry struct {
	What string // "certificate", "CA", "CRL next update"
	Name string // subject CN or file
	When time.Time
	// Period is how long it is valid in all: NotAfter - NotBefore, or a
	// CRL's next update - this update.
	Period time.Duration
}

// DaysLeft is the whole days from now until e.When (negative when past).
func (e Expiry) DaysLeft(now time.Time) int { return int(e.When.Sub(now).Hours() / 24) }

// Window is how long before e.When to warn: window (expiry_warning), or the
// last third of e's own validity period if that is shorter. Things issued
// for short periods are replaced often by design (a CRL re-signed every
// 7 days, a day-long SPIFFE certificate): a fixed 30-day window would warn
// about them all the time, and a warning that is always on gets ignored.
func (e Expiry) Window(window time.Duration) time.Duration {
	if e.Period > 0 {
		return min(window, e.Period/3)
	}
	return window
}

// Expiries lists our certificate, every CA of the bundle and every CRL's
// next update, for warnings and metrics.
func (p *Policy) Expiries() []Expiry {
	m := p.Material
	validity := func(c *x509.Certificate) time.Duration { return c.NotAfter.Sub(c.NotBefore) }
	out := []Expiry{{"certificate", m.Leaf.Subject.CommonName, m.Leaf.NotAfter, validity(m.Leaf)}}
	for _, c := range m.CACerts {
		out = append(out, Expiry{"CA", c.Subject.CommonName, c.NotAfter, validity(c)})
	}
	for _, c := range p.CRLs {
		if !c.List.NextUpdate.IsZero() {
			out = append(out, Expiry{"CRL next update", c.File, c.List.NextUpdate, c.List.NextUpdate.Sub(c.List.ThisUpdate)})
		}
	}
	return out
}

// CheckOwn runs offline what a handshake would check of our own side: the
// certificate's dates, its chain to the CA bundle for usage, that no
// loaded CRL revokes it, and that no CRL is stale when crl_stale is
// "refuse". Warnings are things that work today but need attention (a stale
// CRL in warn mode).
func (p *Policy) CheckOwn(now time.Time, usage x509.ExtKeyUsage) (problems, warnings []error) {
	problems = p.Material.Check(now, usage)
	inter := x509.NewCertPool()
	var chainCerts []*x509.Certificate
	for _, der := range p.Material.Cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
			chainCerts = append(chainCerts, c)
		}
	}
	if chains, err := p.Material.Leaf.Verify(x509.VerifyOptions{Roots: p.Material.CAs, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err == nil {
		if err := p.checkRevocation(chains[0], now); err != nil {
			problems = append(problems, fmt.Errorf("our certificate %s: %w", p.Material.CertFile, err))
		}
	}
	for _, c := range p.CRLs {
		if c.Stale(now) {
			err := fmt.Errorf("CRL %s is stale: its next update was due %s", c.File, c.List.NextUpdate.UTC().Format(time.RFC3339))
			if p.spec.CRLStale == "refuse" {
				problems = append(problems, err)
			} else {
				warnings = append(warnings, err)
			}
		}
		if !crlSignedByBundle(c, p.Material.CACerts, chainCerts) {
			warnings = append(warnings, fmt.Errorf("CRL %s (issuer %s) is signed by no CA in tls.ca nor in our chain: it can only apply to peers whose chain brings its issuer", c.File, c.List.Issuer))
		}
	}
	return problems, warnings
}

// CheckUsable is nil unless our own certificate would fail every handshake
// now (Material.Check: expired, not yet valid, not issued for usage, a CA
// certificate, a chain that does not verify), as validate says too. The
// CRL verdicts of CheckOwn are left out: refusing a reload over them would
// keep an older CRL that revokes fewer peers.
func (p *Policy) CheckUsable(now time.Time, usage x509.ExtKeyUsage) error {
	if problems := p.Material.Check(now, usage); len(problems) > 0 {
		return &OwnCertError{Problems: problems}
	}
	return nil
}

func crlSignedByBundle(c *CRL, lists ...[]*x509.Certificate) bool {
	for _, l := range lists {
		for _, ca := range l {
			if c.List.CheckSignatureFrom(ca) == nil {
				return true
			}
		}
	}
	return false
}
