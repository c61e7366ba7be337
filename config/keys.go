package config

import (
	"math"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

// dscpNames are the DiffServ code point names accepted for dscp.
var dscpNames = map[string]int{
	"CS0": 0, "CS1": 8, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48, "CS7": 56,
	"AF11": 10, "AF12": 12, "AF13": 14, "AF21": 18, "AF22": 20, "AF23": 22,
	"AF31": 26, "AF32": 28, "AF33": 30, "AF41": 34, "AF42": 36, "AF43": 38, "EF": 46,
}

// settings decodes the top-level keys of Settings, returning where the
// admin listen address is (empty when there is none).
func (d *decoder) settings(top *body) (Settings, hcl.Range) {
	st := Settings{
		ExpiryWarning:        DefaultExpiryWarning,
		PingAfter:            DefaultPingAfter,
		DeadAfter:            DefaultDeadAfter,
		DrainTimeout:         DefaultDrainTimeout,
		MaxStreamsPerSession: DefaultMaxStreamsPerSession,
		MaxSessionBuffer:     DefaultMaxSessionBuffer,
		HeaderTimeout:        DefaultHeaderTimeout,
		ResumeWindow:         DefaultResumeWindow,
		DSCP:                 -1,
	}
	if a := top.attr("reload_interval"); a != nil {
		if v, ok := d.durationOrZero(top, a); ok {
			if v < time.Second {
				d.addf(a.Expr.Range(), "reload_interval = %q is too short (at least \"1s\"; leave it out to reload only on SIGHUP)", v)
			} else {
				st.ReloadInterval = v
			}
		}
	}
	timers := true // ping_after and dead_after both decoded
	for key, dst := range map[string]*time.Duration{"expiry_warning": &st.ExpiryWarning, "ping_after": &st.PingAfter, "dead_after": &st.DeadAfter} {
		if a := top.attr(key); a != nil {
			if v, ok := d.duration(top, a); ok {
				*dst = v
			} else if key != "expiry_warning" {
				timers = false
			}
		}
	}
	if timers && st.DeadAfter <= st.PingAfter {
		if a := top.attr("dead_after"); a != nil {
			d.addf(a.Expr.Range(), "dead_after (%s) must be longer than ping_after (%s): the peer needs time to answer a ping", st.DeadAfter, st.PingAfter)
		} else {
			d.addf(top.attr("ping_after").Expr.Range(), "ping_after (%s) must be shorter than dead_after (%s, the default): the peer needs time to answer a ping (lower ping_after or set dead_after)", st.PingAfter, st.DeadAfter)
		}
	}
	if a := top.attr("drain_timeout"); a != nil {
		if v, ok := d.durationOrZero(top, a); ok {
			st.DrainTimeout = v
		}
	}
	if a := top.attr("max_streams_per_session"); a != nil {
		if n, ok := d.intRange(top, a, 1, math.MaxInt32); ok {
			st.MaxStreamsPerSession = n
		}
	}
	if a := top.attr("max_session_buffer"); a != nil {
		if n, ok := d.size(top, a, minSessionBuffer, maxSessionBuffer); ok {
			st.MaxSessionBuffer = n
		}
	}
	if a := top.attr("header_timeout"); a != nil {
		if v, ok := d.duration(top, a); ok {
			st.HeaderTimeout = v
		}
	}
	if a := top.attr("resume_window"); a != nil {
		if v, ok := d.resumeWindow(top, a); ok {
			st.ResumeWindow = v
		}
	}
	if a := top.attr("dscp"); a != nil {
		st.DSCP = d.dscp(top, a)
	}
	var admin *hclsyntax.Block
	var adminAt hcl.Range
	for _, blk := range top.blocks {
		if blk.Type != "admin" {
			continue
		}
		if admin != nil {
			d.addf(blk.TypeRange, "duplicate admin block, the first is at line %d (merge them into one)", admin.TypeRange.Start.Line)
			continue
		}
		admin = blk
		if !d.noLabels(blk) {
			continue
		}
		b := d.content(blk.Body, adminBody, "the admin block", "admin.", blk.TypeRange)
		public, publicOK := false, true
		if a := b.attr("public"); a != nil {
			public, publicOK = d.boolean(b, a)
		}
		a := b.attr("listen")
		if a == nil {
			d.missing(b, "listen", `listen = "127.0.0.1:9090": where /metrics, /healthz and /status are served`)
			continue
		}
		addr, ok := d.address(b, a, listenAddr)
		if !ok || !publicOK {
			continue
		}
		if host := hostOf(addr); !public && !isLoopback(host) {
			d.addf(a.Expr.Range(), "admin listen must be on loopback (127.0.0.1 or [::1]) unless public = true, got %q: /status names peers and addresses (listen on 127.0.0.1, or add public = true to the admin block to serve the network)", addr)
			continue
		}
		st.Admin, st.AdminPublic, adminAt = addr, public, a.Expr.Range()
	}
	return st, adminAt
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// durationOrZero decodes a duration that may be "0s".
func (d *decoder) durationOrZero(b *body, a *hclsyntax.Attribute) (time.Duration, bool) {
	if v, ok := d.eval(b, a); ok && v.Type().Equals(cty.String) {
		if dur, err := time.ParseDuration(v.AsString()); err == nil && dur == 0 {
			return 0, true
		}
	}
	return d.duration(b, a)
}

// resumeWindow decodes a resume_window: a duration from "0s" (off) to
// MaxResumeWindow.
func (d *decoder) resumeWindow(b *body, a *hclsyntax.Attribute) (time.Duration, bool) {
	v, ok := d.eval(b, a)
	if !ok {
		return 0, false
	}
	if v.Type().Equals(cty.String) {
		if dur, err := time.ParseDuration(v.AsString()); err == nil {
			switch {
			case dur < 0:
				d.addf(a.Expr.Range(), "%s%s = %q must not be negative (write \"0s\" to turn resumption off, or a window such as \"120s\")", b.prefix, a.Name, v.AsString())
				return 0, false
			case dur > MaxResumeWindow:
				d.addf(a.Expr.Range(), "%s%s = %q is too long: a suspended stream holds its local connection and its replay buffer all that time (at most \"1h\"; more than the peers' own hold time is useless)", b.prefix, a.Name, v.AsString())
				return 0, false
			}
			return dur, true
		}
	}
	return d.duration(b, a) // reports the wrong type or a bad duration
}

// Bounds of max_session_buffer: at least a few bulk streams' windows (1 MiB
// each), at most what no machine this runs on could give one session.
const (
	minSessionBuffer = 8 << 20
	maxSessionBuffer = 1 << 40
)

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}

// size decodes a byte size written as a whole number with a binary unit,
// "256MiB" or "1GiB", in [lo, hi] bytes.
func (d *decoder) size(b *body, a *hclsyntax.Attribute, lo, hi int64) (int64, bool) {
	key := b.prefix + a.Name
	v, ok := d.eval(b, a)
	if !ok {
		return 0, false
	}
	if !v.Type().Equals(cty.String) {
		hint := ""
		if v.Type().Equals(cty.Number) {
			hint = `; a bare number has no unit: write "256MiB"`
		}
		d.addf(a.Expr.Range(), "%s must be a size string, not %s (e.g. %s = \"256MiB\"%s)", key, typeName(v), a.Name, hint)
		return 0, false
	}
	text := strings.TrimSpace(v.AsString())
	for _, u := range sizeUnits {
		num, found := strings.CutSuffix(text, u.suffix)
		if !found {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || n < 0 {
			break
		}
		if n > hi/u.mult || n*u.mult < lo || n*u.mult > hi {
			d.addf(a.Expr.Range(), "%s = %q is out of range (%s to %s)", key, v.AsString(), formatSize(lo), formatSize(hi))
			return 0, false
		}
		return n * u.mult, true
	}
	d.addf(a.Expr.Range(), "%s = %q is not a size (write a whole number with a unit, e.g. \"256MiB\" or \"1GiB\"; units KiB, MiB, GiB, TiB)", key, v.AsString())
	return 0, false
}

// formatSize writes n bytes in the largest unit that divides it.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// intRange decodes a whole number in [lo, hi].
func (d *decoder) intRange(b *body, a *hclsyntax.Attribute, lo, hi int) (int, bool) {
	n, ok := d.integer(b, a)
	if !ok {
		return 0, false
	}
	if n < lo || n > hi {
		d.addf(a.Expr.Range(), "%s%s = %d is out of range (%d to %d)", b.prefix, a.Name, n, lo, hi)
		return 0, false
	}
	return n, true
}

func (d *decoder) boolean(b *body, a *hclsyntax.Attribute) (bool, bool) {
	v, ok := d.eval(b, a)
	if !ok {
		return false, false
	}
	if v.Type() != cty.Bool {
		d.addf(a.Expr.Range(), "%s%s must be true or false, not %s (write it without quotes)", b.prefix, a.Name, typeName(v))
		return false, false
	}
	return v.True(), true
}

// dscp decodes a code point, 0..63 or a name; -1 when invalid.
func (d *decoder) dscp(b *body, a *hclsyntax.Attribute) int {
	v, ok := d.eval(b, a)
	if !ok {
		return -1
	}
	if v.Type() == cty.String {
		name := strings.ToUpper(v.AsString())
		if n, ok := dscpNames[name]; ok {
			return n
		}
		d.addf(a.Expr.Range(), "%sdscp = %q is not a DiffServ code point name (use CS0..CS7, EF, AF11..AF43, or a number 0..63)", b.prefix, v.AsString())
		return -1
	}
	if v.Type() != cty.Number {
		d.addf(a.Expr.Range(), "%sdscp must be a number 0..63 or a code point name such as \"EF\", not %s", b.prefix, typeName(v))
		return -1
	}
	n, ok := d.intRange(b, a, 0, 63)
	if !ok {
		return -1
	}
	return n
}

// ttl decodes an IP TTL, 1..255; off says what leaving the key out means.
func (d *decoder) ttl(b *body, a *hclsyntax.Attribute, off string) int {
	n, ok := d.integer(b, a)
	if !ok {
		return 0
	}
	if n < 1 || n > 255 {
		d.addf(a.Expr.Range(), "%s%s = %d is out of range (1 to 255); leave it out for %s", b.prefix, a.Name, n, off)
		return 0
	}
	return n
}

// class decodes a class key.
func (d *decoder) class(b *body, a *hclsyntax.Attribute) string {
	v, _ := d.oneOf(b, a, []string{ClassControl, ClassBulk})
	return v
}

// rules parses allow or verify entries with the identity rule parser, each
// error at its own element: the agents use the rules parsed here.
func (d *decoder) rules(b *body, a *hclsyntax.Attribute, elems []element) (ssl.Rules, bool) {
	ok := true
	rules := make(ssl.Rules, 0, len(elems))
	for i, e := range elems {
		r, err := ssl.ParseRule(e.s)
		if err != nil {
			d.addf(e.rng, "%s%s[%d]: %v", b.prefix, a.Name, i, err)
			ok = false
			continue
		}
		rules = append(rules, r)
	}
	return rules, ok
}

// serviceExtras decodes the keys of a service block beyond target and allow.
func (d *decoder) serviceExtras(b *body, s *Service) bool {
	ok := true
	s.Class = DefaultClass(portOf(s.Target))
	s.DSCP = -1
	if a := b.attr("class"); a != nil {
		if c := d.class(b, a); c != "" {
			s.Class, s.ClassExplicit = c, true
		} else {
			ok = false
		}
	}
	if a := b.attr("source"); a != nil {
		if v, sok := d.str(b, a); sok {
			src, err := netip.ParseAddr(v)
			target, terr := netip.ParseAddr(hostOf(s.Target))
			switch {
			case err != nil:
				d.addf(a.Expr.Range(), "%ssource = %q is not an IP address (give the local address to dial from, without a port)", b.prefix, v)
				ok = false
			case terr == nil && src.Unmap().Is4() != target.Unmap().Is4():
				d.addf(a.Expr.Range(), "%ssource = %q cannot dial target %s: one is IPv4, the other IPv6 (use a source of the target's family)", b.prefix, v, s.Target)
				ok = false
			default:
				s.Source = v
			}
		}
	}
	if a := b.attr("ttl"); a != nil {
		s.TTL = d.ttl(b, a, "the system default")
	}
	if a := b.attr("dscp"); a != nil {
		s.DSCP = d.dscp(b, a)
	}
	if a := b.attr("proxy_protocol"); a != nil {
		s.ProxyProtocol, _ = d.boolean(b, a)
	}
	if a := b.attr("idle_timeout"); a != nil {
		s.IdleTimeout, _ = d.durationOrZero(b, a)
	}
	if a := b.attr("resume_window"); a != nil {
		s.ResumeWindow, s.ResumeWindowExplicit = d.resumeWindow(b, a)
	}
	return ok
}

// forwardExtras decodes the keys of a forward block beyond listen, service and client.
func (d *decoder) forwardExtras(b *body, f *Forward) bool {
	ok := true
	f.Class = DefaultClass(portOf(f.Listen))
	f.MaxConns = DefaultMaxConns
	f.DSCP = -1
	if a := b.attr("class"); a != nil {
		if c := d.class(b, a); c != "" {
			f.Class, f.ClassExplicit = c, true
		} else {
			ok = false
		}
	}
	if a := b.attr("max_conns"); a != nil {
		if n, nok := d.intRange(b, a, 1, math.MaxInt32); nok {
			f.MaxConns = n
		}
	}
	if a := b.attr("idle_timeout"); a != nil {
		f.IdleTimeout, _ = d.durationOrZero(b, a)
	}
	if a := b.attr("min_ttl"); a != nil {
		f.MinTTL = d.ttl(b, a, "no TTL check")
	}
	if a := b.attr("dscp"); a != nil {
		f.DSCP = d.dscp(b, a)
	}
	if a := b.attr("resume_window"); a != nil {
		f.ResumeWindow, f.ResumeWindowExplicit = d.resumeWindow(b, a)
	}
	return ok
}

// tlsExtras decodes crl, crl_stale and verify.
func (d *decoder) tlsExtras(b *body, t *TLS, server bool) {
	t.CRLStale = DefaultCRLStale
	if a := b.attr("crl"); a != nil {
		if elems, ok := d.strList(b, a); ok {
			for i, e := range elems {
				if e.s == "" {
					d.addf(e.rng, "%scrl[%d] must not be empty (give the path of a CRL file, PEM or DER)", b.prefix, i)
					continue
				}
				p := d.pathOf(e.s)
				if err := readable(p); err != nil {
					d.addf(e.rng, "cannot read %scrl[%d] file %s: %v (check the path and its permissions; relative paths resolve against %s)", b.prefix, i, p, err, d.dir)
					continue
				}
				t.CRL = append(t.CRL, p)
			}
		}
	}
	if a := b.attr("crl_stale"); a != nil {
		if v, ok := d.oneOf(b, a, []string{"warn", "refuse"}); ok {
			t.CRLStale = v
		}
	}
	if a := b.attr("verify"); a != nil && !server {
		if elems, ok := d.strList(b, a); ok {
			if len(elems) == 0 {
				d.addf(a.Expr.Range(), "tls.verify is empty (list the server identities to accept, or remove it)")
			} else if rules, ok := d.rules(b, a, elems); ok {
				for _, e := range elems {
					t.Verify = append(t.Verify, e.s)
				}
				t.VerifyRules = rules
			}
		}
	}
}

func (d *decoder) pathOf(p string) string {
	if p == "" {
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(d.dir, p)
	}
	return filepath.Clean(p)
}
