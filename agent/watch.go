package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/admin"
	"github.com/tunnelworks/tunnel/transport/ssl"
)

// watchFiles calls reload whenever the content of any of files() changes,
// checking every interval, until ctx ends. It exists for CRLs and
// certificates that another tool rewrites on a schedule; SIGHUP does the
// same on demand.
func watchFiles(ctx context.Context, interval time.Duration, files func() []string, reload func() error, log hclog.Logger) {
	last := fingerprint(files())
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := fingerprint(files())
		if now == last {
			continue
		}
		prev := last
		last = now
		if err := reload(); err != nil {
			LogReloadFailure(log, err, "trigger", "file change")
			if validSoon(err) {
				// The same files will do once the certificate starts: try
				// them again at the next check.
				last = prev
			}
		}
	}
}

// validSoon reports whether a reload failed only because our new
// certificate is not valid yet (issued by a CA whose clock runs ahead).
func validSoon(err error) bool {
	var own *ssl.OwnCertError
	return errors.As(err, &own) && own.Pending()
}

// fingerprint hashes the files' contents (a missing file hashes as such),
// so a rewrite with the same content does not reload.
func fingerprint(files []string) [32]byte {
	h := sha256.New()
	for _, f := range files {
		h.Write([]byte(f))
		h.Write([]byte{0})
		if fh, err := os.Open(f); err == nil {
			_, _ = io.Copy(h, fh)
			fh.Close()
		} else {
			h.Write([]byte("missing"))
		}
	}
	return [32]byte(h.Sum(nil))
}

// warnExpiries logs, now and every hour until ctx ends, whatever expires
// within window: our certificate, a CA, a CRL's next update.
func warnExpiries(ctx context.Context, window time.Duration, policy func() *ssl.Policy, log hclog.Logger, m *admin.Metrics) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		now := time.Now()
		for _, e := range policy().Expiries() {
			m.CertExpiry.WithLabelValues(e.What, e.Name).Set(float64(e.When.Unix()))
			if left := e.When.Sub(now); left < e.Window(window) {
				if left < 0 {
					log.Error(e.What+" has expired", "name", e.Name, "expired", e.When.UTC().Format(time.RFC3339))
				} else {
					log.Warn(e.What+" expires soon", "name", e.Name, "when", e.When.UTC().Format(time.RFC3339), "days_left", e.DaysLeft(now))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// IncompleteReloadError is a reload that was applied except for the
// listeners it names (a forward or the admin listener that could not be
// opened; the old one keeps serving where it could). Changes is what it
// did change, as the reloaded line says it: an incomplete reload is
// logged once, by LogReloadFailure, not as reloaded first.
type IncompleteReloadError struct {
	Err     error
	Changes string
}

func (e *IncompleteReloadError) Error() string { return "reloaded, except: " + e.Err.Error() }
func (e *IncompleteReloadError) Unwrap() error { return e.Err }

// logReloaded logs a reload published with changes, as done or, when
// some listeners could not be applied (errs), returns it as incomplete
// for the caller to log once (LogReloadFailure).
func logReloaded(log hclog.Logger, changes []string, errs ...error) error {
	if err := errors.Join(errs...); err != nil {
		return &IncompleteReloadError{Err: err, Changes: changesSentence(changes)}
	}
	log.Info("reloaded", "changes", changesSentence(changes))
	return nil
}

// LogReloadFailure says whether a failed reload changed nothing or was
// applied except for some listeners.
func LogReloadFailure(log hclog.Logger, err error, args ...any) {
	var inc *IncompleteReloadError
	if errors.As(err, &inc) {
		log.Error("reload applied except for some listeners", append(args, "changes", inc.Changes, "error", inc.Err)...)
		return
	}
	log.Error("reload failed; keeping the running configuration", append(args, "error", err)...)
}
