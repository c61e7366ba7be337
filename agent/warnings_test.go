package agent

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestSetupWarnings(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		mode   os.FileMode
		admin  string
		public bool
		n      int      // warnings
		says   []string // in their text
	}{
		{"quiet", 0o600, "127.0.0.1:9090", false, 0, nil},
		{"owner read only", 0o400, "", false, 0, nil},
		{"group readable", 0o640, "", false, 1, []string{"mode 0640", "chmod 600"}},
		{"world readable", 0o644, "", false, 1, []string{"mode 0644"}},
		{"group writable", 0o620, "", false, 1, []string{"mode 0620"}},
		{"public beyond loopback", 0o600, "0.0.0.0:9090", true, 1, []string{"public = true", "without authentication", "0.0.0.0:9090"}},
		{"public all interfaces", 0o600, ":9090", true, 1, []string{"without authentication"}},
		{"public on loopback", 0o600, "[::1]:9090", true, 0, nil},
		{"both", 0o644, "192.0.2.1:9090", true, 2, []string{"mode 0644", "without authentication"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if runtime.GOOS == "windows" && tc.mode&0o077 != 0 {
				t.Skip("no mode bits on Windows")
			}
			key := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".key")
			if err := os.WriteFile(key, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(key, tc.mode); err != nil {
				t.Fatal(err)
			}
			got := SetupWarnings(key, tc.admin, tc.public)
			if len(got) != tc.n {
				t.Fatalf("warnings %q, want %d", got, tc.n)
			}
			for _, w := range tc.says {
				if !strings.Contains(strings.Join(got, "\n"), w) {
					t.Errorf("warnings %q lack %q", got, w)
				}
			}
		})
	}
}
