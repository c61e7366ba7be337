package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

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
	if verify := cfg.TLS.Verify; len(verify) > 0 {
		// As the agent does (agent.clientPolicySpec).
		rules, _ := ssl.ParseRules(verify) // validated with the config
		spec.Admit = func(id ssl.Identity) error {
			if _, ok := rules.Match(id); ok {
				return nil
			}
			return fmt.Errorf("server %q matches none of tls.verify %v", id.Name(), verify)
		}
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
	// handshake is done: its verdict is the first thing it sends, a hello
	// or an alert.
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	hello, err := readServerHello(conn)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Sprintf("the server completed TLS but sent no hello within %s", timeout), false
		}
		return ssl.Describe(err), false
	}
	return hello, true
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

// readServerHello reads the server's hello (mux's wire format: "TUNL",
// version, body length, JSON body) and says who answered.
func readServerHello(r io.Reader) (string, error) {
	var head [7]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", errors.New("the server closed the connection after the TLS handshake (its log says why)")
		}
		return "", err
	}
	if !bytes.Equal(head[:4], []byte("TUNL")) {
		return "", fmt.Errorf("the server completed TLS but does not speak the tunnel protocol (it sent %q)", head[:4])
	}
	if v := int(head[4]); v != mux.ProtocolVersion {
		return "", fmt.Errorf("the server speaks tunnel protocol version %d, we speak %d: run the same agent version on both ends", v, mux.ProtocolVersion)
	}
	body := make([]byte, min(binary.BigEndian.Uint16(head[5:]), 4096))
	if _, err := io.ReadFull(r, body); err != nil {
		return "", fmt.Errorf("read the server's hello: %w", err)
	}
	var h mux.Hello
	if err := json.Unmarshal(body, &h); err != nil {
		return "", fmt.Errorf("the server's hello is malformed: %v", err)
	}
	return fmt.Sprintf("the server accepted our certificate and said hello (role %s, agent %s, protocol %d); a session would start here", h.Role, h.Agent, mux.ProtocolVersion), nil
}

// ourIdentity names our certificate for the summary line.
func ourIdentity(leaf *x509.Certificate) string {
	return fmt.Sprintf("%q (pin %s)", leaf.Subject.CommonName, pki.SPKIPin(leaf))
}
