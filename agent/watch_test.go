package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

// A reload refused only because the new certificate is not valid yet is
// tried again with the same files; any other refusal waits for a change.
func TestWatchRetriesACertificateNotYetValid(t *testing.T) {
	for _, tc := range []struct {
		name  string
		err   error
		again bool
	}{
		{"not yet valid", &ssl.OwnCertError{Problems: []error{&ssl.NotYetValidError{File: "server.crt", Name: "s", NotBefore: time.Now().Add(time.Minute)}}}, true},
		{"expired", &ssl.OwnCertError{Problems: []error{errors.New("certificate server.crt (s) expired on …")}}, false},
		{"broken config", errors.New("server.hcl:1: nonsense"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "server.crt")
			if err := os.WriteFile(file, []byte("one"), 0o644); err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int32
			var seen atomic.Pointer[string] // the file as the second reload saw it
			// The first reload fails with tc.err, the next ones succeed.
			reload := func() error {
				if calls.Add(1) == 1 {
					return tc.err
				}
				if seen.Load() == nil {
					b, _ := os.ReadFile(file)
					seen.Store(new(string(b)))
				}
				return nil
			}
			// The second call is the first check: the first content is held.
			started := make(chan struct{})
			var listed atomic.Int32
			files := func() []string {
				if listed.Add(1) == 2 {
					close(started)
				}
				return []string{file}
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { watchFiles(ctx, time.Millisecond, files, reload, hclog.NewNullLogger()) })
			defer func() { cancel(); wg.Wait() }()
			<-started // the watcher has the first content
			replace(t, file, "two")
			waitFor(t, "the reload", func() bool { return calls.Load() >= 1 })
			if tc.again {
				waitFor(t, "the reload tried again", func() bool { return calls.Load() >= 2 })
				return
			}
			replace(t, file, "three")
			waitFor(t, "the reload after a change", func() bool { return seen.Load() != nil })
			if got := *seen.Load(); got != "three" {
				t.Errorf("reloaded again with the same files (%q) after %v", got, tc.err)
			}
		})
	}
}

// replace swaps file's content in one rename, so the watcher never reads
// it half written.
func replace(t *testing.T, file, content string) {
	t.Helper()
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
}
