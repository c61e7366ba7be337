package e2e

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The README's Quick start says how to get the binaries, and every Go
// version it names is the one go.mod requires.
func TestReadmeGoVersionAndBinaries(t *testing.T) {
	t.Parallel()
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(mod)
	if m == nil {
		t.Fatal("no go line in go.mod")
	}
	want := string(m[1])
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	names := regexp.MustCompile(`Go (\d+\.\d+) or newer`).FindAllSubmatch(readme, -1)
	if len(names) == 0 {
		t.Fatal("README names no Go version")
	}
	for _, n := range names {
		if string(n[1]) != want {
			t.Errorf("README says Go %s, go.mod requires %s", n[1], want)
		}
	}
	text := string(readme)
	start := strings.Index(text, "## Quick start")
	end := strings.Index(text[start+1:], "\n## ")
	if start < 0 || end < 0 {
		t.Fatal("no Quick start section")
	}
	quick := text[start : start+1+end]
	for _, w := range []string{"packaging/build.sh", "go install ./cmd/...", "go build -o bin/ ./cmd/..."} {
		if !strings.Contains(quick, w) {
			t.Errorf("Quick start does not say %q", w)
		}
	}
}
