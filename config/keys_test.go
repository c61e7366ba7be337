package config

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

func TestNewKeys(t *testing.T) {
	dir := pemDir(t)
	crl := filepath.Join(dir, "ca.crl")
	os.WriteFile(crl, []byte("x"), 0o600)
	src := `listen = ":8443"
reload_interval = "1m"
expiry_warning = "240h"
ping_after = "2s"
dead_after = "6s"
drain_timeout = "0s"
max_streams_per_session = 10
max_session_buffer = "64MiB"
header_timeout = "3s"
resume_window = "90s"
max_sessions = 5
max_sessions_per_identity = 1
dscp = "CS6"
admin {
  listen = "127.0.0.1:0"
}
tls {
  cert = "server.crt"
  key = "server.key"
  ca = "ca.crt"
  crl = ["ca.crl"]
  crl_stale = "refuse"
}
service "bgp" {
  target = "192.0.2.1:179"
  allow = ["edge-1", "spiffe://corp/router/*", "issuer:Routers CA"]
  source = "192.0.2.2"
  ttl = 255
  dscp = 48
  proxy_protocol = true
  idle_timeout = "0s"
}
service "web" {
  target = "127.0.0.1:8080"
  allow = ["x"]
}
forward "of" {
  listen = "127.0.0.1:6653"
  client = "edge-1"
  min_ttl = 254
  max_conns = 2
  dscp = "ef"
}
forward "bulk" {
  listen = "127.0.0.1:9000"
  client = "edge-1"
  class = "control"
  idle_timeout = "5m"
}
`
	s, err := ParseServer(filepath.Join(dir, "s.hcl"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{ReloadInterval: time.Minute, ExpiryWarning: 240 * time.Hour, PingAfter: 2 * time.Second, DeadAfter: 6 * time.Second,
		DrainTimeout: 0, MaxStreamsPerSession: 10, MaxSessionBuffer: 64 << 20, HeaderTimeout: 3 * time.Second, ResumeWindow: 90 * time.Second, Admin: "127.0.0.1:0", DSCP: 48}
	if s.Settings != want {
		t.Errorf("settings %+v\nwant %+v", s.Settings, want)
	}
	if s.MaxSessions != 5 || s.MaxSessionsPerIdentity != 1 {
		t.Errorf("session limits %d %d", s.MaxSessions, s.MaxSessionsPerIdentity)
	}
	if len(s.TLS.CRL) != 1 || s.TLS.CRL[0] != crl || s.TLS.CRLStale != "refuse" {
		t.Errorf("tls %+v", s.TLS)
	}
	bgp, web := s.Services[0], s.Services[1]
	if bgp.Class != ClassControl || bgp.Source != "192.0.2.2" || bgp.TTL != 255 || bgp.DSCP != 48 || !bgp.ProxyProtocol {
		t.Errorf("bgp %+v", bgp)
	}
	if web.Class != ClassBulk || web.DSCP != -1 {
		t.Errorf("web %+v", web)
	}
	of, bulk := s.Forwards[0], s.Forwards[1]
	if of.Class != ClassControl || of.MinTTL != 254 || of.MaxConns != 2 || of.DSCP != 46 {
		t.Errorf("of %+v", of)
	}
	if bulk.Class != ClassControl || bulk.IdleTimeout != 5*time.Minute || bulk.MaxConns != DefaultMaxConns {
		t.Errorf("bulk %+v", bulk)
	}

	c, err := ParseClient(filepath.Join(dir, "c.hcl"), []byte(`server = "a:1"
session_wait = "0s"
tls {
  cert = "client.crt"
  key = "client.key"
  ca = "ca.crt"
  verify = ["tunnel-server", "sha256:`+strings.Repeat("A", 43)+`="]
}
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.SessionWait != 0 || len(c.TLS.Verify) != 2 {
		t.Errorf("client %+v", c)
	}
	_, err = ParseServer(filepath.Join(dir, "s.hcl"), []byte(strings.Replace(src, `crl_stale = "refuse"`, `verify = ["x"]`, 1)))
	if err == nil || !strings.Contains(err.Error(), "verify is for the client") {
		t.Errorf("verify on the server: %v", err)
	}
}

// pin is a well-formed SPKI pin (44 characters of base64).
var pin = "sha256:" + strings.Repeat("A", 43) + "="

// parsed is what TestKeys reads a value from, on either side.
type parsed struct {
	Settings
	TLS      TLS
	Services []Service
	Forwards []Forward
	srv      *Server // nil for a client
	cl       *Client // nil for a server
}

// tlsWith is a whole config whose tls block also holds extra.
func tlsWith(client bool, extra string) string {
	head := "listen = \":8443\"\n"
	if client {
		head = "server = \"tunnel.example.net:8443\"\n"
	}
	return head + "tls {\n  cert = \"c\"\n  key = \"k\"\n  ca = \"a\"\n" + extra + "}\n"
}

// TestKeys checks the good values and the defaults of every key beyond
// the basics, on each side that takes it. Bad values are in
// TestParseErrors.
func TestKeys(t *testing.T) {
	dir := pemDir(t)
	abs := func(name string) string { return filepath.Join(dir, name) }
	settings := func(f func(Settings) any) func(parsed) any { return func(p parsed) any { return f(p.Settings) } }
	svc := func(f func(Service) any) func(parsed) any { return func(p parsed) any { return f(p.Services[0]) } }
	fwd := func(f func(Forward) any) func(parsed) any { return func(p parsed) any { return f(p.Forwards[0]) } }
	tls := func(f func(TLS) any) func(parsed) any { return func(p parsed) any { return f(p.TLS) } }
	var (
		reload   = settings(func(s Settings) any { return s.ReloadInterval })
		expiry   = settings(func(s Settings) any { return s.ExpiryWarning })
		ping     = settings(func(s Settings) any { return s.PingAfter })
		dead     = settings(func(s Settings) any { return s.DeadAfter })
		timers   = settings(func(s Settings) any { return [2]time.Duration{s.PingAfter, s.DeadAfter} })
		drain    = settings(func(s Settings) any { return s.DrainTimeout })
		streams  = settings(func(s Settings) any { return s.MaxStreamsPerSession })
		buffer   = settings(func(s Settings) any { return s.MaxSessionBuffer })
		header   = settings(func(s Settings) any { return s.HeaderTimeout })
		resume   = settings(func(s Settings) any { return s.ResumeWindow })
		dscp     = settings(func(s Settings) any { return s.DSCP })
		admin    = settings(func(s Settings) any { return s.Admin })
		adminPub = settings(func(s Settings) any { return [2]any{s.Admin, s.AdminPublic} })
		sessions = func(p parsed) any { return p.srv.MaxSessions }
		perID    = func(p parsed) any { return p.srv.MaxSessionsPerIdentity }
		wait     = func(p parsed) any { return p.cl.SessionWait }
		lanes    = func(p parsed) any { return p.cl.BulkConnections }
		spread   = func(p parsed) any { return p.cl.BulkSpread }
		crl      = tls(func(t TLS) any { return t.CRL })
		crlStale = tls(func(t TLS) any { return t.CRLStale })
		verify   = tls(func(t TLS) any { return t.Verify })
		allow    = svc(func(s Service) any { return s.Allow })
		sClass   = svc(func(s Service) any { return s.Class })
		source   = svc(func(s Service) any { return s.Source })
		ttl      = svc(func(s Service) any { return s.TTL })
		sDSCP    = svc(func(s Service) any { return s.DSCP })
		proxy    = svc(func(s Service) any { return s.ProxyProtocol })
		sIdle    = svc(func(s Service) any { return s.IdleTimeout })
		fClass   = fwd(func(f Forward) any { return f.Class })
		maxConns = fwd(func(f Forward) any { return f.MaxConns })
		fIdle    = fwd(func(f Forward) any { return f.IdleTimeout })
		minTTL   = fwd(func(f Forward) any { return f.MinTTL })
		fDSCP    = fwd(func(f Forward) any { return f.DSCP })
		sResume  = func(p parsed) any { return p.Services[0].ResumeWindowOr(p.ResumeWindow) } // the effective window
		fResume  = func(p parsed) any { return p.Forwards[0].ResumeWindowOr(p.ResumeWindow) }
		service  = func(target, keys string) string {
			return "service \"x\" {\n  target = \"" + target + "\"\n  allow = [\"c\"]\n" + keys + "}\n"
		}
		forward = func(listen, keys string) string {
			return "forward \"f\" {\n  listen = \"" + listen + "\"\n  client = \"c\"\n" + keys + "}\n"
		}
		cForward = func(listen, keys string) string {
			return "forward \"f\" {\n  listen = \"" + listen + "\"\n" + keys + "}\n"
		}
		cService = func(target, keys string) string {
			return "service \"x\" {\n  target = \"" + target + "\"\n" + keys + "}\n"
		}
		both      = []bool{false, true}
		sec, mins = time.Second, time.Minute
	)
	tests := []struct {
		name  string
		sides []bool // client? for each side the case runs on; nil: the server only
		whole bool   // src is the whole file, without the base
		src   string
		get   func(parsed) any
		want  any
	}{
		// reload_interval: default off; at least 1s.
		{name: "reload_interval default", sides: both, get: reload, want: time.Duration(0)},
		{name: "reload_interval 1s", sides: both, src: "reload_interval = \"1s\"\n", get: reload, want: sec},
		{name: "reload_interval 1h30m", sides: both, src: "reload_interval = \"1h30m\"\n", get: reload, want: 90 * mins},

		// expiry_warning: default 720h; > 0.
		{name: "expiry_warning default", sides: both, get: expiry, want: 720 * time.Hour},
		{name: "expiry_warning 1ns", sides: both, src: "expiry_warning = \"1ns\"\n", get: expiry, want: time.Nanosecond},
		{name: "expiry_warning a year", sides: both, src: "expiry_warning = \"8760h\"\n", get: expiry, want: 8760 * time.Hour},

		// ping_after, dead_after: 10s, 30s; dead_after > ping_after.
		{name: "timers default", sides: both, get: timers, want: [2]time.Duration{10 * sec, 30 * sec}},
		{name: "ping_after alone", sides: both, src: "ping_after = \"29s\"\n", get: timers, want: [2]time.Duration{29 * sec, 30 * sec}},
		{name: "dead_after alone", sides: both, src: "dead_after = \"11s\"\n", get: timers, want: [2]time.Duration{10 * sec, 11 * sec}},
		{name: "ping_after and dead_after", sides: both, src: "dead_after = \"3s\"\nping_after = \"1s\"\n", get: timers, want: [2]time.Duration{sec, 3 * sec}},
		{name: "ping_after above the default dead_after", sides: both, src: "ping_after = \"1m\"\ndead_after = \"3m\"\n", get: ping, want: mins},
		{name: "dead_after long", sides: both, src: "dead_after = \"1h\"\n", get: dead, want: time.Hour},

		// drain_timeout: default 10s; "0s" allowed.
		{name: "drain_timeout default", sides: both, get: drain, want: DefaultDrainTimeout},
		{name: "drain_timeout 0s overrides", sides: both, src: "drain_timeout = \"0s\"\n", get: drain, want: time.Duration(0)},
		{name: "drain_timeout 0", sides: both, src: "drain_timeout = \"0\"\n", get: drain, want: time.Duration(0)},
		{name: "drain_timeout 1m", sides: both, src: "drain_timeout = \"1m\"\n", get: drain, want: mins},

		// max_streams_per_session: default 1024; >= 1.
		{name: "max_streams_per_session default", sides: both, get: streams, want: 1024},
		{name: "max_streams_per_session 1", sides: both, src: "max_streams_per_session = 1\n", get: streams, want: 1},
		{name: "max_streams_per_session max", sides: both, src: "max_streams_per_session = 2147483647\n", get: streams, want: 2147483647},

		// max_session_buffer: default 256MiB; 8MiB to 1TiB, binary units.
		{name: "max_session_buffer default", sides: both, get: buffer, want: int64(256 << 20)},
		{name: "max_session_buffer min", sides: both, src: "max_session_buffer = \"8MiB\"\n", get: buffer, want: int64(8 << 20)},
		{name: "max_session_buffer KiB", sides: both, src: "max_session_buffer = \"16384KiB\"\n", get: buffer, want: int64(16 << 20)},
		{name: "max_session_buffer GiB", sides: both, src: "max_session_buffer = \"8GiB\"\n", get: buffer, want: int64(8 << 30)},
		{name: "max_session_buffer max", sides: both, src: "max_session_buffer = \"1TiB\"\n", get: buffer, want: int64(1 << 40)},

		// header_timeout: default 10s; > 0.
		{name: "header_timeout default", sides: both, get: header, want: 10 * sec},
		{name: "header_timeout 1m", sides: both, src: "header_timeout = \"1m\"\n", get: header, want: mins},

		// resume_window: default 120s; "0s" (off) to "1h".
		{name: "resume_window default", sides: both, get: resume, want: 120 * sec},
		{name: "resume_window 90s", sides: both, src: "resume_window = \"90s\"\n", get: resume, want: 90 * sec},
		{name: "resume_window 0s overrides", sides: both, src: "resume_window = \"0s\"\n", get: resume, want: time.Duration(0)},
		{name: "resume_window 0", sides: both, src: "resume_window = \"0\"\n", get: resume, want: time.Duration(0)},
		{name: "resume_window 1h", sides: both, src: "resume_window = \"1h\"\n", get: resume, want: time.Hour},
		{name: "resume_window 1ns", src: "resume_window = \"1ns\"\n", get: resume, want: time.Nanosecond},

		// dscp: default unset (-1); 0..63 or a name, any case.
		{name: "dscp default", sides: both, get: dscp, want: -1},
		{name: "dscp 0", sides: both, src: "dscp = 0\n", get: dscp, want: 0},
		{name: "dscp 63", sides: both, src: "dscp = 63\n", get: dscp, want: 63},
		{name: "dscp CS0", sides: both, src: "dscp = \"CS0\"\n", get: dscp, want: 0},
		{name: "dscp CS6", sides: both, src: "dscp = \"CS6\"\n", get: dscp, want: 48},
		{name: "dscp cs7", sides: both, src: "dscp = \"cs7\"\n", get: dscp, want: 56},
		{name: "dscp EF", sides: both, src: "dscp = \"EF\"\n", get: dscp, want: 46},
		{name: "dscp AF11", sides: both, src: "dscp = \"AF11\"\n", get: dscp, want: 10},
		{name: "dscp af41", sides: both, src: "dscp = \"af41\"\n", get: dscp, want: 34},
		{name: "dscp AF43", sides: both, src: "dscp = \"AF43\"\n", get: dscp, want: 38},

		// admin: off by default; loopback unless public = true; port 0 allowed.
		{name: "admin default", sides: both, get: adminPub, want: [2]any{"", false}},
		{name: "admin loopback", sides: both, src: "admin {\n  listen = \"127.0.0.1:9090\"\n}\n", get: adminPub, want: [2]any{"127.0.0.1:9090", false}},
		{name: "admin port 0", sides: both, src: "admin {\n  listen = \"127.0.0.1:0\"\n}\n", get: admin, want: "127.0.0.1:0"},
		{name: "admin IPv6 loopback", sides: both, src: "admin {\n  listen = \"[::1]:9090\"\n}\n", get: admin, want: "[::1]:9090"},
		{name: "admin 127.0.0.2", sides: both, src: "admin {\n  listen = \"127.0.0.2:9090\"\n}\n", get: admin, want: "127.0.0.2:9090"},
		{name: "admin localhost", sides: both, src: "admin {\n  listen = \"localhost:9090\"\n}\n", get: admin, want: "localhost:9090"},
		{name: "admin public", sides: both, src: "admin {\n  listen = \"0.0.0.0:9090\"\n  public = true\n}\n", get: adminPub, want: [2]any{"0.0.0.0:9090", true}},
		{name: "admin public wildcard", sides: both, src: "admin {\n  public = true\n  listen = \":9090\"\n}\n", get: adminPub, want: [2]any{":9090", true}},
		{name: "admin public = false on loopback", sides: both, src: "admin {\n  listen = \"[::1]:1\"\n  public = false\n}\n", get: adminPub, want: [2]any{"[::1]:1", false}},
		{name: "admin beside a forward", src: "admin {\n  listen = \"127.0.0.1:9090\"\n}\n" + forward("127.0.0.1:9091", ""), get: admin, want: "127.0.0.1:9090"},

		// max_sessions, max_sessions_per_identity: server only; 1024, 4; >= 1.
		{name: "max_sessions default", get: sessions, want: 1024},
		{name: "max_sessions 1", src: "max_sessions = 1\n", get: sessions, want: 1},
		{name: "max_sessions_per_identity default", get: perID, want: 4},
		{name: "max_sessions_per_identity 1", src: "max_sessions_per_identity = 1\n", get: perID, want: 1},
		{name: "max_sessions_per_identity above max_sessions", src: "max_sessions = 2\nmax_sessions_per_identity = 8\n", get: perID, want: 8},

		// session_wait: client only; 10s; "0s" allowed.
		{name: "session_wait default", sides: []bool{true}, get: wait, want: 10 * sec},
		{name: "session_wait 0s overrides", sides: []bool{true}, src: "session_wait = \"0s\"\n", get: wait, want: time.Duration(0)},
		{name: "session_wait 1m", sides: []bool{true}, src: "session_wait = \"1m\"\n", get: wait, want: mins},

		// bulk_connections: client only; 1; 1..8.
		{name: "bulk_connections default", sides: []bool{true}, get: lanes, want: 2},
		{name: "bulk_connections 1", sides: []bool{true}, src: "bulk_connections = 1\n", get: lanes, want: 1},
		{name: "bulk_connections 8", sides: []bool{true}, src: "bulk_connections = 8\n", get: lanes, want: 8},

		// bulk_spread: client only; false.
		{name: "bulk_spread default", sides: []bool{true}, get: spread, want: false},
		{name: "bulk_spread true", sides: []bool{true}, src: "bulk_spread = true\n", get: spread, want: true},

		// tls.crl: none by default; paths resolved like cert.
		{name: "crl default", sides: both, get: crl, want: []string(nil)},
		{name: "crl one", sides: both, whole: true, src: tlsWith(false, "  crl = [\"ca.crl\"]\n"), get: crl, want: []string{abs("ca.crl")}},
		{name: "crl relative and absolute", whole: true, src: tlsWith(false, "  crl = [\"./pki/inter.crl\", \""+abs("ca.crl")+"\"]\n"), get: crl, want: []string{abs("pki/inter.crl"), abs("ca.crl")}},
		{name: "crl empty list", whole: true, src: tlsWith(false, "  crl = []\n"), get: crl, want: []string(nil)},
		{name: "crl on the client", sides: []bool{true}, whole: true, src: tlsWith(true, "  crl = [\"pki/../ca.crl\"]\n"), get: crl, want: []string{abs("ca.crl")}},

		// tls.crl_stale: warn (default) or refuse.
		{name: "crl_stale default", sides: both, get: crlStale, want: "warn"},
		{name: "crl_stale refuse", whole: true, src: tlsWith(false, "  crl_stale = \"refuse\"\n"), get: crlStale, want: "refuse"},
		{name: "crl_stale warn", whole: true, src: tlsWith(false, "  crl_stale = \"warn\"\n"), get: crlStale, want: "warn"},
		{name: "crl_stale refuse on the client", sides: []bool{true}, whole: true, src: tlsWith(true, "  crl_stale = \"refuse\"\n  crl = [\"ca.crl\"]\n"), get: crlStale, want: "refuse"},

		// tls.verify: client only; none by default; identity rules.
		{name: "verify default", sides: []bool{true}, get: verify, want: []string(nil)},
		{name: "verify one", sides: []bool{true}, whole: true, src: tlsWith(true, "  verify = [\"tunnel-server\"]\n"), get: verify, want: []string{"tunnel-server"}},
		{name: "verify every form", sides: []bool{true}, whole: true,
			src:  tlsWith(true, "  verify = [\"cn:t\", \"dns:t.example\", \"uri:spiffe://corp/*\", \"spiffe://corp/t\", \""+pin+"\", \"issuer:Routers CA\", \"issuer:"+pin+"\"]\n"),
			get:  verify,
			want: []string{"cn:t", "dns:t.example", "uri:spiffe://corp/*", "spiffe://corp/t", pin, "issuer:Routers CA", "issuer:" + pin}},

		// allow: identity rules.
		{name: "allow every form", src: "service \"x\" {\n  target = \"a:1\"\n  allow = [\"c\", \"cn:c\", \"dns:c.example\", \"spiffe://corp/router/*\", \"uri:spiffe://x/y\", \"" + pin + "\", \"issuer:Routers CA\", \"issuer:" + pin + "\"]\n}\n",
			get: allow, want: []string{"c", "cn:c", "dns:c.example", "spiffe://corp/router/*", "uri:spiffe://x/y", pin, "issuer:Routers CA", "issuer:" + pin}},
		{name: "allow a rule on the client", sides: []bool{true}, src: cService("a:1", "  allow = [\"issuer:Servers CA\"]\n"), get: allow, want: []string{"issuer:Servers CA"}},

		// service class: from the target port unless given.
		{name: "service class BGP", sides: both, src: service("192.0.2.1:179", ""), get: sClass, want: "control"},
		{name: "service class vty", src: service("a:2609", ""), get: sClass, want: "control"},
		{name: "service class past vty", src: service("a:2610", ""), get: sClass, want: "bulk"},
		{name: "service class SSH", sides: both, src: service("a:22", ""), get: sClass, want: "bulk"},
		{name: "service class bulk on BGP", src: service("a:179", "  class = \"bulk\"\n"), get: sClass, want: "bulk"},
		{name: "service class control on HTTP", src: service("a:80", "  class = \"control\"\n"), get: sClass, want: "control"},
		{name: "service class on the client", sides: []bool{true}, src: cService("a:6653", ""), get: sClass, want: "control"},

		// service source: none by default; an IP address of the target's family.
		{name: "source default", src: service("a:1", ""), get: source, want: ""},
		{name: "source IPv4", sides: both, src: service("192.0.2.1:179", "  source = \"192.0.2.2\"\n"), get: source, want: "192.0.2.2"},
		{name: "source IPv6", src: service("[2001:db8::1]:179", "  source = \"2001:db8::2\"\n"), get: source, want: "2001:db8::2"},
		{name: "source IPv4-mapped for IPv4", src: service("192.0.2.1:179", "  source = \"::ffff:192.0.2.2\"\n"), get: source, want: "::ffff:192.0.2.2"},
		{name: "source link-local with zone", src: service("[fe80::1%eth0]:179", "  source = \"fe80::2%eth0\"\n"), get: source, want: "fe80::2%eth0"},
		{name: "source for a host name", src: service("bgp.internal:179", "  source = \"2001:db8::2\"\n"), get: source, want: "2001:db8::2"},

		// service ttl: system default (0); 1..255.
		{name: "ttl default", src: service("a:1", ""), get: ttl, want: 0},
		{name: "ttl 1", src: service("a:1", "  ttl = 1\n"), get: ttl, want: 1},
		{name: "ttl 255", sides: both, src: service("a:1", "  ttl = 255\n"), get: ttl, want: 255},

		// service dscp: unset (-1); 0..63 or a name.
		{name: "service dscp default", src: service("a:1", ""), get: sDSCP, want: -1},
		{name: "service dscp 48", sides: both, src: service("a:1", "  dscp = 48\n"), get: sDSCP, want: 48},
		{name: "service dscp EF", src: service("a:1", "  dscp = \"EF\"\n"), get: sDSCP, want: 46},
		{name: "service dscp 0", src: service("a:1", "  dscp = 0\n"), get: sDSCP, want: 0},

		// service proxy_protocol: false by default.
		{name: "proxy_protocol default", src: service("a:1", ""), get: proxy, want: false},
		{name: "proxy_protocol true", sides: both, src: service("a:1", "  proxy_protocol = true\n"), get: proxy, want: true},
		{name: "proxy_protocol false", src: service("a:1", "  proxy_protocol = false\n"), get: proxy, want: false},

		// service idle_timeout: never (0) by default; "0s" allowed.
		{name: "service idle_timeout default", src: service("a:1", ""), get: sIdle, want: time.Duration(0)},
		{name: "service idle_timeout 0s", src: service("a:1", "  idle_timeout = \"0s\"\n"), get: sIdle, want: time.Duration(0)},
		{name: "service idle_timeout 5m", sides: both, src: service("a:1", "  idle_timeout = \"5m\"\n"), get: sIdle, want: 5 * mins},

		// service resume_window: the top-level one unless given; "0s" turns it off.
		{name: "service resume_window default", sides: both, src: service("a:1", ""), get: sResume, want: DefaultResumeWindow},
		{name: "service resume_window from the top", src: "resume_window = \"45s\"\n" + service("a:1", ""), get: sResume, want: 45 * sec},
		{name: "service resume_window overrides", sides: both, src: service("a:179", "  resume_window = \"5m\"\n"), get: sResume, want: 5 * mins},
		{name: "service resume_window 0s overrides the default", sides: both, src: service("a:1", "  resume_window = \"0s\"\n"), get: sResume, want: time.Duration(0)},
		{name: "service resume_window 0s overrides the top", src: "resume_window = \"1h\"\n" + service("a:1", "  resume_window = \"0s\"\n"), get: sResume, want: time.Duration(0)},
		{name: "service resume_window on with the top off", src: "resume_window = \"0s\"\n" + service("a:1", "  resume_window = \"1h\"\n"), get: sResume, want: time.Hour},
		{name: "service resume_window fields", src: service("a:1", "  resume_window = \"0s\"\n"), get: svc(func(s Service) any { return [2]any{s.ResumeWindow, s.ResumeWindowExplicit} }), want: [2]any{time.Duration(0), true}},
		{name: "service resume_window fields unset", src: service("a:1", ""), get: svc(func(s Service) any { return [2]any{s.ResumeWindow, s.ResumeWindowExplicit} }), want: [2]any{time.Duration(0), false}},

		// forward class: from the listen port unless given.
		{name: "forward class BGP", src: forward("127.0.0.1:179", ""), get: fClass, want: "control"},
		{name: "forward class OpenFlow", src: forward("127.0.0.1:6653", ""), get: fClass, want: "control"},
		{name: "forward class vty", src: forward("127.0.0.1:2601", ""), get: fClass, want: "control"},
		{name: "forward class other", src: forward("127.0.0.1:9000", ""), get: fClass, want: "bulk"},
		{name: "forward class port 0", src: forward(":0", ""), get: fClass, want: "bulk"},
		{name: "forward class control", src: forward("127.0.0.1:9000", "  class = \"control\"\n"), get: fClass, want: "control"},
		{name: "forward class bulk on BGP", src: forward("127.0.0.1:179", "  class = \"bulk\"\n"), get: fClass, want: "bulk"},
		{name: "forward class on the client", sides: []bool{true}, src: cForward("127.0.0.1:646", ""), get: fClass, want: "control"},

		// forward max_conns: 1024; >= 1.
		{name: "max_conns default", src: forward(":0", ""), get: maxConns, want: 1024},
		{name: "max_conns 1", src: forward(":0", "  max_conns = 1\n"), get: maxConns, want: 1},
		{name: "max_conns on the client", sides: []bool{true}, src: cForward(":0", "  max_conns = 100000\n"), get: maxConns, want: 100000},

		// forward idle_timeout: never (0); "0s" allowed.
		{name: "forward idle_timeout default", src: forward(":0", ""), get: fIdle, want: time.Duration(0)},
		{name: "forward idle_timeout 0s", src: forward(":0", "  idle_timeout = \"0s\"\n"), get: fIdle, want: time.Duration(0)},
		{name: "forward idle_timeout 30s", src: forward(":0", "  idle_timeout = \"30s\"\n"), get: fIdle, want: 30 * sec},

		// forward min_ttl: off (0); 1..255.
		{name: "min_ttl default", src: forward(":0", ""), get: minTTL, want: 0},
		{name: "min_ttl 1", src: forward(":0", "  min_ttl = 1\n"), get: minTTL, want: 1},
		{name: "min_ttl 254", src: forward(":0", "  min_ttl = 254\n"), get: minTTL, want: 254},
		{name: "min_ttl 255 on the client", sides: []bool{true}, src: cForward(":0", "  min_ttl = 255\n"), get: minTTL, want: 255},

		// forward dscp: unset (-1); 0..63 or a name.
		{name: "forward dscp default", src: forward(":0", ""), get: fDSCP, want: -1},
		{name: "forward dscp CS6", src: forward(":0", "  dscp = \"CS6\"\n"), get: fDSCP, want: 48},
		{name: "forward dscp 0", sides: []bool{true}, src: cForward(":0", "  dscp = 0\n"), get: fDSCP, want: 0},

		// forward resume_window: as for service.
		{name: "forward resume_window default", sides: both, src: forward(":0", ""), get: fResume, want: DefaultResumeWindow},
		{name: "forward resume_window from the top", sides: both, src: "resume_window = \"10s\"\n" + forward(":0", ""), get: fResume, want: 10 * sec},
		{name: "forward resume_window overrides", sides: both, src: forward(":0", "  resume_window = \"30m\"\n"), get: fResume, want: 30 * mins},
		{name: "forward resume_window 0s overrides the default", sides: both, src: forward(":0", "  resume_window = \"0s\"\n"), get: fResume, want: time.Duration(0)},
		{name: "forward resume_window 0s overrides the top", sides: both, src: "resume_window = \"5m\"\n" + forward(":0", "  resume_window = \"0s\"\n"), get: fResume, want: time.Duration(0)},
		{name: "forward resume_window fields", src: forward(":0", "  resume_window = \"1h\"\n"), get: fwd(func(f Forward) any { return [2]any{f.ResumeWindow, f.ResumeWindowExplicit} }), want: [2]any{time.Hour, true}},
	}
	for _, tt := range tests {
		sides := tt.sides
		if sides == nil {
			sides = []bool{false}
		}
		for _, client := range sides {
			name := tt.name
			if len(sides) > 1 {
				name += map[bool]string{false: " (server)", true: " (client)"}[client]
			}
			t.Run(name, func(t *testing.T) {
				src := tt.src
				if client && strings.Contains(src, "forward \"") {
					src = strings.Replace(src, "  client = \"c\"\n", "", 1)
				}
				if tt.whole && client && strings.HasPrefix(src, "listen") {
					src = strings.Replace(src, "listen = \":8443\"", "server = \"tunnel.example.net:8443\"", 1)
				}
				if !tt.whole {
					src += map[bool]string{false: serverBase, true: clientBase}[client]
				}
				file := filepath.Join(dir, "keys.hcl")
				var p parsed
				if client {
					c, err := ParseClient(file, []byte(src))
					if err != nil {
						t.Fatalf("ParseClient:\n%s\n%v", src, err)
					}
					if err := checkClient(c); err != nil {
						t.Error(err)
					}
					p = parsed{Settings: c.Settings, TLS: c.TLS, Services: c.Services, Forwards: c.Forwards, cl: c}
				} else {
					s, err := ParseServer(file, []byte(src))
					if err != nil {
						t.Fatalf("ParseServer:\n%s\n%v", src, err)
					}
					if err := checkServer(s); err != nil {
						t.Error(err)
					}
					p = parsed{Settings: s.Settings, TLS: s.TLS, Services: s.Services, Forwards: s.Forwards, srv: s}
				}
				if got := tt.get(p); !reflect.DeepEqual(got, tt.want) {
					t.Errorf("got %#v, want %#v", got, tt.want)
				}
			})
		}
	}
}

// TestParseErrorsAllKeys proves that the new keys report every problem in
// one parse, each at its own line and column: a list element's error at
// the element, not at its key.
func TestParseErrorsAllKeys(t *testing.T) {
	dir := pemDir(t)
	file := filepath.Join(dir, "server.hcl")
	src := `listen = ":8443"
ping_after = "1m"
reload_interval = "0s"
admin {
}
admin {
  listen = "0.0.0.0:9090"
}
tls {
  cert = "c"
  key  = "k"
  ca   = "a"
  crl  = ["ca.crl", "", "nope.crl"]
  crl_stale = "never"
}
service "bgp" {
  target = "192.0.2.1:179"
  allow  = ["edge-1", "sha256:xyz",
            "nope:x"]
  source = "2001:db8::1"
  ttl    = 0
  dscp   = "EF!"
}
forward "f" {
  listen  = "127.0.0.1:179"
  client  = "edge-1"
  class   = "bgp"
  min_ttl = 300
  resume_window = "90m"
}
`
	_, err := ParseServer(file, []byte(src))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("error = %v, want an *Error", err)
	}
	want := []struct {
		line, col int
		msg       string
	}{
		{2, 14, "ping_after (1m0s) must be shorter than dead_after (30s, the default)"},
		{3, 19, `reload_interval = "0s" is too short`},
		{4, 1, "missing required key listen in the admin block"},
		{6, 1, "duplicate admin block, the first is at line 4"},
		{13, 21, "tls.crl[1] must not be empty"},
		{13, 25, "cannot read tls.crl[2] file"},
		{14, 15, `tls.crl_stale = "never" is not allowed`},
		{18, 23, `service "bgp" allow[1]: rule "sha256:xyz": an SPKI pin`},
		{19, 13, `service "bgp" allow[2]: rule "nope:x": unknown prefix "nope:"`},
		{20, 12, "cannot dial target 192.0.2.1:179"},
		{21, 12, "ttl = 0 is out of range (1 to 255)"},
		{22, 12, `dscp = "EF!" is not a DiffServ code point name`},
		{27, 13, `forward "f" class = "bgp" is not allowed`},
		{28, 13, "min_ttl = 300 is out of range (1 to 255)"},
		{29, 19, `forward "f" resume_window = "90m" is too long`},
	}
	if len(cerr.Problems) != len(want) {
		t.Errorf("got %d problems, want %d:\n%v", len(cerr.Problems), len(want), err)
	}
	for i, w := range want {
		if i >= len(cerr.Problems) {
			break
		}
		p := cerr.Problems[i]
		if p.Line != w.line || p.Col != w.col || !strings.Contains(p.Msg, w.msg) {
			t.Errorf("problem %d = %s\nwant %d:%d containing %q", i, p.format(), w.line, w.col, w.msg)
		}
	}
}

// checkExtras returns what makes the keys beyond the basics invalid, or
// nil: what a config returned without error promises about them.
func checkExtras(t TLS, st Settings, services []Service, forwards []Forward, server bool) error {
	var errs []error
	for _, p := range t.CRL {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("crl path %q is not absolute", p))
		}
	}
	if t.CRLStale != "warn" && t.CRLStale != "refuse" {
		errs = append(errs, fmt.Errorf("crl_stale %q", t.CRLStale))
	}
	if server && t.Verify != nil || t.Verify != nil && len(t.Verify) == 0 {
		errs = append(errs, fmt.Errorf("verify %q", t.Verify))
	}
	for _, r := range slices.Concat(t.Verify, slices.Concat(slicesOf(services, func(s Service) []string { return s.Allow })...)) {
		if _, err := ssl.ParseRule(r); err != nil {
			errs = append(errs, err)
		}
	}
	// The agents use the rules parsed at load, never the text: each list
	// must be parsed whole, in order.
	sameRules := func(what string, text []string, rules ssl.Rules) {
		if !slices.Equal(text, slicesOf(rules, ssl.Rule.String)) {
			errs = append(errs, fmt.Errorf("%s %q parsed as %v", what, text, rules))
		}
	}
	sameRules("verify", t.Verify, t.VerifyRules)
	for _, s := range services {
		sameRules("service "+s.Name+" allow", s.Allow, s.AllowRules)
	}
	if st.ReloadInterval != 0 && st.ReloadInterval < time.Second || st.ExpiryWarning <= 0 || st.PingAfter <= 0 ||
		st.DeadAfter <= st.PingAfter || st.DrainTimeout < 0 || st.MaxStreamsPerSession < 1 || st.MaxSessionBuffer < 8<<20 || st.HeaderTimeout <= 0 || st.DSCP < -1 || st.DSCP > 63 ||
		!validResumeWindow(st.ResumeWindow, true) {
		errs = append(errs, fmt.Errorf("settings %+v", st))
	}
	if st.Admin == "" && st.AdminPublic {
		errs = append(errs, errors.New("admin public without admin"))
	}
	if st.Admin != "" {
		if msg := checkAddr(st.Admin, listenAddr); msg != "" {
			errs = append(errs, fmt.Errorf("admin %q: %s", st.Admin, msg))
		}
		if !st.AdminPublic && !isLoopback(hostOf(st.Admin)) {
			errs = append(errs, fmt.Errorf("admin %q is not loopback", st.Admin))
		}
		for _, f := range forwards {
			if overlap(st.Admin, f.Listen) {
				errs = append(errs, fmt.Errorf("admin %q clashes with forward %q", st.Admin, f.Name))
			}
		}
	}
	for _, s := range services {
		if s.Class != ClassControl && s.Class != ClassBulk || s.TTL < 0 || s.TTL > 255 || s.DSCP < -1 || s.DSCP > 63 || s.IdleTimeout < 0 ||
			!validResumeWindow(s.ResumeWindow, s.ResumeWindowExplicit) {
			errs = append(errs, fmt.Errorf("service %+v", s))
		}
		if s.Source != "" {
			if _, err := netip.ParseAddr(s.Source); err != nil {
				errs = append(errs, fmt.Errorf("service %q source: %v", s.Name, err))
			}
		}
	}
	for _, f := range forwards {
		if f.Class != ClassControl && f.Class != ClassBulk || f.MaxConns < 1 || f.MinTTL < 0 || f.MinTTL > 255 || f.DSCP < -1 || f.DSCP > 63 || f.IdleTimeout < 0 ||
			!validResumeWindow(f.ResumeWindow, f.ResumeWindowExplicit) {
			errs = append(errs, fmt.Errorf("forward %+v", f))
		}
	}
	return errors.Join(errs...)
}

// validResumeWindow reports whether w is a resume window a config may
// hold: in bounds when given, zero when not.
func validResumeWindow(w time.Duration, given bool) bool {
	if !given {
		return w == 0
	}
	return w >= 0 && w <= MaxResumeWindow
}

// TestResumeWindowOr checks the effective window of blocks built in code,
// as an agent's tests build them, not parsed.
func TestResumeWindowOr(t *testing.T) {
	const top = 90 * time.Second
	for _, tt := range []struct {
		name     string
		window   time.Duration
		explicit bool
		want     time.Duration
	}{
		{"unset", 0, false, top},
		{"unset ignores the field", time.Hour, false, top},
		{"0s turns it off", 0, true, 0},
		{"own window", time.Minute, true, time.Minute},
	} {
		s := Service{ResumeWindow: tt.window, ResumeWindowExplicit: tt.explicit}
		f := Forward{ResumeWindow: tt.window, ResumeWindowExplicit: tt.explicit}
		if got := s.ResumeWindowOr(top); got != tt.want {
			t.Errorf("%s: Service.ResumeWindowOr(%v) = %v, want %v", tt.name, top, got, tt.want)
		}
		if got := f.ResumeWindowOr(top); got != tt.want {
			t.Errorf("%s: Forward.ResumeWindowOr(%v) = %v, want %v", tt.name, top, got, tt.want)
		}
	}
	if got := (Service{}).ResumeWindowOr(0); got != 0 {
		t.Errorf("a zero Service with the top off: %v, want 0", got)
	}
}

func slicesOf[T, U any](ts []T, f func(T) U) []U {
	us := make([]U, 0, len(ts))
	for _, t := range ts {
		us = append(us, f(t))
	}
	return us
}

// AdmitServer: without verify, any server; with it, a server that matches
// one rule; verify text that was never parsed (a TLS built in code) admits
// nobody rather than everybody.
func TestAdmitServer(t *testing.T) {
	leaf := func(cn string) ssl.Identity {
		id := ssl.Identity{Leaf: &x509.Certificate{}}
		id.Leaf.Subject.CommonName = cn
		return id
	}
	if (TLS{}).AdmitServer() != nil {
		t.Error("no verify, yet a check")
	}
	admit := TLS{Verify: []string{"tunnel-a", "cn:tunnel-b"}, VerifyRules: rulesOf("tunnel-a", "cn:tunnel-b")}.AdmitServer()
	for cn, ok := range map[string]bool{"tunnel-a": true, "tunnel-b": true, "tunnel-c": false} {
		if err := admit(leaf(cn)); (err == nil) != ok {
			t.Errorf("server %s: %v", cn, err)
		}
	}
	if err := admit(leaf("tunnel-c")); err == nil || !strings.Contains(err.Error(), "tls.verify") {
		t.Errorf("a refusal should name tls.verify: %v", err)
	}
	unparsed := TLS{Verify: []string{"tunnel-a"}}.AdmitServer()
	if unparsed == nil || unparsed(leaf("tunnel-a")) == nil {
		t.Error("verify text without its parsed rules admitted a server")
	}
}
