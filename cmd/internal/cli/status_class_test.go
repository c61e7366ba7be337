package cli

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/tunnelworks/tunnel/admin"
)

// Each forward and service shows its class and where it came from.
func TestPrintStatusShowsClass(t *testing.T) {
	st := admin.Status{Agent: "client", Healthy: true,
		Forwards: []admin.ForwardStatus{{Name: "bgp", Listen: "127.0.0.1:1179", Class: "control", ClassFrom: "service"}},
		Services: []admin.ForwardStatus{{Name: "ssh", Target: "127.0.0.1:22", Class: "bulk", ClassFrom: "default"}},
	}
	var out bytes.Buffer
	printStatus(&out, st)
	for _, re := range []string{`(?m)^FORWARD\s+ADDRESS\s+CLASS\s`, `(?m)^bgp\s+127\.0\.0\.1:1179\s+control \(service\)\s`, `(?m)^ssh\s+127\.0\.0\.1:22\s+bulk \(default\)\s`} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("status does not match %s:\n%s", re, out.String())
		}
	}
}
