package pki

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Revocation files in a CA directory, kept by (*Cert).Revoke.
const (
	// CRLFile is the CRL the CA signs: copy it to the agents' tls.crl.
	CRLFile = "ca.crl"
	// RevokedFile lists the revoked serials, one a line:
	// "SERIAL TIME [REASON]" (colon-separated hex, RFC 3339, reason name).
	// Lines starting with # are comments. It is the source of truth the
	// CRL is rebuilt from each time.
	RevokedFile = "revoked.txt"
	// CRLNumberFile holds the number of the last CRL written (decimal).
	CRLNumberFile = "crlnumber"

	// DefaultCRLValidity is how long a new CRL stays fresh (its nextUpdate).
	DefaultCRLValidity = 7 * 24 * time.Hour
)

// ErrCRLVersion1 is returned by LoadCRL for a version 1 CRL.
//
// We refuse version 1 on purpose: Go's parser (x509.ParseRevocationList)
// does not read it, and a v1 CRL carries neither the authority key
// identifier that ties it to one CA key nor a CRL number, so a replayed
// older CRL could not be told from a newer one.
var ErrCRLVersion1 = errors.New("version 1 CRL is not supported: produce a version 2 CRL " +
	"(`cert revoke --ca-dir DIR` writes one; with `openssl ca -gencrl`, set `crl_extensions = crl_ext` " +
	"in the [ca] section of openssl.cnf with a [crl_ext] section holding " +
	"`authorityKeyIdentifier=keyid:always`, and keep a crlnumber file)")

// LoadCRL reads one CRL in PEM ("X509 CRL" block) or DER. Version 1 CRLs
// are refused with ErrCRLVersion1, which says how to make a version 2 one.
// The caller adds the file name; the signature is not checked here
// (use CheckSignatureFrom with the issuing CA).
func LoadCRL(data []byte) (*x509.RevocationList, error) {
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "X509 CRL" {
			return nil, fmt.Errorf("PEM block is %q, want \"X509 CRL\"", block.Type)
		}
		der = block.Bytes
	} else if bytes.Contains(data, []byte("-----BEGIN")) {
		return nil, errors.New("malformed PEM: no complete \"X509 CRL\" block")
	}
	list, err := x509.ParseRevocationList(der)
	if err != nil {
		if strings.Contains(err.Error(), "unsupported crl version") && !strings.Contains(err.Error(), "version:") {
			return nil, ErrCRLVersion1
		}
		return nil, fmt.Errorf("parse CRL: %w", err)
	}
	return list, nil
}

// NewCRL returns a version 2 CRL in PEM signed by ca, valid from now until
// nextUpdate, with the given CRL number (which must be greater than that of
// any CRL the CA signed before).
func NewCRL(ca *Cert, entries []x509.RevocationListEntry, number *big.Int, nextUpdate time.Time) ([]byte, error) {
	return ca.NewCRL(entries, number, time.Now().UTC().Truncate(time.Second), nextUpdate)
}

// Revocation reasons (RFC 5280 CRLReason) that `cert revoke --reason`
// accepts. certificateHold and removeFromCRL are left out: revocation here
// is final and there are no delta CRLs.
var reasons = []struct {
	name string
	code int
}{
	{"unspecified", 0}, {"keyCompromise", 1}, {"cACompromise", 2}, {"affiliationChanged", 3},
	{"superseded", 4}, {"cessationOfOperation", 5}, {"privilegeWithdrawn", 9},
}

// ParseReason turns a CRLReason name (case-insensitive, e.g.
// "keyCompromise") into its code.
func ParseReason(s string) (int, error) {
	for _, r := range reasons {
		if strings.EqualFold(r.name, s) {
			return r.code, nil
		}
	}
	return 0, fmt.Errorf("unknown revocation reason %q: want one of %s", s, strings.Join(ReasonNames(), ", "))
}

// ReasonNames lists the reasons ParseReason accepts.
func ReasonNames() []string {
	var out []string
	for _, r := range reasons {
		out = append(out, r.name)
	}
	return out
}

// ReasonName is the RFC 5280 name of a CRLReason code.
func ReasonName(code int) string {
	for _, r := range reasons {
		if r.code == code {
			return r.name
		}
	}
	switch code {
	case 6:
		return "certificateHold"
	case 8:
		return "removeFromCRL"
	case 10:
		return "aACompromise"
	}
	return fmt.Sprintf("reason(%d)", code)
}

// FormatSerial prints a serial number as colon-separated upper-case hex
// ("0A:1B:..."), as `cert inspect` and `openssl x509 -text` print it.
func FormatSerial(n *big.Int) string {
	b := n.Bytes()
	if len(b) == 0 {
		return "00"
	}
	var sb strings.Builder
	for i, x := range b {
		if i > 0 {
			sb.WriteByte(':')
		}
		fmt.Fprintf(&sb, "%02X", x)
	}
	return sb.String()
}

// ParseSerial reads a serial number written the way operators find it:
//
//   - hex with colons, as `cert inspect` prints it: 0A:1B:2C
//   - hex with a 0x prefix, or "serial=" as `openssl x509 -serial` prints it: 0x0A1B2C, serial=0A1B2C
//   - hex without colons if it holds a letter a-f: 0A1B2C
//   - decimal with a "dec:" prefix: dec:662316
//
// A bare string of digits (1000) is refused as ambiguous: read as the wrong
// base it would revoke some other certificate and leave this one trusted.
func ParseSerial(s string) (*big.Int, error) {
	in := strings.TrimSpace(s)
	lower := strings.ToLower(in)
	base := 0
	switch {
	case strings.HasPrefix(lower, "dec:"):
		lower, base = lower[len("dec:"):], 10
	case strings.HasPrefix(lower, "0x"):
		lower, base = lower[2:], 16
	case strings.HasPrefix(lower, "serial="):
		lower, base = lower[len("serial="):], 16
	case strings.Contains(lower, ":"), strings.ContainsAny(lower, "abcdef"):
		base = 16
	}
	if base == 16 {
		lower = strings.ReplaceAll(lower, ":", "")
	}
	if lower == "" {
		return nil, fmt.Errorf("serial %q is empty", s)
	}
	if base == 0 {
		if strings.Trim(lower, "0123456789") == "" {
			return nil, fmt.Errorf("serial %q is ambiguous (hex or decimal?): write 0x%s for hex, as `openssl x509 -serial` prints it, or dec:%s for decimal", s, in, in)
		}
		return nil, fmt.Errorf("serial %q is not a number: write it as `cert inspect` prints it (hex, e.g. 0A:1B:2C), or dec:NNN for decimal", s)
	}
	n, ok := new(big.Int).SetString(lower, base)
	if !ok || n.Sign() < 0 {
		what := "hexadecimal"
		if base == 10 {
			what = "decimal"
		}
		return nil, fmt.Errorf("serial %q is not %s: write it as `cert inspect` prints it (hex, e.g. 0A:1B:2C), or dec:NNN for decimal", s, what)
	}
	return n, nil
}

// RevokeResult says what (*Cert).Revoke did.
type RevokeResult struct {
	Number  *big.Int   // the new CRL's number
	Added   []*big.Int // serials revoked now
	Already []*big.Int // serials that were revoked before (left as they were)
	Total   int        // serials on the new CRL
	CRLPath string     // where the CRL was written
	CRL     []byte     // the CRL in PEM
}

// Revoke adds serials to the revocation list kept in dir (RevokedFile) and
// writes dir/ca.crl: a version 2 CRL of every revoked serial, signed by ca,
// numbered one above the last CRL written (CRLNumberFile, or the number of
// the existing ca.crl, whichever is larger), valid from now to nextUpdate.
// With no serials it re-signs the current list: run it before nextUpdate.
// reason is a CRLReason code (0: none recorded). dir is normally the
// directory ca was loaded from; one operator at a time (there is no lock).
func (ca *Cert) Revoke(dir string, serials []*big.Int, reason int, now, nextUpdate time.Time) (*RevokeResult, error) {
	if !nextUpdate.After(now) {
		return nil, fmt.Errorf("revoke: nextUpdate %s is not after now %s", nextUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	revokedPath := filepath.Join(dir, RevokedFile)
	entries, err := ReadRevoked(revokedPath)
	if err != nil {
		return nil, err
	}
	res := &RevokeResult{CRLPath: filepath.Join(dir, CRLFile)}
	now = now.UTC().Truncate(time.Second)
	for _, n := range serials {
		if slices.ContainsFunc(entries, func(e x509.RevocationListEntry) bool { return e.SerialNumber.Cmp(n) == 0 }) {
			res.Already = append(res.Already, n)
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: now, ReasonCode: reason})
		res.Added = append(res.Added, n)
	}
	res.Total = len(entries)

	last, err := lastCRLNumber(dir)
	if err != nil {
		return nil, err
	}
	res.Number = new(big.Int).Add(last, big.NewInt(1))
	res.CRL, err = ca.NewCRL(entries, res.Number, now, nextUpdate)
	if err != nil {
		return nil, fmt.Errorf("revoke: sign the CRL with %s: %w", filepath.Join(dir, CACertFile), err)
	}
	// The number first: a crash later leaves a gap, never a reused number.
	if err := writeAtomic(filepath.Join(dir, CRLNumberFile), []byte(res.Number.String()+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	if len(res.Added) > 0 {
		if err := writeAtomic(revokedPath, formatRevoked(entries), 0o600); err != nil {
			return nil, fmt.Errorf("revoke: %w", err)
		}
	}
	if err := writeAtomic(res.CRLPath, res.CRL, 0o644); err != nil {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	return res, nil
}

// lastCRLNumber is the larger of CRLNumberFile and the existing CRL's
// number, 0 when there is neither.
func lastCRLNumber(dir string) (*big.Int, error) {
	last := new(big.Int)
	numPath := filepath.Join(dir, CRLNumberFile)
	if b, err := os.ReadFile(numPath); err == nil {
		n, ok := new(big.Int).SetString(strings.TrimSpace(string(b)), 10)
		if !ok || n.Sign() < 0 {
			return nil, fmt.Errorf("revoke: %s does not hold a CRL number (want one decimal number; put the number of the last CRL issued there, see `cert inspect %s`)", numPath, filepath.Join(dir, CRLFile))
		}
		last = n
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	crlPath := filepath.Join(dir, CRLFile)
	if b, err := os.ReadFile(crlPath); err == nil {
		crl, err := LoadCRL(b)
		if err != nil {
			return nil, fmt.Errorf("revoke: existing CRL %s: %w (move it away to start a new one; keep %s above its number)", crlPath, err, numPath)
		}
		if crl.Number != nil && crl.Number.Cmp(last) > 0 {
			last = crl.Number
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("revoke: %w", err)
	}
	return last, nil
}

// ReadRevoked reads a RevokedFile; a missing file is an empty list.
func ReadRevoked(path string) ([]x509.RevocationListEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read revocation list: %w", err)
	}
	defer f.Close()
	var out []x509.RevocationListEntry
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		bad := func(err error) error {
			return fmt.Errorf("%s:%d: %v (want \"SERIAL TIME [REASON]\", e.g. \"0A:1B 2026-01-02T03:04:05Z keyCompromise\"; fix or remove the line)", path, line, err)
		}
		if len(fields) < 2 || len(fields) > 3 {
			return nil, bad(errors.New("wrong number of fields"))
		}
		n, ok := new(big.Int).SetString(strings.ReplaceAll(fields[0], ":", ""), 16)
		if !ok || n.Sign() < 0 {
			return nil, bad(fmt.Errorf("serial %q is not colon-separated hex", fields[0]))
		}
		at, err := time.Parse(time.RFC3339, fields[1])
		if err != nil {
			return nil, bad(fmt.Errorf("revocation time %q is not RFC 3339", fields[1]))
		}
		e := x509.RevocationListEntry{SerialNumber: n, RevocationTime: at}
		if len(fields) == 3 {
			if e.ReasonCode, err = ParseReason(fields[2]); err != nil {
				return nil, bad(err)
			}
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read revocation list %s: %w", path, err)
	}
	return out, nil
}

func formatRevoked(entries []x509.RevocationListEntry) []byte {
	var b bytes.Buffer
	b.WriteString("# Revoked serials of this CA: SERIAL TIME [REASON]. `cert revoke` rebuilds ca.crl from this file.\n")
	for _, e := range entries {
		fmt.Fprintf(&b, "%s %s", FormatSerial(e.SerialNumber), e.RevocationTime.UTC().Format(time.RFC3339))
		if e.ReasonCode != 0 {
			fmt.Fprintf(&b, " %s", ReasonName(e.ReasonCode))
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// writeAtomic replaces path in one rename, so an agent reading the file
// never sees half of it.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
