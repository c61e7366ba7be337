package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

const alertRules = "../packaging/prometheus/tunnel-alerts.yml"

// The shipped alert rules name only metrics and labels the agents export,
// and label values they use: a renamed metric must fail here, not leave an
// alert that never fires.
func TestAlertRulesUseRealMetrics(t *testing.T) {
	t.Parallel()
	rules, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	labels := exportedMetrics(t)
	whats := expiryKinds(t)
	selector := regexp.MustCompile(`\b(tunnel_[a-z_]+)(\{[^}]*\})?`)
	matcher := regexp.MustCompile(`(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	found := 0
	for _, line := range strings.Split(string(rules), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		for _, m := range selector.FindAllStringSubmatch(line, -1) {
			found++
			name, sel := m[1], m[2]
			known, ok := labels[name]
			if !ok {
				t.Errorf("the rules use %s, which the agents do not export (line %q)", name, strings.TrimSpace(line))
				continue
			}
			for _, lm := range matcher.FindAllStringSubmatch(sel, -1) {
				label, op, value := lm[1], lm[2], lm[3]
				if !slices.Contains(known, label) {
					t.Errorf("%s has no label %s (it has %v)", name, label, known)
				}
				var values []string
				switch label {
				case "agent":
					values = []string{"server", "client"}
				case "what":
					values = whats
				default:
					continue
				}
				for v := range strings.SplitSeq(value, "|") {
					if op == "=" || op == "=~" {
						if !slices.Contains(values, v) {
							t.Errorf("%s{%s%s%q}: %q is not a value the agents set (they set %q)", name, label, op, value, v, values)
						}
					}
				}
			}
		}
	}
	if found < 10 {
		t.Fatalf("found %d metric selectors in the rules' expressions; the test no longer reads them", found)
	}
}

// exportedMetrics is every tunnel_ metric the agents register, with its
// label names.
func exportedMetrics(t *testing.T) map[string][]string {
	m := admin.NewMetrics("server")
	desc := regexp.MustCompile(`fqName: "([^"]+)".*constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}`)
	out := map[string][]string{}
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok {
			continue
		}
		ch := make(chan *prometheus.Desc, 16)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			dm := desc.FindStringSubmatch(d.String())
			if dm == nil {
				t.Fatalf("cannot read %s", d)
			}
			var labels []string
			for _, kv := range strings.Split(dm[2], ",") {
				if k, _, ok := strings.Cut(kv, "="); ok {
					labels = append(labels, strings.TrimSpace(k))
				}
			}
			for _, l := range strings.Split(dm[3], ",") {
				if l = strings.TrimSpace(l); l != "" {
					labels = append(labels, l)
				}
			}
			out[dm[1]] = labels
		}
	}
	if len(out) < 10 {
		t.Fatalf("read %d metrics from admin.Metrics: %v", len(out), out)
	}
	return out
}

// expiryKinds is the values of the expiry metric's "what" label: those of
// a policy with a certificate, a CA and a CRL.
func expiryKinds(t *testing.T) []string {
	dir := t.TempDir()
	ca, err := pki.NewRootCA(pki.Options{CommonName: "alerts CA"})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueClient(pki.Options{CommonName: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	caFile, cert, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "edge-1.crt"), filepath.Join(dir, "edge-1.key")
	if err := os.WriteFile(caFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := leaf.WriteFiles(cert, key); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	res, err := ca.Revoke(dir, nil, 0, now, now.Add(7*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ssl.LoadPolicy(ssl.PolicySpec{Cert: cert, Key: key, CA: caFile, CRLs: []string{res.CRLPath}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range p.Expiries() {
		if !slices.Contains(out, e.What) {
			out = append(out, e.What)
		}
	}
	return out
}

// promtool checks the rules and runs their unit tests, where it is
// installed (Debian: apt-get install prometheus; CI installs it).
func TestAlertRulesPromtool(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install --no-install-recommends prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", filepath.Base(alertRules)},
		{"test", "rules", "tunnel-alerts_test.yml"},
	} {
		cmd := exec.CommandContext(ctxT(t), promtool, args...)
		cmd.Dir = filepath.Dir(alertRules)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
