package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

// common is what the server and client configs share.
type common struct {
	tls              TLS
	tlsBlock         *hclsyntax.Block // nil when missing
	serverNameSet    bool
	handshakeTimeout time.Duration
	dialTimeout      time.Duration
	logLevel         string
	logFormat        string
	services         []Service
	forwards         []Forward
	forwardLines     map[string]int // line of each forward's listen key, by name
	listens          []listener     // the forwards' listen addresses
	settings         Settings
}

// listener is a listen address and who listens on it.
type listener struct {
	addr string
	who  string
	rng  hcl.Range
}

var (
	logLevels  = []string{"trace", "debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

// common decodes the keys and blocks both configs have.
func (d *decoder) common(top *body, server bool) common {
	c := common{
		handshakeTimeout: DefaultHandshakeTimeout,
		dialTimeout:      DefaultDialTimeout,
		logLevel:         DefaultLogLevel,
		logFormat:        DefaultLogFormat,
	}
	if a := top.attr("handshake_timeout"); a != nil {
		if v, ok := d.duration(top, a); ok {
			c.handshakeTimeout = v
		}
	}
	if a := top.attr("dial_timeout"); a != nil {
		if v, ok := d.duration(top, a); ok {
			c.dialTimeout = v
		}
	}
	if a := top.attr("log_level"); a != nil {
		if v, ok := d.oneOf(top, a, logLevels); ok {
			c.logLevel = v
		}
	}
	if a := top.attr("log_format"); a != nil {
		if v, ok := d.oneOf(top, a, logFormats); ok {
			c.logFormat = v
		}
	}

	var adminAt hcl.Range
	c.settings, adminAt = d.settings(top)
	if c.settings.Admin != "" {
		c.listens = append(c.listens, listener{addr: c.settings.Admin, who: "admin", rng: adminAt})
	}
	services := map[string]hcl.Range{}
	forwards := map[string]hcl.Range{}
	for _, blk := range top.blocks {
		switch blk.Type {
		case "tls":
			if c.tlsBlock != nil {
				d.addf(blk.TypeRange, "duplicate tls block, the first is at line %d (merge them into one)", c.tlsBlock.TypeRange.Start.Line)
				continue
			}
			c.tlsBlock = blk
			c.tls, c.serverNameSet = d.tlsBlock(blk, server)
		case "service":
			s, ok := d.service(blk, server)
			if s.Name == "" {
				continue
			}
			if first, dup := services[s.Name]; dup {
				d.addf(blk.LabelRanges[0], "duplicate service %q, the first is at line %d (rename or remove one)", s.Name, first.Start.Line)
				continue
			}
			services[s.Name] = blk.LabelRanges[0]
			if ok {
				c.services = append(c.services, s)
			}
		case "forward":
			f, listenAt, ok := d.forward(blk, server)
			if f.Name == "" {
				continue
			}
			if first, dup := forwards[f.Name]; dup {
				d.addf(blk.LabelRanges[0], "duplicate forward %q, the first is at line %d (rename or remove one)", f.Name, first.Start.Line)
				continue
			}
			forwards[f.Name] = blk.LabelRanges[0]
			if f.Listen == "" {
				continue
			}
			who := fmt.Sprintf("forward %q", f.Name)
			if d.clash(c.listens, f.Listen, who, listenAt) {
				continue
			}
			c.listens = append(c.listens, listener{addr: f.Listen, who: who, rng: listenAt})
			if ok {
				c.forwards = append(c.forwards, f)
				if c.forwardLines == nil {
					c.forwardLines = map[string]int{}
				}
				c.forwardLines[f.Name] = listenAt.Start.Line
			}
		}
	}
	if c.tlsBlock == nil {
		d.addf(hcl.Range{}, `missing tls block (add tls { cert = "...", key = "...", ca = "..." })`)
	}
	return c
}

// listenClash reports forwards that listen where the server itself does.
func (d *decoder) listenClash(c common, addr string, a *hclsyntax.Attribute) {
	for _, l := range c.listens {
		if overlap(addr, l.addr) {
			d.addf(l.rng, "%s listens on %s, which clashes with the server's listen = %q at line %d (give %s another address)",
				l.who, l.addr, addr, a.Expr.Range().Start.Line, l.who)
		}
	}
}

// clash reports whether addr overlaps an address in ls, reporting it.
func (d *decoder) clash(ls []listener, addr, who string, rng hcl.Range) bool {
	for _, l := range ls {
		if overlap(addr, l.addr) {
			d.addf(rng, "%s listens on %s, which clashes with %s on %s at line %d (give each forward its own address)",
				who, addr, l.who, l.addr, l.rng.Start.Line)
			return true
		}
	}
	return false
}

// overlap reports whether listeners on a and b cannot both bind: the same
// non-zero port on the same host, or on a wildcard that covers the other.
func overlap(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	if n, _ := strconv.Atoi(pa); n == 0 {
		return false // ephemeral ports never clash
	}
	ha, hb = canonHost(ha), canonHost(hb)
	switch {
	case ha == hb, ha == "", hb == "", ha == "::", hb == "::":
		return true
	case ha == "0.0.0.0":
		return !isIPv6(hb)
	case hb == "0.0.0.0":
		return !isIPv6(ha)
	}
	return false
}

func canonHost(h string) string {
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String()
	}
	h = strings.ToLower(h)
	if h == "localhost" {
		// Go listens on a name's first IPv4 address: localhost's is
		// 127.0.0.1 wherever loopback is configured.
		return "127.0.0.1"
	}
	return h
}

func isIPv6(h string) bool {
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Is6()
}

// tlsBlock decodes a tls block, returning whether server_name was set.
func (d *decoder) tlsBlock(blk *hclsyntax.Block, server bool) (TLS, bool) {
	var t TLS
	if !d.noLabels(blk) {
		return t, false
	}
	s := clientTLS
	if server {
		s = serverTLS
	}
	b := d.content(blk.Body, s, "the tls block", "tls.", blk.TypeRange)
	for _, k := range []struct {
		key  string
		dst  *string
		what string
	}{
		{"cert", &t.Cert, "certificate chain (PEM, leaf first)"},
		{"key", &t.Key, "private key (PEM)"},
		{"ca", &t.CA, "CA certificates that sign the peer (PEM)"},
	} {
		if a := b.attr(k.key); a != nil {
			*k.dst = d.pemFile(b, a)
		} else {
			d.missing(b, k.key, fmt.Sprintf("%s = \"path/to/file\": the %s", k.key, k.what))
		}
	}
	d.tlsExtras(b, &t, server)
	set := false
	if a := b.attr("server_name"); a != nil {
		if v, ok := d.str(b, a); ok {
			set = true
			if v == "" {
				d.addf(a.Expr.Range(), "tls.server_name must not be empty (remove it to use the host of the first server address)")
			}
			t.ServerName = v
		}
	}
	return t, set
}

// noLabels reports a block that must have no labels but has some.
func (d *decoder) noLabels(blk *hclsyntax.Block) bool {
	if len(blk.Labels) == 0 {
		return true
	}
	d.addf(blk.LabelRanges[0], "the %s block takes no name (write %s { ... })", blk.Type, blk.Type)
	return false
}

// oneLabel checks that a block has exactly one label, a valid name.
func (d *decoder) oneLabel(blk *hclsyntax.Block) (string, bool) {
	if len(blk.Labels) != 1 {
		rng := blk.TypeRange
		if len(blk.Labels) > 1 {
			rng = blk.LabelRanges[1]
		}
		d.addf(rng, "a %s block takes exactly one name, got %d (write %s \"name\" { ... })", blk.Type, len(blk.Labels), blk.Type)
		return "", false
	}
	name := blk.Labels[0]
	if msg := checkName(name); msg != "" {
		d.addf(blk.LabelRanges[0], "%s name %q %s", blk.Type, name, msg)
		return "", false
	}
	return name, true
}

const maxNameLen = 64

// checkName returns what is wrong with a service or forward name, or "".
func checkName(s string) string {
	const hint = "(use only letters, digits, '.', '_' and '-', at most 64 of them)"
	if s == "" {
		return "is empty " + hint
	}
	if len(s) > maxNameLen {
		return fmt.Sprintf("is %d bytes long %s", len(s), hint)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Sprintf("contains %q %s", r, hint)
		}
	}
	return ""
}

// service decodes a service block.
func (d *decoder) service(blk *hclsyntax.Block, server bool) (Service, bool) {
	name, ok := d.oneLabel(blk)
	if !ok {
		return Service{}, false
	}
	s := Service{Name: name}
	what := fmt.Sprintf("service %q", name)
	b := d.content(blk.Body, serviceBody, what, what+" ", blk.TypeRange)
	if a := b.attr("target"); a != nil {
		s.Target, ok = d.address(b, a, dialAddr)
	} else {
		d.missing(b, "target", `target = "host:port": the address to dial when the service is opened`)
		ok = false
	}
	if a := b.attr("allow"); a != nil {
		allow, rules, allowOK := d.allow(b, a)
		s.Allow, s.AllowRules = allow, rules
		ok = ok && allowOK
	} else if server {
		d.addf(b.at, `%s has no allow list: services are deny by default; list the client identities that may open it (add allow = ["client-id"])`, what)
		ok = false
	}
	ok = d.serviceExtras(b, &s) && ok
	return s, ok
}

// allow decodes an allow list: a non-empty list of identities.
func (d *decoder) allow(b *body, a *hclsyntax.Attribute) ([]string, ssl.Rules, bool) {
	elems, ok := d.strList(b, a)
	if !ok {
		return nil, nil, false
	}
	key := b.prefix + a.Name
	if len(elems) == 0 {
		d.addf(a.Expr.Range(), "%s is empty, so nobody may open the service (list the identities that may, or remove the service)", key)
		return nil, nil, false
	}
	out := make([]string, 0, len(elems))
	for i, e := range elems {
		switch {
		case e.s == "":
			d.addf(e.rng, "%s[%d] is empty (give a client identity)", key, i)
			ok = false
		case strings.TrimSpace(e.s) != e.s:
			d.addf(e.rng, "%s[%d] = %q has spaces around it (remove them)", key, i, e.s)
			ok = false
		}
		out = append(out, e.s)
	}
	var rules ssl.Rules
	if ok {
		rules, ok = d.rules(b, a, elems)
	}
	return out, rules, ok
}

// forward decodes a forward block, returning where its listen key is.
func (d *decoder) forward(blk *hclsyntax.Block, server bool) (Forward, hcl.Range, bool) {
	name, ok := d.oneLabel(blk)
	if !ok {
		return Forward{}, hcl.Range{}, false
	}
	f := Forward{Name: name, Service: name}
	what := fmt.Sprintf("forward %q", name)
	s := clientForward
	if server {
		s = serverForward
	}
	b := d.content(blk.Body, s, what, what+" ", blk.TypeRange)
	var listenAt hcl.Range
	if a := b.attr("listen"); a != nil {
		listenAt = a.Expr.Range()
		f.Listen, ok = d.address(b, a, listenAddr)
	} else {
		d.missing(b, "listen", `listen = "127.0.0.1:port": the local address to accept connections on`)
		ok = false
	}
	if a := b.attr("service"); a != nil {
		if v, sok := d.str(b, a); !sok {
			ok = false
		} else if msg := checkName(v); msg != "" {
			d.addf(a.Expr.Range(), "%sservice %q %s", b.prefix, v, msg)
			ok = false
		} else {
			f.Service = v
		}
	}
	if server {
		if a := b.attr("client"); a != nil {
			v, cok := d.str(b, a)
			switch {
			case !cok:
				ok = false
			case v == "" || strings.TrimSpace(v) != v:
				d.addf(a.Expr.Range(), "%sclient = %q is not an identity (give the identity of the client that serves %q)", b.prefix, v, f.Service)
				ok = false
			default:
				f.Client = v
			}
		} else {
			d.missing(b, "client", `client = "client-id": the identity of the connected client whose session carries the stream`)
			ok = false
		}
	}
	ok = d.forwardExtras(b, &f) && ok
	return f, listenAt, ok
}

// addrKind is the kind of address a key holds.
type addrKind int

const (
	listenAddr addrKind = iota // empty host and port 0 allowed
	dialAddr                   // host and port 1..65535 required
)

// address decodes a as a host:port address of kind k.
func (d *decoder) address(b *body, a *hclsyntax.Attribute, k addrKind) (string, bool) {
	v, ok := d.str(b, a)
	if !ok {
		return "", false
	}
	if msg := checkAddr(v, k); msg != "" {
		d.addf(a.Expr.Range(), "%s%s = %q: %s", b.prefix, a.Name, v, msg)
		return "", false
	}
	return v, true
}

// servers decodes the client's server key: a string or a list of them.
func (d *decoder) servers(top *body, a *hclsyntax.Attribute) []string {
	v, ok := d.eval(top, a)
	if !ok {
		return nil
	}
	var elems []element
	if v.Type().IsPrimitiveType() {
		s, ok := d.str(top, a)
		if !ok {
			return nil
		}
		elems = []element{{s: s, rng: a.Expr.Range()}}
	} else if elems, ok = d.strElems(top, a, v); !ok {
		return nil
	}
	if len(elems) == 0 {
		d.addf(a.Expr.Range(), `server lists no addresses (give at least one: server = "host:port")`)
		return nil
	}
	out := make([]string, 0, len(elems))
	for i, e := range elems {
		if msg := checkAddr(e.s, dialAddr); msg != "" {
			key := "server"
			if len(elems) > 1 || !v.Type().IsPrimitiveType() {
				key = fmt.Sprintf("server[%d]", i)
			}
			d.addf(e.rng, "%s = %q: %s", key, e.s, msg)
			ok = false
		}
		out = append(out, e.s)
	}
	if !ok {
		return nil
	}
	return out
}

// checkAddr returns what is wrong with addr as an address of kind k, or "".
func checkAddr(addr string, k addrKind) string {
	example := `"127.0.0.1:22", "db.internal:5432" or "[::1]:22"`
	if k == listenAddr {
		example = `"127.0.0.1:2222", ":8443" or "[::1]:2222"`
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		why := err.Error()
		if errors.As(err, &ae) {
			why = ae.Err
		}
		return fmt.Sprintf("%s (write host:port, e.g. %s; put IPv6 addresses in brackets)", why, example)
	}
	if host == "" && k != listenAddr {
		return fmt.Sprintf("missing host (e.g. %s)", example)
	}
	if strings.HasPrefix(addr, "[") {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.Is6() || ip.Is4In6() && !strings.Contains(host, ":") {
			return fmt.Sprintf("%q in brackets is not an IPv6 address (brackets are only for IPv6; e.g. %s)", host, example)
		}
	} else if strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == '/' || r == '\\' || r == 0x7f }) {
		return fmt.Sprintf("host %q is not a host name or IP address (e.g. %s)", host, example)
	}
	if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
		return fmt.Sprintf("port %q is not a number from 1 to 65535 (e.g. %s)", port, example)
	}
	n, _ := strconv.Atoi(port)
	switch {
	case n > 65535:
		return fmt.Sprintf("port %d is out of range (use 1 to 65535)", n)
	case n == 0 && k != listenAddr:
		return "port 0 cannot be dialed (use 1 to 65535)"
	}
	return ""
}

// hostOf returns the host part of a valid host:port address.
func hostOf(addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	return host
}

// duration decodes a as a positive Go duration string.
func (d *decoder) duration(b *body, a *hclsyntax.Attribute) (time.Duration, bool) {
	key := b.prefix + a.Name
	v, ok := d.eval(b, a)
	if !ok {
		return 0, false
	}
	if v.Type().Equals(cty.String) {
		s := v.AsString()
		dur, err := time.ParseDuration(s)
		switch {
		case err != nil:
			d.addf(a.Expr.Range(), "%s = %q is not a duration (write a number with a unit, e.g. \"10s\", \"1m30s\" or \"500ms\")", key, s)
			return 0, false
		case dur <= 0:
			d.addf(a.Expr.Range(), "%s = %q must be more than zero (e.g. \"10s\")", key, s)
			return 0, false
		}
		return dur, true
	}
	hint := ""
	if v.Type().Equals(cty.Number) {
		hint = `; a bare number has no unit: write "10s" for ten seconds`
	}
	d.addf(a.Expr.Range(), "%s must be a duration string, not %s (e.g. %s = \"10s\"%s)", key, typeName(v), a.Name, hint)
	return 0, false
}

// oneOf decodes a as one of the strings in allowed.
func (d *decoder) oneOf(b *body, a *hclsyntax.Attribute, allowed []string) (string, bool) {
	v, ok := d.str(b, a)
	if !ok {
		return "", false
	}
	if !slices.Contains(allowed, v) {
		hint := ""
		if best := nearest(v, allowed); best != "" {
			hint = fmt.Sprintf("did you mean %q? ", best)
		}
		d.addf(a.Expr.Range(), "%s%s = %q is not allowed (%suse one of: %s)", b.prefix, a.Name, v, hint, strings.Join(allowed, ", "))
		return "", false
	}
	return v, true
}

// pemFile decodes a as the path of a readable file, made absolute.
func (d *decoder) pemFile(b *body, a *hclsyntax.Attribute) string {
	key := b.prefix + a.Name
	p, ok := d.str(b, a)
	if !ok {
		return ""
	}
	if p == "" {
		d.addf(a.Expr.Range(), "%s must not be empty (give the path of a PEM file)", key)
		return ""
	}
	p = d.pathOf(p)
	if err := readable(p); err != nil {
		d.addf(a.Expr.Range(), "cannot read %s file %s: %v (check the path and its permissions; relative paths resolve against %s)", key, p, err, d.dir)
		return ""
	}
	return p
}

// readable checks that p is a regular file this process can open.
func readable(p string) error {
	f, err := os.Open(p)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return errors.New("it is a directory")
	}
	return nil
}
