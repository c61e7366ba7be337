package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ./test.sh runs every part even when one fails, prints one line per part,
// and fails at the end if any part failed. It runs here against a fake go
// that fails the chosen part, in a copy of the tree's layout.
func TestTestShRunsEveryPart(t *testing.T) {
	t.Parallel()
	script, err := filepath.Abs("../test.sh")
	if err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, failIn string // failIn: the directory where the fake `go test` fails ("" none)
		wantCode     int
		wantLines    []string
	}{
		{"all pass", "", 0, []string{"passed  gofmt", "passed  go vet (main module)", "passed  go test -race (main module", "passed  yamux", "passed  interop", "all 5 parts passed"}},
		{"main module fails", ".", 1, []string{"passed  gofmt", "FAILED  go test -race (main module", "passed  yamux", "passed  interop", "test.sh: FAILED"}},
		{"yamux fails", "third_party/yamux", 1, []string{"passed  go test -race (main module", "FAILED  yamux", "passed  interop", "test.sh: FAILED"}},
		{"gofmt cannot parse", "", 1, []string{"FAILED  gofmt", "passed  go test -race (main module", "passed  yamux", "passed  interop", "test.sh: FAILED"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root, bin := t.TempDir(), t.TempDir()
			for _, d := range []string{"third_party/yamux", "interop"} {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(root, "test.sh"), body, 0o755); err != nil {
				t.Fatal(err)
			}
			log := filepath.Join(bin, "calls")
			failDir := ""
			if tc.failIn != "" {
				failDir = filepath.Join(root, tc.failIn)
			}
			fakeGo := "#!/bin/sh\necho \"$PWD $*\" >> " + log + "\n" +
				"if [ \"$1\" = test ] && [ \"$PWD\" = \"" + failDir + "\" ]; then echo 'FAIL fake'; exit 1; fi\n"
			if err := os.WriteFile(filepath.Join(bin, "go"), []byte(fakeGo), 0o755); err != nil {
				t.Fatal(err)
			}
			gofmtExit := "0"
			if strings.HasPrefix(tc.name, "gofmt") {
				gofmtExit = "2" // as gofmt -l does on a syntax error, printing nothing to stdout
			}
			if err := os.WriteFile(filepath.Join(bin, "gofmt"), []byte("#!/bin/sh\necho 'x.go:1:1: expected package' >&2\nexit "+gofmtExit+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "test.sh"))
			cmd.Env = append(os.Environ(), "PATH="+bin+":/usr/bin:/bin", "GIT_DIR="+filepath.Join(root, "no-git"))
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != tc.wantCode {
				t.Fatalf("exit %d (%v), want %d; output:\n%s", code, err, tc.wantCode, out)
			}
			calls, _ := os.ReadFile(log)
			for _, d := range []string{root, filepath.Join(root, "third_party/yamux"), filepath.Join(root, "interop")} {
				if !strings.Contains(string(calls), d+" test -race") {
					t.Errorf("go test did not run in %s; calls:\n%s", d, calls)
				}
			}
			summary := string(out[strings.LastIndex(string(out), "=== summary"):])
			for _, w := range tc.wantLines {
				if !strings.Contains(summary, w) {
					t.Errorf("summary lacks %q:\n%s", w, summary)
				}
			}
		})
	}
}
