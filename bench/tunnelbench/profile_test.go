package tunnelbench

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestCPUKind(t *testing.T) {
	for _, c := range []struct {
		sym    string
		kernel bool
		want   string
	}{
		{"crypto/internal/fips140/aes/gcm.gcmAesDec.abi0", false, "AES-GCM"},
		{"aesni_gcm_encrypt", false, "AES-GCM"}, // OpenSSL (stunnel)
		{"runtime.memmove", false, "memmove (user space)"},
		{"__memmove_avx_unaligned_erms", false, "memmove (user space)"},
		{"runtime.schedule", false, "Go runtime besides memmove"},
		{"internal/runtime/syscall/linux.Syscall6", false, "Go runtime besides memmove"},
		{"__vdso_clock_gettime", false, "Go runtime besides memmove"},
		{"crypto/tls.(*Conn).readRecordOrCCS", false, "crypto/tls framing"},
		{"github.com/hashicorp/yamux.(*Session).recvLoop", false, "yamux, mux, resume, forward"},
		{"github.com/tunnelworks/tunnel/forward.copyHalf", false, "yamux, mux, resume, forward"},
		{"io.copyBuffer", false, "other user space"},
		{"_copy_to_iter", true, "kernel: socket copies"},
		{"finish_task_switch.isra.0", true, "kernel: scheduling"},
		{"_raw_spin_unlock_irqrestore", true, "kernel: scheduling"},
		{"tcp_sendmsg_locked", true, "kernel: the rest"},
	} {
		if got := cpuKind(c.sym, c.kernel); got != c.want {
			t.Errorf("cpuKind(%q, kernel %v) = %q, want %q", c.sym, c.kernel, got, c.want)
		}
	}
}

func TestParsePerfReport(t *testing.T) {
	report := `# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 12K of event 'cpu-clock:ppp'
#
# Overhead  Symbol
# ........  ......
#
    20.00%  [.] crypto/internal/fips140/aes/gcm.gcmAesEnc.abi0
    10.50%  [k] _copy_from_iter
     9.50%  [k] _copy_to_iter
     5.00%  [.] runtime.memmove
     4.00%  [k] finish_task_switch.isra.0
     1.00%  [.] github.com/hashicorp/yamux.(*Stream).write
    50.00%  [k] tcp_sendmsg_locked

`
	got, err := parsePerfReport(report)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"AES-GCM":                     0.20,
		"kernel: socket copies":       0.20,
		"memmove (user space)":        0.05,
		"kernel: scheduling":          0.04,
		"yamux, mux, resume, forward": 0.01,
		"kernel: the rest":            0.50,
	}
	if len(got) != len(want) {
		t.Fatalf("kinds %v, want %v", got, want)
	}
	for k, v := range want {
		if math.Abs(got[k]-v) > 1e-9 {
			t.Errorf("%s: %v, want %v", k, got[k], v)
		}
	}
	if _, err := parsePerfReport("# nothing sampled\n"); err == nil {
		t.Error("a report without samples parsed")
	}
}

func TestWriteProfile(t *testing.T) {
	p := newPath("tunnel", nil, nil, nil)
	p.fig.kinds8 = map[string]float64{"AES-GCM": 0.5, "kernel: the rest": 1.25}
	q := newPath("ghostunnel", nil, nil, nil) // not profiled: no column
	var b strings.Builder
	writeProfile(&b, []*path{q, p})
	out := b.String()
	for _, want := range []string{"| CPU-s per GB | tunnel |", "| AES-GCM | 0.50 |", "| kernel: the rest | 1.25 |", "| **all** | **1.75** |"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ghostunnel") {
		t.Errorf("a path not profiled has a column:\n%s", out)
	}
	b.Reset()
	writeProfile(&b, []*path{q})
	if b.Len() != 0 {
		t.Errorf("no path profiled, yet a table: %q", b.String())
	}
}

// With perf usable here (it is not on CI machines), a recording attached
// to this process during a loopback transfer sorts its samples into
// kinds, kernel socket copies among them.
func TestProfileThisProcess(t *testing.T) {
	dir := t.TempDir()
	if err := checkProfile(dir); err != nil {
		t.Skip(err)
	}
	rec, err := startProfile([]int{os.Getpid()}, dir+"/self.data")
	if err != nil {
		t.Fatal(err)
	}
	loopbackTransfer(t, 500*time.Millisecond)
	shares, err := rec.stop()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, v := range shares {
		sum += v
	}
	if sum < 0.9 || sum > 1.01 {
		t.Errorf("shares sum to %.3f, want about 1: %v", sum, shares)
	}
	if shares["kernel: socket copies"] <= 0 {
		t.Errorf("no kernel socket copies sampled in a loopback transfer: %v", shares)
	}
}
