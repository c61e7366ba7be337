package cli

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
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

	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

const certUsage = `usage: %[1]s cert <command> [flags]

  ca create --dir DIR [--name NAME] [--days 3650]
        make a root CA: DIR/ca.crt and DIR/ca.key (0600); never overwrites
  ca intermediate --ca-dir DIR --out-dir OUT --name NAME [--days 3650]
        make an intermediate CA signed by the CA in DIR: OUT/ca.crt, ca.key, chain.crt
  issue --ca-dir DIR (--server NAME | --client NAME) [--dns a,b] [--ip x,y] [--uri u,v] [--out-dir .] [--days 365]
        issue a leaf: OUT/NAME.crt (leaf, then the CA chain below the root) and OUT/NAME.key (0600)
  revoke --ca-dir DIR [--next-update-days 7] SERIAL...
        revoke by serial (hex, as 'cert inspect' prints it, colons optional) and write DIR/ca.crl
  inspect FILE
        show a certificate chain (subject, names, issuer, validity, serial, SPKI pin) or a CRL
`

// certCmd is the `cert` helper: one implementation in both binaries.
func certCmd(prog string, args []string, stdout, stderr io.Writer) int {
	usage := func(w io.Writer) { fmt.Fprintf(w, certUsage, prog) }
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	var err error
	switch {
	case args[0] == "help" || args[0] == "-h" || args[0] == "--help":
		usage(stdout)
		return exitOK
	case args[0] == "ca" && len(args) > 1 && args[1] == "create":
		err = certCACreate(prog, args[2:], stdout, stderr)
	case args[0] == "ca" && len(args) > 1 && args[1] == "intermediate":
		err = certCAIntermediate(prog, args[2:], stdout, stderr)
	case args[0] == "issue":
		err = certIssue(prog, args[1:], stdout, stderr)
	case args[0] == "revoke":
		err = certRevoke(prog, args[1:], stdout, stderr)
	case args[0] == "inspect":
		err = certInspect(args[1:], stdout)
	default:
		fmt.Fprintf(stderr, "%s cert: unknown command %q\n", prog, strings.Join(args, " "))
		usage(stderr)
		return exitUsage
	}
	var ue usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		if ue.msg != "" {
			fmt.Fprintf(stderr, "%s cert: %s\n", prog, ue.msg)
		}
		return exitUsage
	default:
		fmt.Fprintf(stderr, "%s cert: %v\n", prog, err)
		return exitFailure
	}
}

// usageError is a mistake on the command line (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return usageError{}
	}
	return nil
}

func days(n int) (time.Duration, error) {
	if n < 1 {
		return 0, usageError{fmt.Sprintf("--days %d: must be at least 1", n)}
	}
	return time.Duration(n) * 24 * time.Hour, nil
}

func certCACreate(prog string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" cert ca create", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for ca.crt and ca.key (required)")
	name := fs.String("name", "Tunnel Root CA", "the CA's common name")
	n := fs.Int("days", 3650, "validity in days")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *dir == "" || fs.NArg() > 0 {
		return usageError{"ca create needs --dir DIR and no other arguments"}
	}
	validity, err := days(*n)
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
	fmt.Fprintf(stdout, "root CA %q written to %s (key %s, mode 0600; keep it off the tunnel hosts)\n", *name, filepath.Join(*dir, pki.CACertFile), filepath.Join(*dir, pki.CAKeyFile))
	return nil
}

func certCAIntermediate(prog string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" cert ca intermediate", flag.ContinueOnError)
	caDir := fs.String("ca-dir", "", "directory of the signing CA (required)")
	out := fs.String("out-dir", "", "directory for the intermediate (required)")
	name := fs.String("name", "", "the intermediate's common name (required)")
	n := fs.Int("days", 3650, "validity in days")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *caDir == "" || *out == "" || *name == "" || fs.NArg() > 0 {
		return usageError{"ca intermediate needs --ca-dir, --out-dir and --name"}
	}
	validity, err := days(*n)
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
	if err := inter.WriteCAFiles(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "intermediate CA %q signed by %q written to %s\n", *name, parent.Cert.Subject.CommonName, *out)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func certIssue(prog string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" cert issue", flag.ContinueOnError)
	caDir := fs.String("ca-dir", "", "directory of the issuing CA (required)")
	server := fs.String("server", "", "issue a server certificate with this common name")
	client := fs.String("client", "", "issue a client certificate with this common name (its identity)")
	dns := fs.String("dns", "", "DNS names, comma separated")
	ips := fs.String("ip", "", "IP addresses, comma separated")
	uris := fs.String("uri", "", "URI SANs (e.g. spiffe://corp/router/r1), comma separated")
	out := fs.String("out-dir", ".", "directory for NAME.crt and NAME.key")
	n := fs.Int("days", 365, "validity in days")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *caDir == "" || (*server == "") == (*client == "") || fs.NArg() > 0 {
		return usageError{"issue needs --ca-dir and exactly one of --server NAME or --client NAME"}
	}
	validity, err := days(*n)
	if err != nil {
		return err
	}
	opts := pki.Options{Validity: validity, DNSNames: splitList(*dns)}
	for _, s := range splitList(*ips) {
		ip := net.ParseIP(s)
		if ip == nil {
			return usageError{fmt.Sprintf("--ip %q is not an IP address", s)}
		}
		opts.IPs = append(opts.IPs, ip)
	}
	for _, s := range splitList(*uris) {
		u, err := url.Parse(s)
		if err != nil || u.Scheme == "" {
			return usageError{fmt.Sprintf("--uri %q is not an absolute URI", s)}
		}
		opts.URIs = append(opts.URIs, u)
	}
	ca, err := pki.LoadCA(*caDir)
	if err != nil {
		return err
	}
	var (
		leaf  *pki.Cert
		usage x509.ExtKeyUsage
		name  string
	)
	if *server != "" {
		name, opts.CommonName, usage = *server, *server, x509.ExtKeyUsageServerAuth
		if len(opts.DNSNames) == 0 && len(opts.IPs) == 0 {
			if ip := net.ParseIP(name); ip != nil {
				opts.IPs = []net.IP{ip}
			} else {
				opts.DNSNames = []string{name}
			}
		}
		leaf, err = ca.IssueServer(opts)
	} else {
		name, opts.CommonName, usage = *client, *client, x509.ExtKeyUsageClientAuth
		leaf, err = ca.IssueClient(opts)
	}
	if err != nil {
		return err
	}
	if err := ca.Verify(leaf, usage); err != nil {
		return fmt.Errorf("the new certificate does not verify against its CA, nothing written: %w", err)
	}
	if msg := checkName(name); msg != "" {
		return usageError{fmt.Sprintf("name %q %s (it becomes a file name)", name, msg)}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	certPath, keyPath := filepath.Join(*out, name+".crt"), filepath.Join(*out, name+".key")
	if _, err := os.Stat(keyPath); err == nil {
		return fmt.Errorf("%s already exists; refusing to overwrite a key (remove it or choose --out-dir)", keyPath)
	}
	if err := leaf.WriteFiles(certPath, keyPath); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s certificate %q (serial %s, valid until %s) written to %s, key %s (0600)\npin for allow/verify: %s\n",
		map[bool]string{true: "server", false: "client"}[*server != ""], name, ssl.FormatSerial(leaf.Cert.SerialNumber),
		leaf.Cert.NotAfter.UTC().Format(time.DateOnly), certPath, keyPath, ssl.SPKIPin(leaf.Cert))
	return nil
}

// checkName says what is wrong with a name used as a file name, or "".
func checkName(s string) string {
	if s == "" || strings.ContainsAny(s, `/\`) || s == "." || s == ".." || strings.HasPrefix(s, "-") {
		return "cannot be used as a file name"
	}
	return ""
}

// The revoked serials of a CA live in DIR/revoked.txt, one per line:
// hex serial, RFC 3339 revocation time. DIR/crlnumber holds the last CRL
// number; each CRL gets the next.
const (
	revokedFile   = "revoked.txt"
	crlNumberFile = "crlnumber"
	crlFile       = "ca.crl"
)

func parseSerial(s string) (*big.Int, error) {
	clean := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(s), "0x"), ":", "")
	n, ok := new(big.Int).SetString(clean, 16)
	if !ok || clean == "" {
		return nil, usageError{fmt.Sprintf("serial %q is not hexadecimal (write it as 'cert inspect' prints it, e.g. 1A:2B:3C)", s)}
	}
	return n, nil
}

func certRevoke(prog string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(prog+" cert revoke", flag.ContinueOnError)
	caDir := fs.String("ca-dir", "", "directory of the CA that issued the certificates (required)")
	next := fs.Int("next-update-days", 7, "days until the CRL's next update")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if *caDir == "" || fs.NArg() == 0 {
		return usageError{"revoke needs --ca-dir DIR and at least one SERIAL"}
	}
	if *next < 1 {
		return usageError{"--next-update-days must be at least 1"}
	}
	var serials []*big.Int
	for _, a := range fs.Args() {
		n, err := parseSerial(a)
		if err != nil {
			return err
		}
		serials = append(serials, n)
	}
	ca, err := pki.LoadCA(*caDir)
	if err != nil {
		return err
	}
	entries, err := readRevoked(filepath.Join(*caDir, revokedFile))
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, e := range entries {
		known[e.SerialNumber.String()] = true
	}
	now := time.Now().UTC().Truncate(time.Second)
	f, err := os.OpenFile(filepath.Join(*caDir, revokedFile), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("record revocation: %w", err)
	}
	for _, n := range serials {
		if known[n.String()] {
			fmt.Fprintf(stdout, "serial %s was already revoked\n", ssl.FormatSerial(n))
			continue
		}
		fmt.Fprintf(f, "%s %s\n", ssl.FormatSerial(n), now.Format(time.RFC3339))
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: now})
		known[n.String()] = true
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("record revocation: %w", err)
	}
	number := big.NewInt(1)
	if b, err := os.ReadFile(filepath.Join(*caDir, crlNumberFile)); err == nil {
		if prev, ok := new(big.Int).SetString(strings.TrimSpace(string(b)), 10); ok {
			number.Add(prev, big.NewInt(1))
		}
	}
	crl, err := ca.NewCRL(entries, number, now, now.Add(time.Duration(*next)*24*time.Hour))
	if err != nil {
		return err
	}
	crlPath := filepath.Join(*caDir, crlFile)
	if err := writeAtomic(crlPath, crl, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*caDir, crlNumberFile), []byte(number.String()+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CRL #%s with %d revoked serials written to %s (next update in %d days; copy it to the agents' tls.crl and reload)\n", number, len(entries), crlPath, *next)
	return nil
}

// writeAtomic replaces path in one rename, so an agent polling the file
// never reads half of it.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func readRevoked(path string) ([]x509.RevocationListEntry, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []x509.RevocationListEntry
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		n, err := parseSerial(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		at := time.Now()
		if len(fields) > 1 {
			if t, err := time.Parse(time.RFC3339, fields[1]); err == nil {
				at = t
			}
		}
		out = append(out, x509.RevocationListEntry{SerialNumber: n, RevocationTime: at})
	}
	return out, sc.Err()
}

func certInspect(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return usageError{"inspect needs one FILE"}
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	if strings.Contains(string(data), "X509 CRL") {
		crl, err := ssl.ParseCRL(data)
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		fmt.Fprintf(stdout, "CRL issued by %s\n  number:      %v\n  this update: %s\n  next update: %s\n  revoked:     %d\n",
			crl.Issuer, crl.Number, crl.ThisUpdate.UTC().Format(time.RFC3339), crl.NextUpdate.UTC().Format(time.RFC3339), len(crl.RevokedCertificateEntries))
		for _, e := range crl.RevokedCertificateEntries {
			fmt.Fprintf(stdout, "    %s  revoked %s\n", ssl.FormatSerial(e.SerialNumber), e.RevocationTime.UTC().Format(time.RFC3339))
		}
		return nil
	}
	certs, err := pki.ParseCertsPEM(data)
	if err != nil {
		crl, cerr := ssl.ParseCRL(data) // a DER CRL?
		if cerr != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		fmt.Fprintf(stdout, "CRL issued by %s, number %v, %d revoked\n", crl.Issuer, crl.Number, len(crl.RevokedCertificateEntries))
		return nil
	}
	now := time.Now()
	for i, c := range certs {
		role := "certificate"
		switch {
		case i == 0 && !c.IsCA:
			role = "leaf"
		case c.IsCA && c.CheckSignatureFrom(c) == nil:
			role = "root CA"
		case c.IsCA:
			role = "intermediate CA"
		}
		fmt.Fprintf(stdout, "[%d] %s: %s\n", i, role, c.Subject)
		fmt.Fprintf(stdout, "    issuer:   %s\n", c.Issuer)
		fmt.Fprintf(stdout, "    serial:   %s\n", ssl.FormatSerial(c.SerialNumber))
		fmt.Fprintf(stdout, "    valid:    %s to %s (%d days left)\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), int(c.NotAfter.Sub(now).Hours()/24))
		if len(c.DNSNames) > 0 {
			fmt.Fprintf(stdout, "    dns:      %s\n", strings.Join(c.DNSNames, ", "))
		}
		if len(c.IPAddresses) > 0 {
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			fmt.Fprintf(stdout, "    ip:       %s\n", strings.Join(ips, ", "))
		}
		for _, u := range c.URIs {
			fmt.Fprintf(stdout, "    uri:      %s\n", u)
		}
		var usages []string
		for _, u := range c.ExtKeyUsage {
			switch u {
			case x509.ExtKeyUsageServerAuth:
				usages = append(usages, "serverAuth")
			case x509.ExtKeyUsageClientAuth:
				usages = append(usages, "clientAuth")
			}
		}
		if len(usages) > 0 {
			fmt.Fprintf(stdout, "    usage:    %s\n", strings.Join(usages, ", "))
		}
		fmt.Fprintf(stdout, "    key:      %s\n", keyType(c))
		fmt.Fprintf(stdout, "    pin:      %s\n", ssl.SPKIPin(c))
	}
	return nil
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
