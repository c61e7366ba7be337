package config

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
)

// decoder walks one parsed file and collects every problem it finds.
type decoder struct {
	file  string // the file name as given, for messages
	path  string // the file, absolute
	dir   string // relative paths resolve against this
	probs []Problem
}

// parse parses src and returns the decoder to continue with. body is nil
// when the file does not parse; d then holds the syntax errors. Validation
// does not run on a file that does not parse: its partial body would only
// add noise to the syntax errors.
func parse(filename string, src []byte) (d *decoder, body *hclsyntax.Body) {
	d = &decoder{file: filename}
	var err error
	if d.path, err = filepath.Abs(filename); err != nil {
		d.addf(hcl.Range{}, "cannot make the config file path absolute: %v", err)
	}
	if d.dir, err = filepath.Abs(filepath.Dir(filename)); err != nil {
		d.addf(hcl.Range{}, "cannot find the config file's directory: %v", err)
	}
	src = bytes.TrimPrefix(src, []byte("\ufeff")) // some editors start files with a byte order mark
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	d.diags(diags)
	if diags.HasErrors() || f == nil {
		return d, nil
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok { // cannot happen with the native syntax parser
		d.addf(hcl.Range{}, "cannot read the file as HCL native syntax")
		return d, nil
	}
	return d, body
}

// addf records a problem at the start of rng; an empty range records it
// against the whole file.
func (d *decoder) addf(rng hcl.Range, format string, args ...any) {
	d.probs = append(d.probs, Problem{
		File: d.file,
		Line: rng.Start.Line,
		Col:  rng.Start.Column,
		Msg:  fmt.Sprintf(format, args...),
	})
}

// diags records HCL's own error diagnostics as problems.
func (d *decoder) diags(diags hcl.Diagnostics) {
	for _, dg := range diags {
		if dg.Severity != hcl.DiagError {
			continue
		}
		var rng hcl.Range
		if dg.Subject != nil {
			rng = *dg.Subject
		}
		msg := lowerFirst(strings.TrimSuffix(dg.Summary, "."))
		if detail := strings.TrimSuffix(strings.TrimSpace(dg.Detail), "."); detail != "" {
			msg += ": " + lowerFirst(detail)
		}
		d.addf(rng, "%s", msg)
	}
}

// err returns the problems found, sorted by position, as an *Error, or
// nil when there are none. Problems about the whole file come last.
func (d *decoder) err() error {
	if len(d.probs) == 0 {
		return nil
	}
	probs := slices.Clone(d.probs)
	slices.SortStableFunc(probs, func(a, b Problem) int {
		if c := cmp.Compare(b2i(a.Line == 0), b2i(b.Line == 0)); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
	probs = slices.Compact(probs)
	return &Error{Problems: probs}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// lowerFirst lowercases the first letter of s unless it starts an acronym.
func lowerFirst(s string) string {
	r, n := utf8.DecodeRuneInString(s)
	if n == 0 || !unicode.IsUpper(r) {
		return s
	}
	if r2, _ := utf8.DecodeRuneInString(s[n:]); unicode.IsUpper(r2) {
		return s
	}
	return string(unicode.ToLower(r)) + s[n:]
}

// schema says what a body may contain.
type schema struct {
	attrs  []string
	blocks []string
	// elsewhere explains keys and blocks that belong to another kind of
	// body, to say more than "unknown key".
	elsewhere map[string]string
}

// commonKeys are the top-level keys both configs take beyond the basics.
var commonKeys = []string{"reload_interval", "expiry_warning", "ping_after", "dead_after", "drain_timeout", "max_streams_per_session", "max_session_buffer", "header_timeout", "resume_window", "dscp"}

var (
	serverTop = schema{
		attrs: append([]string{"listen", "handshake_timeout", "max_handshakes", "max_handshakes_per_source", "dial_timeout", "log_level", "log_format",
			"max_sessions", "max_sessions_per_identity"}, commonKeys...),
		blocks: []string{"tls", "service", "forward", "admin"},
		elsewhere: map[string]string{
			"server":           `server is a client key (the server accepts connections on listen = "host:port")`,
			"session_wait":     "session_wait is only for the client (remove it)",
			"bulk_connections": "bulk_connections is only for the client (remove it)",
			"bulk_spread":      "bulk_spread is only for the client (remove it)",
		},
	}
	clientTop = schema{
		attrs:  append([]string{"server", "handshake_timeout", "dial_timeout", "log_level", "log_format", "session_wait", "bulk_connections", "bulk_spread"}, commonKeys...),
		blocks: []string{"tls", "service", "forward", "admin"},
		elsewhere: map[string]string{
			"listen":                    `listen is a server key (the client connects to server = "host:port"; put listeners in forward blocks)`,
			"max_handshakes":            "max_handshakes is only for the server (remove it)",
			"max_handshakes_per_source": "max_handshakes_per_source is only for the server (remove it)",
			"max_sessions":              "max_sessions is only for the server (remove it)",
			"max_sessions_per_identity": "max_sessions_per_identity is only for the server (remove it)",
		},
	}
	serverTLS = schema{
		attrs: []string{"cert", "key", "ca", "crl", "crl_stale"},
		elsewhere: map[string]string{
			"server_name": "server_name is only for the client's tls block (remove it)",
			"verify":      "verify is for the client; the server's allow lists are in its service blocks",
		},
	}
	clientTLS = schema{
		attrs: []string{"cert", "key", "ca", "server_name", "crl", "crl_stale", "verify"},
	}
	serviceBody = schema{
		attrs: []string{"target", "allow", "class", "source", "ttl", "dscp", "proxy_protocol", "idle_timeout", "resume_window"},
	}
	serverForward = schema{
		attrs: []string{"listen", "service", "client", "class", "max_conns", "idle_timeout", "min_ttl", "dscp", "resume_window"},
	}
	adminBody = schema{
		attrs: []string{"listen", "public"},
	}
	clientForward = schema{
		attrs: []string{"listen", "service", "class", "max_conns", "idle_timeout", "min_ttl", "dscp", "resume_window"},
		elsewhere: map[string]string{
			"client": "client is only for the server's forwards (remove it: a client's forwards always use its own session)",
		},
	}
)

// body is the known content of one body: its attributes by name and its
// blocks in file order.
type body struct {
	what   string    // "the server config", "the tls block", `service "echo"`
	prefix string    // prepended to key names in messages: "", "tls.", `service "echo" `
	at     hcl.Range // where a missing key is reported; empty for the file
	attrs  map[string]*hclsyntax.Attribute
	blocks []*hclsyntax.Block
}

func (b *body) attr(name string) *hclsyntax.Attribute { return b.attrs[name] }

// content checks src against s, reporting unknown keys and blocks, and
// returns what is left.
func (d *decoder) content(src *hclsyntax.Body, s schema, what, prefix string, at hcl.Range) *body {
	b := &body{what: what, prefix: prefix, at: at, attrs: map[string]*hclsyntax.Attribute{}}
	for name, a := range src.Attributes {
		switch {
		case slices.Contains(s.attrs, name):
			b.attrs[name] = a
		case slices.Contains(s.blocks, name):
			d.addf(a.NameRange, "%s is a block, not a key (write %s { ... } without =)", name, blockExample(name))
		case s.elsewhere[name] != "":
			d.addf(a.NameRange, "%s", s.elsewhere[name])
		default:
			d.addf(a.NameRange, "unknown key %q in %s (%s)", name, what, allowed(name, s))
		}
	}
	for _, blk := range src.Blocks {
		switch {
		case slices.Contains(s.blocks, blk.Type):
			b.blocks = append(b.blocks, blk)
		case slices.Contains(s.attrs, blk.Type):
			d.addf(blk.TypeRange, "%s is a key, not a block (write %s = ...)", blk.Type, blk.Type)
		case s.elsewhere[blk.Type] != "":
			d.addf(blk.TypeRange, "%s", s.elsewhere[blk.Type])
		default:
			d.addf(blk.TypeRange, "unknown block %q in %s (%s)", blk.Type, what, allowed(blk.Type, s))
		}
	}
	return b
}

func blockExample(name string) string {
	switch name {
	case "service", "forward":
		return name + ` "name"`
	}
	return name
}

// allowed says what s allows, suggesting the nearest name to got.
func allowed(got string, s schema) string {
	var parts []string
	if len(s.attrs) > 0 {
		parts = append(parts, "allowed keys: "+strings.Join(s.attrs, ", "))
	} else {
		parts = append(parts, "no keys are allowed here")
	}
	if len(s.blocks) > 0 {
		parts = append(parts, "allowed blocks: "+strings.Join(s.blocks, ", "))
	} else {
		parts = append(parts, "no blocks are allowed here")
	}
	list := strings.Join(parts, "; ")
	if best := nearest(got, slices.Concat(s.attrs, s.blocks)); best != "" {
		return fmt.Sprintf("did you mean %q? %s", best, list)
	}
	return list
}

// nearest returns the candidate closest to got if it is close enough to be
// a typo, or "".
func nearest(got string, candidates []string) string {
	best, bestDist := "", math.MaxInt
	lower := strings.ToLower(got)
	for _, c := range candidates {
		dist := levenshtein(lower, c)
		if len(lower) >= 3 && len(c) >= 3 && (strings.HasPrefix(lower, c) || strings.HasPrefix(c, lower)) {
			dist = min(dist, 1) // "warning" for "warn", "serv" for "server"
		}
		if dist < bestDist {
			best, bestDist = c, dist
		}
	}
	if bestDist > 2 || bestDist >= utf8.RuneCountInString(got) {
		return ""
	}
	return best
}

func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := range ra {
		cur[0] = i + 1
		for j := range rb {
			cost := 1
			if ra[i] == rb[j] {
				cost = 0
			}
			cur[j+1] = min(prev[j+1]+1, cur[j]+1, prev[j]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// missing reports a required key absent from b.
func (d *decoder) missing(b *body, key, example string) {
	d.addf(b.at, "missing required key %s in %s (add %s)", key, b.what, example)
}

// eval evaluates a's expression to a known, non-null constant.
func (d *decoder) eval(b *body, a *hclsyntax.Attribute) (cty.Value, bool) {
	key := b.prefix + a.Name
	if t, ok := a.Expr.(*hclsyntax.ScopeTraversalExpr); ok && len(t.Traversal) == 1 {
		word := t.Traversal.RootName()
		d.addf(a.Expr.Range(), "%s = %s: a bare word is a variable reference, and there are none (to give a string, quote it: %s = %q)", key, word, a.Name, word)
		return cty.NilVal, false
	}
	var complex hcl.Range
	hclsyntax.VisitAll(a.Expr, func(n hclsyntax.Node) hcl.Diagnostics {
		switch n := n.(type) {
		case *hclsyntax.ForExpr, *hclsyntax.TemplateJoinExpr:
			if complex.Empty() {
				complex = n.Range()
			}
		}
		return nil
	})
	if !complex.Empty() {
		d.addf(complex, "%s must be a constant: for expressions are not supported in the config (write the values out)", key)
		return cty.NilVal, false
	}
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		d.diags(diags)
		return cty.NilVal, false
	}
	v, _ = v.UnmarkDeep()
	if v.IsNull() {
		d.addf(a.Expr.Range(), "%s must not be null (give a value, or remove the line)", key)
		return cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		d.addf(a.Expr.Range(), "%s must be a constant (write the value out)", key)
		return cty.NilVal, false
	}
	return v, true
}

// typeName names v's type for messages, with an article.
func typeName(v cty.Value) string {
	t := v.Type()
	switch {
	case t == cty.String:
		return "a string"
	case t == cty.Number:
		return "a number"
	case t == cty.Bool:
		return "a bool"
	case t.IsTupleType() || t.IsListType() || t.IsSetType():
		return "a list"
	case t.IsObjectType() || t.IsMapType():
		return "an object"
	}
	return "a " + t.FriendlyName()
}

// str decodes a as a string.
func (d *decoder) str(b *body, a *hclsyntax.Attribute) (string, bool) {
	v, ok := d.eval(b, a)
	if !ok {
		return "", false
	}
	if v.Type() != cty.String {
		hint := "quote it"
		if v.Type().IsTupleType() {
			hint = "give one value, in quotes"
		}
		d.addf(a.Expr.Range(), "%s%s must be a string, not %s (%s)", b.prefix, a.Name, typeName(v), hint)
		return "", false
	}
	return v.AsString(), true
}

// element is one string of a list, with where it was written.
type element struct {
	s   string
	rng hcl.Range
}

// strList decodes a as a list of strings.
func (d *decoder) strList(b *body, a *hclsyntax.Attribute) ([]element, bool) {
	v, ok := d.eval(b, a)
	if !ok {
		return nil, false
	}
	return d.strElems(b, a, v)
}

func (d *decoder) strElems(b *body, a *hclsyntax.Attribute, v cty.Value) ([]element, bool) {
	key := b.prefix + a.Name
	t := v.Type()
	if !t.IsTupleType() && !t.IsListType() && !t.IsSetType() {
		d.addf(a.Expr.Range(), "%s must be a list of strings, not %s (write %s = [\"...\", \"...\"])", key, typeName(v), a.Name)
		return nil, false
	}
	vals := v.AsValueSlice()
	var exprs []hclsyntax.Expression
	if tc, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok && len(tc.Exprs) == len(vals) {
		exprs = tc.Exprs
	}
	out := make([]element, 0, len(vals))
	ok := true
	for i, ev := range vals {
		rng := a.Expr.Range()
		if exprs != nil {
			rng = exprs[i].Range()
		}
		switch {
		case ev.IsNull():
			d.addf(rng, "%s[%d] must not be null (give a string, or remove it)", key, i)
			ok = false
		case ev.Type() != cty.String:
			d.addf(rng, "%s[%d] must be a string, not %s (quote it)", key, i, typeName(ev))
			ok = false
		default:
			out = append(out, element{s: ev.AsString(), rng: rng})
		}
	}
	return out, ok
}

var maxInt32 = big.NewFloat(math.MaxInt32)

// integer decodes a as a whole number.
func (d *decoder) integer(b *body, a *hclsyntax.Attribute) (int, bool) {
	v, ok := d.eval(b, a)
	if !ok {
		return 0, false
	}
	key := b.prefix + a.Name
	if v.Type() != cty.Number {
		d.addf(a.Expr.Range(), "%s must be a number, not %s (write it without quotes)", key, typeName(v))
		return 0, false
	}
	f := v.AsBigFloat()
	if !f.IsInt() {
		d.addf(a.Expr.Range(), "%s must be a whole number, got %s", key, f.Text('g', 10))
		return 0, false
	}
	if new(big.Float).Abs(f).Cmp(maxInt32) > 0 {
		d.addf(a.Expr.Range(), "%s is too large, got %s (at most %d)", key, f.Text('g', 10), math.MaxInt32)
		return 0, false
	}
	n, _ := f.Int64()
	return int(n), true
}
