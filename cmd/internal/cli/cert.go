package cli

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// defaultCADir is where `cert ca create` puts a CA and where the other
// commands look for it, relative to the current directory: visible, next
// to the certificates it issues, and what the README's commands use.
const defaultCADir = "ca"

// certCommands are the cert helper's commands, in the order 'cert help'
// lists them.
var certCommands = []struct {
	name, synopsis, about string
}{
	{"ca create", `[--dir ca] [--name "Tunnel Root CA"] [--days 3650]`,
		"make a root CA: DIR/ca.crt and DIR/ca.key (0600); never overwrites a CA"},
	{"ca intermediate", "[--ca-dir ca] --out-dir OUT --name NAME [--days 3650]",
		`make an intermediate CA signed by the CA in DIR: OUT/ca.crt (the
intermediate), OUT/chain.crt (it, then its parents, the root last),
OUT/ca.key (0600); never overwrites a CA`},
	{"issue", `(--server NAME | --client NAME) [--ca-dir ca] [--out-dir .] [--dns a,b]
    [--ip x,y] [--uri spiffe://...] [--days 365]`,
		`issue a leaf, verified against the CA before anything is written:
OUT/NAME.crt (the leaf, then the intermediates when DIR is an
intermediate: use it as the agents' tls.cert) and OUT/NAME.key (0600).
Never overwrites: an existing NAME.crt or NAME.key stops it.
A server without --dns/--ip gets NAME as its DNS name (or IP).
Defaults: the CA in ./ca (as 'ca create' makes it), files into the
current directory, 365 days.`},
	{"revoke", "[--ca-dir ca] [--reason REASON] [--next-update-days 7] [SERIAL...]",
		`add the serials to DIR/revoked.txt and write DIR/ca.crl, a version 2
CRL signed by the CA whose number increases every time. Without a
SERIAL it re-signs the CRL: do that before its next update is due.
SERIAL is hex: 0A:1B:2C as 'cert inspect' prints it, 0x0A1B2C, or
0A1B2C when it holds a letter; decimal needs a prefix: dec:662316.
Bare digits (1000) are refused as ambiguous.
REASON: keyCompromise, cACompromise, affiliationChanged, superseded,
cessationOfOperation, privilegeWithdrawn, unspecified (default).`},
	{"inspect", "[--ca CA.crt] FILE",
		`show a certificate or chain (subject, names, issuer chain, serial in
hex, validity, key type, SPKI pin for allow rules) or a CRL (PEM or
DER: issuer, number, updates, revoked serials). With --ca, also check
the chain or the CRL's signature against that CA. Never prints keys.`},
}

// certUsage lists the commands whose name starts with group ("" for all,
// "ca" for the CA commands).
func certUsage(w io.Writer, prog, group string) {
	if group == "" {
		fmt.Fprintf(w, "usage: %s cert <command> [flags]\n\n", prog)
	} else {
		fmt.Fprintf(w, "usage: %s cert %s <command> [flags]\n\n", prog, group)
	}
	for _, c := range certCommands {
		if !strings.HasPrefix(c.name, group) {
			continue
		}
		fmt.Fprintf(w, "  %s %s\n", c.name, c.synopsis)
		for line := range strings.SplitSeq(c.about, "\n") {
			fmt.Fprintf(w, "        %s\n", line)
		}
	}
	fmt.Fprintf(w, "\n'%s cert COMMAND -h' shows a command's flags and defaults.\nUsage errors exit 2, other failures 1.\n", prog)
}

// certCmd is the `cert` helper: one implementation in both binaries.
func certCmd(prog string, args []string, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 0:
		certUsage(stderr, prog, "")
		return exitUsage
	case isHelp(args[0]):
		certUsage(stdout, prog, "")
		return exitOK
	case args[0] == "ca" && len(args) == 1:
		fmt.Fprintf(stderr, "%s cert ca: which one? create or intermediate\n", prog)
		certUsage(stderr, prog, "ca")
		return exitUsage
	case args[0] == "ca" && isHelp(args[1]):
		certUsage(stdout, prog, "ca")
		return exitOK
	}
	name, rest := args[0], args[1:]
	if name == "ca" {
		name, rest = "ca "+args[1], args[2:]
	}
	var err error
	switch name {
	case "ca create":
		err = certCACreate(prog, rest, stdout, stderr)
	case "ca intermediate":
		err = certCAIntermediate(prog, rest, stdout, stderr)
	case "issue":
		err = certIssue(prog, rest, stdout, stderr)
	case "revoke":
		err = certRevoke(prog, rest, stdout, stderr)
	case "inspect":
		err = certInspect(prog, rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "%s cert: unknown command %q\n", prog, name)
		certUsage(stderr, prog, "")
		return exitUsage
	}
	var ue usageError
	switch {
	case err == nil, errors.Is(err, errHelp):
		return exitOK
	case errors.Is(err, errBadFlags):
		return exitUsage
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s cert: %s (see '%s cert %s -h')\n", prog, ue.msg, prog, name)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "%s cert: %v\n", prog, err)
		return exitFailure
	}
}

// usageError is a mistake on the command line (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func certUsagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// certFlags is the flag set of "cert NAME", whose usage is its entry in
// certCommands.
func certFlags(prog, name string) *flag.FlagSet {
	for _, c := range certCommands {
		if c.name == name {
			return newFlagSet(prog, "cert "+name, strings.ReplaceAll(c.synopsis, "\n    ", " "), c.about)
		}
	}
	panic("cert: no command " + name)
}

const certMaxDays = 100 * 365

func certDays(flagName string, n int) (time.Duration, error) {
	if n < 1 || n > certMaxDays {
		return 0, certUsagef("--%s %d: want 1 to %d days", flagName, n, certMaxDays)
	}
	return time.Duration(n) * 24 * time.Hour, nil
}

func certCACreate(prog string, args []string, stdout, stderr io.Writer) error {
	fs := certFlags(prog, "ca create")
	dir := fs.String("dir", defaultCADir, "directory for ca.crt and ca.key (created 0700)")
	name := fs.String("name", "Tunnel Root CA", "the CA's common name")
	n := fs.Int("days", 3650, "validity in days")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	switch {
	case *dir == "":
		return certUsagef("ca create: --dir must not be empty")
	case len(pos) > 0:
		return certUsagef("ca create: unexpected argument %q", pos[0])
	case strings.TrimSpace(*name) == "":
		return certUsagef("ca create: --name must not be empty")
	}
	validity, err := certDays("days", *n)
	if err != nil {
		return err
	}
	ca, err := pki.NewRootCA(pki.Options{CommonName: *name, Validity: validity})
	if err != nil {
		return err
	}
	if err := ca.WriteCAFiles(*dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "root CA %q written to %s, key %s (0600; keep it off the tunnel hosts)\nvalid until %s; pin %s\n",
		*name, filepath.Join(*dir, pki.CACertFile), filepath.Join(*dir, pki.CAKeyFile),
		ca.Cert.NotAfter.UTC().Format(time.DateOnly), pki.SPKIPin(ca.Cert))
	caFlag := ""
	if *dir != defaultCADir {
		caFlag = " --ca-dir " + *dir
	}
	fmt.Fprintf(stdout, "next: %[1]s cert issue%[2]s --server HOSTNAME, and %[1]s cert issue%[2]s --client NAME for each client\n", prog, caFlag)
	return nil
}

func certCAIntermediate(prog string, args []string, stdout, stderr io.Writer) error {
	fs := certFlags(prog, "ca intermediate")
	caDir := fs.String("ca-dir", defaultCADir, "directory of the signing CA")
	out := fs.String("out-dir", "", "directory for the intermediate (required; created 0700)")
	name := fs.String("name", "", "the intermediate's common name (required)")
	n := fs.Int("days", 3650, "validity in days")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	switch {
	case *caDir == "" || *out == "" || strings.TrimSpace(*name) == "":
		return certUsagef("ca intermediate: --out-dir OUT and --name NAME are required (and --ca-dir, if not %s)", defaultCADir)
	case len(pos) > 0:
		return certUsagef("ca intermediate: unexpected argument %q", pos[0])
	case filepath.Clean(*caDir) == filepath.Clean(*out):
		return certUsagef("ca intermediate: --out-dir must differ from --ca-dir")
	}
	validity, err := certDays("days", *n)
	if err != nil {
		return err
	}
	parent, err := pki.LoadCA(*caDir)
	if err != nil {
		return err
	}
	inter, err := parent.NewIntermediate(pki.Options{CommonName: *name, Validity: validity})
	if err != nil {
		return err
	}
	certWarnOutlives(prog, stderr, inter.Cert, parent.Cert, "--days")
	if err := inter.WriteCAFiles(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "intermediate CA %q signed by %q written to %s (%s, %s, key %s 0600)\n",
		*name, parent.Cert.Subject.CommonName, *out, pki.CACertFile, pki.CAChainFile, pki.CAKeyFile)
	return nil
}

// certWarnOutlives warns when a new certificate is valid longer than its issuer:
// it stops verifying when the issuer expires.
func certWarnOutlives(prog string, stderr io.Writer, c, issuer *x509.Certificate, flagName string) {
	if c.NotAfter.After(issuer.NotAfter) {
		fmt.Fprintf(stderr, "%s cert: warning: %q is valid until %s, after its issuer %q expires (%s); it stops verifying then (use a smaller %s)\n",
			prog, c.Subject.CommonName, c.NotAfter.UTC().Format(time.DateOnly), issuer.Subject.CommonName, issuer.NotAfter.UTC().Format(time.DateOnly), flagName)
	}
}

func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func certIssue(prog string, args []string, stdout, stderr io.Writer) error {
	fs := certFlags(prog, "issue")
	caDir := fs.String("ca-dir", defaultCADir, "directory of the issuing CA")
	server := fs.String("server", "", "issue a server certificate with this common name")
	client := fs.String("client", "", "issue a client certificate with this common name (its identity)")
	dns := fs.String("dns", "", "DNS names, comma separated")
	ips := fs.String("ip", "", "IP addresses, comma separated")
	uris := fs.String("uri", "", "URI SANs (e.g. spiffe://corp/router/r1), comma separated")
	out := fs.String("out-dir", ".", "directory for NAME.crt and NAME.key")
	n := fs.Int("days", 365, "validity in days")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	switch {
	case *caDir == "":
		return certUsagef("issue: --ca-dir must not be empty")
	case (*server == "") == (*client == ""):
		return certUsagef("issue: give exactly one of --server NAME or --client NAME")
	case len(pos) > 0:
		return certUsagef("issue: unexpected argument %q", pos[0])
	}
	validity, err := certDays("days", *n)
	if err != nil {
		return err
	}
	opts := pki.Options{Validity: validity, DNSNames: splitList(*dns)}
	for _, s := range splitList(*ips) {
		ip := net.ParseIP(s)
		if ip == nil {
			return certUsagef("issue: --ip %q is not an IP address", s)
		}
		opts.IPs = append(opts.IPs, ip)
	}
	for _, s := range splitList(*uris) {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" {
			return certUsagef("issue: --uri %q is not an absolute URI (e.g. spiffe://corp/router/r1)", s)
		}
		opts.URIs = append(opts.URIs, u)
	}
	kind, name, usage := "server", *server, x509.ExtKeyUsageServerAuth
	if *client != "" {
		kind, name, usage = "client", *client, x509.ExtKeyUsageClientAuth
	}
	if msg := checkName(name); msg != "" {
		return certUsagef("issue: --%s %q %s (it becomes the file name NAME.crt)", kind, name, msg)
	}
	certPath, keyPath := filepath.Join(*out, name+".crt"), filepath.Join(*out, name+".key")
	for _, p := range []string{keyPath, certPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("issue: %s already exists; refusing to overwrite it (remove it, or choose another --out-dir or name)", p)
		}
	}
	ca, err := pki.LoadCA(*caDir)
	if err != nil {
		return err
	}
	opts.CommonName = name
	var leaf *pki.Cert
	if *server != "" {
		if len(opts.DNSNames) == 0 && len(opts.IPs) == 0 {
			if ip := net.ParseIP(name); ip != nil {
				opts.IPs = []net.IP{ip}
			} else {
				opts.DNSNames = []string{name}
			}
		}
		leaf, err = ca.IssueServer(opts)
	} else {
		leaf, err = ca.IssueClient(opts)
	}
	if err != nil {
		return err
	}
	if err := ca.Verify(leaf, usage); err != nil {
		return fmt.Errorf("issue: the new certificate does not verify against the CA in %s, nothing written: %w", *caDir, err)
	}
	certWarnOutlives(prog, stderr, leaf.Cert, ca.Cert, "--days")
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("issue: --out-dir: %w", err)
	}
	if err := leaf.WriteFiles(certPath, keyPath); err != nil {
		return fmt.Errorf("issue: %w", err)
	}
	chain := ""
	if len(leaf.Chain) > 0 {
		chain = fmt.Sprintf(" followed by %d intermediate(s)", len(leaf.Chain))
	}
	fmt.Fprintf(stdout, "%s certificate %q written to %s%s, key %s (0600)\n  serial:   %s\n  valid:    until %s\n  pin:      %s\n",
		kind, name, certPath, chain, keyPath, pki.FormatSerial(leaf.Cert.SerialNumber),
		leaf.Cert.NotAfter.UTC().Format(time.DateOnly), pki.SPKIPin(leaf.Cert))
	return nil
}

// checkName says what is wrong with a name used as a file name, or "".
func checkName(s string) string {
	switch {
	case strings.TrimSpace(s) == "", s == ".", s == "..":
		return "cannot be used as a file name"
	case strings.ContainsAny(s, "/\\\x00"):
		return "must not contain a slash"
	case strings.HasPrefix(s, "-"):
		return "must not start with '-'"
	}
	return ""
}

func certRevoke(prog string, args []string, stdout, stderr io.Writer) error {
	fs := certFlags(prog, "revoke")
	caDir := fs.String("ca-dir", defaultCADir, "directory of the CA that issued the certificates")
	reasonName := fs.String("reason", "unspecified", "revocation reason: "+strings.Join(pki.ReasonNames(), ", "))
	next := fs.Int("next-update-days", 7, "days until the CRL's next update")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if *caDir == "" {
		return certUsagef("revoke: --ca-dir must not be empty")
	}
	reason, err := pki.ParseReason(*reasonName)
	if err != nil {
		return certUsagef("revoke: --reason: %v", err)
	}
	validity, err := certDays("next-update-days", *next)
	if err != nil {
		return err
	}
	var serials []*big.Int
	for _, a := range pos {
		n, err := pki.ParseSerial(a)
		if err != nil {
			return certUsagef("revoke: %v", err)
		}
		serials = append(serials, n)
	}
	ca, err := pki.LoadCA(*caDir)
	if err != nil {
		return err
	}
	now := time.Now()
	res, err := ca.Revoke(*caDir, serials, reason, now, now.Add(validity))
	if err != nil {
		return err
	}
	for _, n := range res.Added {
		fmt.Fprintf(stdout, "revoked serial %s\n", pki.FormatSerial(n))
	}
	for _, n := range res.Already {
		fmt.Fprintf(stdout, "serial %s was already revoked\n", pki.FormatSerial(n))
	}
	fmt.Fprintf(stdout, "CRL #%s with %d revoked serial(s) written to %s, next update due %s\n(copy it to the agents' tls.crl and reload them; re-run `cert revoke --ca-dir %s` before then)\n",
		res.Number, res.Total, res.CRLPath, now.Add(validity).UTC().Format(time.RFC3339), *caDir)
	return nil
}

func certInspect(prog string, args []string, stdout, stderr io.Writer) error {
	fs := certFlags(prog, "inspect")
	caFile := fs.String("ca", "", "CA certificate(s) to verify the chain or the CRL's signature against")
	pos, err := parseFlags(fs, args, stdout, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return certUsagef("inspect: want exactly one FILE (a certificate, chain or CRL)")
	}
	file := pos[0]
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("inspect: %w", err)
	}
	var roots []*x509.Certificate
	if *caFile != "" {
		b, err := os.ReadFile(*caFile)
		if err != nil {
			return fmt.Errorf("inspect: --ca: %w", err)
		}
		if roots, err = pki.ParseCertsPEM(b); err != nil {
			return fmt.Errorf("inspect: --ca %s: %w", *caFile, err)
		}
	}
	switch kind := certFileKind(data); kind {
	case "crl":
		crl, err := pki.LoadCRL(data)
		if err != nil {
			return fmt.Errorf("inspect: %s: %w", file, err)
		}
		return certPrintCRL(stdout, crl, roots)
	case "cert":
		certs, err := certParseCerts(data)
		if err != nil {
			return fmt.Errorf("inspect: %s: %w", file, err)
		}
		return certPrintCerts(stdout, certs, roots)
	case "key":
		return fmt.Errorf("inspect: %s holds a private key, not a certificate (keys are never printed; inspect the .crt file)", file)
	default:
		return fmt.Errorf("inspect: %s is neither a certificate nor a CRL (want PEM \"CERTIFICATE\" or \"X509 CRL\" blocks, or DER)", file)
	}
}

// certFileKind guesses what data holds: "cert", "crl", "key" or "".
func certFileKind(data []byte) string {
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch {
		case block.Type == "CERTIFICATE":
			return "cert"
		case block.Type == "X509 CRL":
			return "crl"
		case strings.HasSuffix(block.Type, "PRIVATE KEY"):
			return "key"
		}
	}
	if bytes.Contains(data, []byte("-----BEGIN")) {
		return ""
	}
	if _, err := x509.ParseCertificate(data); err == nil {
		return "cert"
	}
	if _, err := x509.ParseRevocationList(data); err == nil || strings.Contains(err.Error(), "crl version") {
		return "crl"
	}
	return ""
}

func certParseCerts(data []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(data, []byte("-----BEGIN")) {
		c, err := x509.ParseCertificate(data)
		if err != nil {
			return nil, err
		}
		return []*x509.Certificate{c}, nil
	}
	return pki.ParseCertsPEM(data)
}

func certPrintCerts(w io.Writer, certs []*x509.Certificate, roots []*x509.Certificate) error {
	now := time.Now()
	for i, c := range certs {
		role := "certificate"
		switch {
		case c.IsCA && certIsSelfSigned(c):
			role = "root CA"
		case c.IsCA:
			role = "intermediate CA"
		case i == 0:
			role = "leaf"
		}
		fmt.Fprintf(w, "[%d] %s: %s\n", i, role, c.Subject)
		fmt.Fprintf(w, "    issuer:   %s", c.Issuer)
		switch {
		case certIsSelfSigned(c):
			fmt.Fprint(w, " (self-signed)")
		case i+1 < len(certs) && c.CheckSignatureFrom(certs[i+1]) == nil:
			fmt.Fprintf(w, " (signed by [%d])", i+1)
		case i+1 < len(certs):
			fmt.Fprintf(w, " (NOT signed by [%d]: the file's order or content is wrong)", i+1)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "    serial:   %s\n", pki.FormatSerial(c.SerialNumber))
		fmt.Fprintf(w, "    valid:    %s to %s (%s)\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), certDaysLeft(now, c))
		if len(c.DNSNames) > 0 {
			fmt.Fprintf(w, "    dns:      %s\n", strings.Join(c.DNSNames, ", "))
		}
		if len(c.IPAddresses) > 0 {
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			fmt.Fprintf(w, "    ip:       %s\n", strings.Join(ips, ", "))
		}
		for _, u := range c.URIs {
			fmt.Fprintf(w, "    uri:      %s\n", u)
		}
		var usages []string
		for _, u := range c.ExtKeyUsage {
			switch u {
			case x509.ExtKeyUsageServerAuth:
				usages = append(usages, "serverAuth")
			case x509.ExtKeyUsageClientAuth:
				usages = append(usages, "clientAuth")
			case x509.ExtKeyUsageAny:
				usages = append(usages, "any")
			}
		}
		if len(usages) > 0 {
			fmt.Fprintf(w, "    usage:    %s\n", strings.Join(usages, ", "))
		}
		fmt.Fprintf(w, "    key:      %s\n", keyType(c))
		fmt.Fprintf(w, "    pin:      %s\n", pki.SPKIPin(c))
	}
	if roots == nil {
		return nil
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return fmt.Errorf("inspect: [0] does not verify against --ca: %w", err)
	}
	var names []string
	for _, c := range chains[0] {
		names = append(names, fmt.Sprintf("%q", c.Subject.CommonName))
	}
	fmt.Fprintf(w, "verified against --ca: %s\n", strings.Join(names, " <- "))
	return nil
}

func certDaysLeft(now time.Time, c *x509.Certificate) string {
	switch {
	case now.Before(c.NotBefore):
		return "NOT YET VALID"
	case now.After(c.NotAfter):
		return fmt.Sprintf("EXPIRED %d days ago", int(now.Sub(c.NotAfter).Hours()/24))
	}
	return fmt.Sprintf("%d days left", int(c.NotAfter.Sub(now).Hours()/24))
}

func certIsSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func certPrintCRL(w io.Writer, crl *x509.RevocationList, roots []*x509.Certificate) error {
	fmt.Fprintf(w, "CRL (version 2) issued by %s\n", crl.Issuer)
	number := "none"
	if crl.Number != nil {
		number = crl.Number.String()
	}
	fmt.Fprintf(w, "  number:      %s\n", number)
	fmt.Fprintf(w, "  this update: %s\n", crl.ThisUpdate.UTC().Format(time.RFC3339))
	if crl.NextUpdate.IsZero() {
		fmt.Fprintf(w, "  next update: none\n")
	} else {
		stale := ""
		if time.Now().After(crl.NextUpdate) {
			stale = " (STALE: re-sign it with `cert revoke --ca-dir DIR`)"
		}
		fmt.Fprintf(w, "  next update: %s%s\n", crl.NextUpdate.UTC().Format(time.RFC3339), stale)
	}
	fmt.Fprintf(w, "  revoked:     %d\n", len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		fmt.Fprintf(w, "    %s  revoked %s", pki.FormatSerial(e.SerialNumber), e.RevocationTime.UTC().Format(time.RFC3339))
		if e.ReasonCode != 0 {
			fmt.Fprintf(w, "  %s", pki.ReasonName(e.ReasonCode))
		}
		fmt.Fprintln(w)
	}
	if roots == nil {
		return nil
	}
	for _, r := range roots {
		if crl.CheckSignatureFrom(r) == nil {
			fmt.Fprintf(w, "  signature:   verified against %q (--ca)\n", r.Subject.CommonName)
			return nil
		}
	}
	return errors.New("inspect: the CRL's signature does not verify against any certificate in --ca (wrong CA, or a CA key that was replaced)")
}

func keyType(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return c.PublicKeyAlgorithm.String()
}
