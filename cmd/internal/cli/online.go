package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tunnelworks/tunnel/agent"
	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

// checkOnline is `validate -online` on the client: for each server, what the
// agent would do up to the session (resolve, connect, TLS with our
// certificate and policy, the server's hello), each step printed, and one
// line saying what is wrong where a step fails. It never sends our hello,
// so the server starts no session and a running client's session is not
// replaced; the server logs a hello that never came. It reports whether
// some server accepted us.
func checkOnline(ctx context.Context, cfg *config.Client, spec ssl.PolicySpec, stdout io.Writer) bool {
	if admit := cfg.TLS.AdmitServer(); admit != nil {
		spec.Admit = admit // as the agent checks it
	}
	p, err := ssl.LoadPolicy(spec)
	if err != nil {
		fmt.Fprintf(stdout, "online: cannot load the TLS policy: %v\n", err)
		return false
	}
	tlsCfg := ssl.NewReloader(p).ClientConfig(cfg.TLS.ServerName)
	accepted := false
	for _, addr := range cfg.Servers {
		fmt.Fprintf(stdout, "online: server %s (name %q)\n", addr, cfg.TLS.ServerName)
		verdict, ok := probeServer(ctx, addr, tlsCfg, cfg.HandshakeTimeout, stdout)
		if ok {
			accepted = true
			fmt.Fprintf(stdout, "  ok: %s\n", verdict)
		} else {
			fmt.Fprintf(stdout, "  PROBLEM: %s\n", verdict)
		}
	}
	return accepted
}

// probeServer runs the steps against one server and returns the verdict
// line and whether the server accepted us.
func probeServer(ctx context.Context, addr string, tlsCfg *tls.Config, timeout time.Duration, w io.Writer) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("server %q is not host:port: %v", addr, err), false
	}
	if net.ParseIP(host) == nil {
		ips, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			return fmt.Sprintf("cannot resolve %s: %v (check the server key and this host's DNS)", host, err), false
		}
		fmt.Fprintf(w, "  resolved %s: %s\n", host, strings.Join(ips, ", "))
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("connection refused by %s: nothing listens on port %s there (is tunnel-server running, and is its listen this address?)", addr, port), false
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return fmt.Sprintf("no answer from %s within %s: a firewall dropping the packets, or the wrong address", addr, timeout), false
	case err != nil:
		return fmt.Sprintf("cannot connect to %s: %v", addr, err), false
	}
	defer raw.Close()
	fmt.Fprintf(w, "  connected from %s to %s\n", raw.LocalAddr(), raw.RemoteAddr())

	conn := ssl.Client(raw, tlsCfg)
	if err := ssl.Handshake(ctx, conn.Conn, timeout); err != nil {
		return err.Error(), false
	}
	cs := conn.ConnectionState()
	fmt.Fprintf(w, "  %s, %s\n", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
	printPeerChain(w, cs)

	// In TLS 1.3 the server judges our certificate after our side of the
	// handshake is done: its verdict is its answer to our probe's hello,
	// its own hello or a refusal in words (or, for a chain it cannot
	// verify, an alert). A probe starts no session on the server.
	hello, err := agent.Probe(ctx, conn, timeout)
	if err != nil {
		var refusal *mux.RefusedError
		if errors.As(err, &refusal) {
			return "the server refused us: " + refusal.Msg, false
		}
		if isTimeout(err) {
			return fmt.Sprintf("the server completed TLS but sent no hello within %s", timeout), false
		}
		return err.Error(), false
	}
	return fmt.Sprintf("the server accepted our certificate (agent %s, protocol %d); services we may open: %s", hello.Agent, mux.ProtocolVersion, servicesText(hello.Services)), true
}

// servicesText lists the services the server's hello offers us, with the
// class each rides, sorted by name.
func servicesText(services map[string]string) string {
	if len(services) == 0 {
		return "none"
	}
	var out []string
	for _, name := range slices.Sorted(maps.Keys(services)) {
		out = append(out, fmt.Sprintf("%s (%s)", name, services[name]))
	}
	return strings.Join(out, ", ")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// printPeerChain shows the certificates the server sent and the chain we
// verified them to.
func printPeerChain(w io.Writer, cs tls.ConnectionState) {
	now := time.Now()
	for i, c := range cs.PeerCertificates {
		role := "server certificate"
		if i > 0 {
			role = "intermediate"
		}
		var names []string
		names = append(names, c.DNSNames...)
		for _, ip := range c.IPAddresses {
			names = append(names, ip.String())
		}
		for _, u := range c.URIs {
			names = append(names, u.String())
		}
		fmt.Fprintf(w, "  %s: %q (%s), issued by %q, %s, pin %s\n",
			role, c.Subject.CommonName, strings.Join(names, ", "), c.Issuer.CommonName, certDaysLeft(now, c), pki.SPKIPin(c))
	}
	if len(cs.VerifiedChains) > 0 {
		var names []string
		for _, c := range cs.VerifiedChains[0] {
			names = append(names, fmt.Sprintf("%q", c.Subject.CommonName))
		}
		fmt.Fprintf(w, "  verified against tls.ca: %s\n", strings.Join(names, " <- "))
	}
}

// ourIdentity names our certificate for the summary line.
func ourIdentity(leaf *x509.Certificate) string {
	return fmt.Sprintf("%q (pin %s)", leaf.Subject.CommonName, pki.SPKIPin(leaf))
}
