// Package config loads and validates the HCL configuration files of
// tunnel-server and tunnel-client.
//
// A server config:
//
//	listen = "0.0.0.0:8443"    # required
//	handshake_timeout = "10s"  # default 10s
//	max_handshakes = 64        # default 64, handshakes in progress at once
//	max_handshakes_per_source = 16 # default a quarter of max_handshakes: from one IP address
//	dial_timeout = "10s"       # default 10s
//	log_level = "info"         # trace, debug, info (default), warn, error
//	log_format = "text"        # text (default), json
//	tls {                      # required; relative paths resolve against this file's directory
//	  cert = "server.crt"      # PEM, leaf first then intermediates
//	  key  = "server.key"
//	  ca   = "ca.crt"          # trust anchors for client certificates
//	}
//	service "echo" {           # clients may open it
//	  target = "127.0.0.1:7"
//	  allow  = ["client-a"]    # required: deny by default
//	}
//	forward "edge-ssh" {       # listen here, open service "ssh" on client edge-1
//	  listen  = "127.0.0.1:2222"
//	  client  = "edge-1"       # required on the server
//	  service = "ssh"          # default: the forward's name
//	}
//
// Keys both configs take besides those above, shown with their defaults;
// those commented out are off or unset unless written:
//
//	expiry_warning = "720h"        # warn this long before a certificate, CA or CRL expires; > 0
//	ping_after = "10s"             # ping the peer this often; > 0
//	dead_after = "30s"             # the peer is dead after this long without a single byte; > ping_after
//	drain_timeout = "10s"          # graceful stop: how long open streams may finish; "0s": no drain
//	max_streams_per_session = 1024 # streams on one session at once, both directions, from the peer's open; >= 1
//	max_session_buffer = "256MiB"  # receive buffer one session may make us hold: also caps its streams
//	                               # at this / window (256 KiB control, 1 MiB bulk); "8MiB" to "1TiB"
//	header_timeout = "10s"         # how long a stream the peer opened may take to send its header; > 0
//	resume_window = "120s"         # how long a stream outlives the loss of the tunnel connection; "0s": off; at most "1h"
//	# reload_interval = "1m"       # also reload when the config or TLS files change; at least "1s"
//	# dscp = "CS6"                 # marking of the tunnel's own TLS socket: 0..63 or CS0..CS7, EF, AF11..AF43
//	# admin {                      # /metrics, /healthz, /status
//	#   listen = "127.0.0.1:9090"  # host:port, port 0 picks one; must be loopback...
//	#   public = true              # ...unless this says otherwise (default false)
//	# }
//	tls {
//	  # crl = ["ca.crl"]           # CRL files (PEM or DER) checked on every handshake; resolved and checked like cert
//	  crl_stale = "warn"           # when a CRL is past its next update: "warn" or "refuse"
//	}
//	service "x" {
//	  class = "bulk"               # "control" or "bulk"; default DefaultClass(port of target)
//	  # source = "192.0.2.2"       # IP address (no port) to dial the target from, of the target's family
//	  # ttl = 255                  # IP TTL / hop limit towards the target, 1..255 (255 for GTSM, RFC 5082)
//	  # dscp = 48                  # marking towards the target, as for the top-level dscp
//	  proxy_protocol = false       # send a PROXY v2 header to the target
//	  idle_timeout = "0s"          # close a stream idle this long; "0s": never
//	  # resume_window = "0s"       # this service's streams: overrides the top-level resume_window
//	}
//	forward "x" {
//	  class = "bulk"               # default: the service's class on the other side, else DefaultClass(port of listen)
//	  max_conns = 1024             # connections in progress through it; >= 1
//	  idle_timeout = "0s"          # as for service
//	  # min_ttl = 254              # refuse local connections arriving with a lower IP TTL (GTSM), 1..255
//	  # dscp = "EF"                # marking of the accepted local connections
//	  # resume_window = "30m"      # as for service
//	}
//
// The server also takes max_sessions = 1024 (sessions at once) and
// max_sessions_per_identity = 4 (sessions of one client identity at once),
// each at least 1. The client also takes session_wait = "10s" (how long a
// new local connection waits for the session while it is down; "0s": not at
// all), bulk_connections = 2 (how many parallel sessions, each its own TLS
// connection, the bulk class may use to its server, 1..8: every stream
// starts on the first and one that turns heavy moves to the others, so
// messages never queue behind a transfer in one TCP connection; one TLS
// connection is one core of crypto on each side, so more than 2 suit hosts
// with cores to spare, since heavy streams then take them from the control
// class; beyond the cores of either host they buy nothing), bulk_spread =
// false (true: while the client carries nothing but heavy streams, they
// spread over all the bulk lanes, the first too, and leave it once another
// stream opens) and tls.verify = ["rule", ...]:
// rules the server's certificate must match besides server_name, in the
// syntax of allow (see ssl.ParseRule); left out, any certificate valid for
// server_name is accepted.
//
// Every allow and verify entry is an identity rule: "client-a" (CN or DNS
// SAN), "cn:...", "dns:...", "uri:..." or "spiffe://..." (with '*' within a
// path segment), "sha256:BASE64" (SPKI pin), "issuer:NAME" or
// "issuer:sha256:BASE64".
//
// A service's class defaults to "control" for the well-known target ports
// of routing and control protocols (see [DefaultClass]) and "bulk"
// otherwise; a forward without one takes the class the other side gives
// the service (its listen port's default is only the fallback). A dscp is a
// number 0..63 or one of the names CS0..CS7, EF and AF11..AF43 (any case);
// the field holds the number, -1 when unset. Zero values written out are
// kept, never replaced by a default: drain_timeout = "0s" means no drain,
// session_wait = "0s" no waiting.
//
// resume_window is how long a stream whose tunnel connection was lost waits,
// holding its local connection and the bytes not yet confirmed, for the
// client to reconnect and resume it; past it the stream ends with a reset.
// The default of 120s lets a BGP session (hold time commonly 90s) survive a
// short outage plus the client's reconnect backoff; longer than the peers'
// own hold time is useless. A service or forward block's resume_window,
// "0s" included, overrides the top-level one for its streams.
//
// A client config has server = "host:port" (or a list of them, tried in
// order) instead of listen and max_handshakes, may set tls.server_name
// (default: the host of the first server), and its forwards have no client
// key; allow is optional in its services.
//
// Loading reports every problem in the file at once, each with the file,
// line and column it concerns and a hint on how to fix it (see [Error]).
// A config returned without error is complete: defaults are applied, paths
// are absolute and the TLS files it names exist and are readable. The
// certificates themselves are not parsed here.
package config

import (
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

// Defaults applied to keys that are absent from the file.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxHandshakes    = 64
	DefaultDialTimeout      = 10 * time.Second
	DefaultLogLevel         = "info"
	DefaultLogFormat        = "text"

	DefaultExpiryWarning          = 30 * 24 * time.Hour
	DefaultPingAfter              = 10 * time.Second
	DefaultDeadAfter              = 30 * time.Second
	DefaultDrainTimeout           = 10 * time.Second
	DefaultMaxStreamsPerSession   = 1024
	DefaultMaxSessionBuffer       = 256 << 20
	DefaultHeaderTimeout          = 10 * time.Second
	DefaultResumeWindow           = 120 * time.Second
	DefaultMaxSessions            = 1024
	DefaultMaxSessionsPerIdentity = 4
	DefaultSessionWait            = 10 * time.Second
	DefaultBulkConnections        = 2
	DefaultMaxConns               = 1024
	DefaultCRLStale               = "warn"
)

// MaxBulkConnections bounds bulk_connections; the server refuses a lane
// beyond it.
const MaxBulkConnections = 8

// MaxResumeWindow bounds resume_window: a suspended stream holds its local
// connection and its replay buffer for the whole window.
const MaxResumeWindow = time.Hour

// TLS is the tls block. Paths are absolute after loading (relative ones
// resolve against the config file's directory).
type TLS struct {
	Cert       string   // PEM, leaf first then intermediates (required)
	Key        string   // PEM private key (required)
	CA         string   // PEM trust anchors for the peer (required)
	ServerName string   // client only, key server_name; default: host part of the first server address
	CRL        []string // key crl: CRL files (PEM or DER) checked on every handshake; optional
	CRLStale   string   // key crl_stale: "warn" (default) or "refuse" when a CRL is past its next update
	Verify     []string // client only, key verify: rules the server's certificate must match (as in allow); optional

	VerifyRules ssl.Rules // Verify, parsed when the file was read
}

// AdmitServer is the check of key verify on the server's certificate, as
// the client agent and `validate -online` run it: nil without verify
// (any server the CA vouches for). A verify list whose rules were not
// parsed (a TLS built in code) admits no server: it fails closed.
func (t TLS) AdmitServer() func(ssl.Identity) error {
	if len(t.Verify) == 0 {
		return nil
	}
	if len(t.VerifyRules) != len(t.Verify) {
		return func(ssl.Identity) error {
			return fmt.Errorf("tls.verify %v was not parsed: no server is admitted", t.Verify)
		}
	}
	return func(id ssl.Identity) error {
		if _, ok := t.VerifyRules.Match(id); ok {
			return nil
		}
		return fmt.Errorf("server %q matches none of tls.verify %v", id.Name(), t.Verify)
	}
}

// Service is a service block: a target this side dials when the peer opens
// the service.
type Service struct {
	Name   string   // block label
	Target string   // host:port to dial (required)
	Allow  []string // identities allowed to open it; required and non-empty on the server, optional on the client

	AllowRules ssl.Rules // Allow, parsed when the file was read: the agents' ACL for the service

	Class         string        // key class: "control" or "bulk"; default DefaultClass(target port)
	ClassExplicit bool          // Class was given in the file (not the default)
	Source        string        // key source: IP address (no port) to dial the target from, of the target's family when that is an IP; optional
	TTL           int           // key ttl: IP TTL / hop limit towards the target, 1..255 (255 for GTSM); 0 = system default
	DSCP          int           // key dscp: 0..63 or a name (CS6, EF, AF41...); -1 = unset
	ProxyProtocol bool          // key proxy_protocol: send a PROXY v2 header to the target
	IdleTimeout   time.Duration // key idle_timeout: close a stream idle this long; 0 = never

	// ResumeWindow is key resume_window, which overrides
	// Settings.ResumeWindow for the service's streams when
	// ResumeWindowExplicit ("0s" turns resumption off); ask ResumeWindowOr.
	ResumeWindow         time.Duration
	ResumeWindowExplicit bool
}

// ResumeWindowOr is the resume window of the service's streams, given def,
// the top-level Settings.ResumeWindow: its own when the block has one.
func (s Service) ResumeWindowOr(def time.Duration) time.Duration {
	if s.ResumeWindowExplicit {
		return s.ResumeWindow
	}
	return def
}

// Forward is a forward block: a local listener whose connections are
// carried to a service on the other side.
type Forward struct {
	Name    string // block label
	Listen  string // host:port to listen on (required)
	Service string // default: Name
	Client  string // server side only (required there): identity of the client whose session carries the stream

	// Class is the key class, an explicit choice when ClassExplicit. Without
	// one it is only a fallback, DefaultClass(listen port): the agents use
	// the class the other side gives its service (see mux.Hello.Services).
	Class         string
	ClassExplicit bool
	MaxConns      int           // key max_conns: connections in progress through it; default 1024
	IdleTimeout   time.Duration // key idle_timeout: close a stream idle this long; 0 = never
	MinTTL        int           // key min_ttl: drop local connections arriving with a lower IP TTL (GTSM), 1..255; 0 = off
	DSCP          int           // key dscp: marking of the local socket, as for Service; -1 = unset

	// ResumeWindow and ResumeWindowExplicit are as for Service.
	ResumeWindow         time.Duration
	ResumeWindowExplicit bool
}

// ResumeWindowOr is the resume window of the forward's streams, given def,
// the top-level Settings.ResumeWindow: its own when the block has one.
func (f Forward) ResumeWindowOr(def time.Duration) time.Duration {
	if f.ResumeWindowExplicit {
		return f.ResumeWindow
	}
	return def
}

// Settings both agents share beyond the basics.
type Settings struct {
	ReloadInterval       time.Duration // key reload_interval: re-read the files this often when they change; 0 = off
	ExpiryWarning        time.Duration // key expiry_warning: warn this long before a certificate, CA or CRL expires; default 720h
	PingAfter            time.Duration // key ping_after: ping the peer this often; default 10s
	DeadAfter            time.Duration // key dead_after: declare the peer dead after this long without a byte; default 30s
	DrainTimeout         time.Duration // key drain_timeout: bound on the graceful stop; default 10s; 0 = none
	MaxStreamsPerSession int           // key max_streams_per_session: default 1024
	MaxSessionBuffer     int64         // key max_session_buffer: bytes; default 256 MiB
	HeaderTimeout        time.Duration // key header_timeout: default 10s
	ResumeWindow         time.Duration // key resume_window: how long a stream survives the loss of the tunnel connection; default 120s; 0 = off
	Admin                string        // admin { listen }: the admin listener; "" = off
	AdminPublic          bool          // admin { public = true }: allow a non-loopback admin address
	DSCP                 int           // key dscp: marking of the tunnel's own TLS socket; -1 = unset
}

// Server is the configuration of tunnel-server.
type Server struct {
	Path             string        // the config file, absolute
	Listen           string        // required, host:port
	TLS              TLS           // required
	HandshakeTimeout time.Duration // key handshake_timeout; default 10s; > 0
	MaxHandshakes    int           // key max_handshakes; default 64; >= 1
	// MaxHandshakesPerSource is key max_handshakes_per_source: handshakes in
	// progress from one IP address; default a quarter of MaxHandshakes (at
	// least 1), at most MaxHandshakes. A flood from one host then cannot
	// keep every other client out until its handshakes time out.
	MaxHandshakesPerSource int
	DialTimeout            time.Duration  // key dial_timeout; default 10s; > 0
	LogLevel               string         // key log_level: trace|debug|info|warn|error; default "info"
	LogFormat              string         // key log_format: text|json; default "text"
	Services               []Service      // in file order
	Forwards               []Forward      // in file order
	ForwardLines           map[string]int // line of each forward's listen key, by name: for the agents' errors
	Settings

	MaxSessions            int // key max_sessions: default 1024
	MaxSessionsPerIdentity int // key max_sessions_per_identity: default 4
}

// Client is the configuration of tunnel-client.
type Client struct {
	Path             string         // the config file, absolute
	Servers          []string       // key server: a string or a list of strings, tried in order; required
	TLS              TLS            // required; ServerName defaults to the host of Servers[0]
	HandshakeTimeout time.Duration  // key handshake_timeout; default 10s; > 0
	DialTimeout      time.Duration  // key dial_timeout; default 10s; > 0
	LogLevel         string         // key log_level: trace|debug|info|warn|error; default "info"
	LogFormat        string         // key log_format: text|json; default "text"
	Services         []Service      // in file order
	Forwards         []Forward      // in file order
	ForwardLines     map[string]int // line of each forward's listen key, by name: for the agents' errors
	Settings

	SessionWait time.Duration // key session_wait: how long a new local connection waits for the session while it is down; default 10s
	// BulkConnections is key bulk_connections: how many sessions (each its
	// own TLS connection, so its own core of crypto on each side) the bulk
	// class may use at once to the same server; 1..MaxBulkConnections,
	// default 2 (the first for every stream's start and the light ones,
	// the others for heavy streams).
	BulkConnections int
	// BulkSpread is key bulk_spread: while the client carries nothing but
	// heavy streams, they spread over all the bulk lanes, the first too;
	// default false (they ride the others only).
	BulkSpread bool
}

// LoadServer reads and parses the server config file at path.
func LoadServer(path string) (*Server, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load server config: %w", err)
	}
	return ParseServer(path, src)
}

// LoadClient reads and parses the client config file at path.
func LoadClient(path string) (*Client, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load client config: %w", err)
	}
	return ParseClient(path, src)
}

// ParseServer parses src as a server config. filename names the file in
// messages, and relative paths in it resolve against its directory.
// A non-nil error is an *[Error].
func ParseServer(filename string, src []byte) (*Server, error) {
	d, body := parse(filename, src)
	if body == nil {
		return nil, d.err()
	}
	s := &Server{
		Path:                   d.path,
		MaxHandshakes:          DefaultMaxHandshakes,
		MaxSessions:            DefaultMaxSessions,
		MaxSessionsPerIdentity: DefaultMaxSessionsPerIdentity,
	}
	top := d.content(body, serverTop, "the server config", "", hcl.Range{})
	if a := top.attr("listen"); a != nil {
		s.Listen, _ = d.address(top, a, listenAddr)
	} else {
		d.missing(top, "listen", `listen = "0.0.0.0:8443"`)
	}
	if a := top.attr("max_handshakes"); a != nil {
		if n, ok := d.integer(top, a); ok {
			if n < 1 {
				d.addf(a.Expr.Range(), "max_handshakes must be at least 1, got %d (it bounds the TLS handshakes in progress at once)", n)
			} else {
				s.MaxHandshakes = n
			}
		}
	}
	if a := top.attr("max_handshakes_per_source"); a != nil {
		if n, ok := d.intRange(top, a, 1, math.MaxInt32); ok {
			if n > s.MaxHandshakes {
				d.addf(a.Expr.Range(), "max_handshakes_per_source is %d, more than max_handshakes (%d): one address could then take every handshake slot (lower it, or raise max_handshakes)", n, s.MaxHandshakes)
			} else {
				s.MaxHandshakesPerSource = n
			}
		}
	}
	if s.MaxHandshakesPerSource == 0 {
		s.MaxHandshakesPerSource = max(1, s.MaxHandshakes/4)
	}
	for key, dst := range map[string]*int{"max_sessions": &s.MaxSessions, "max_sessions_per_identity": &s.MaxSessionsPerIdentity} {
		if a := top.attr(key); a != nil {
			if n, ok := d.intRange(top, a, 1, math.MaxInt32); ok {
				*dst = n
			}
		}
	}
	c := d.common(top, true)
	s.Settings = c.settings
	s.TLS = c.tls
	s.HandshakeTimeout = c.handshakeTimeout
	s.DialTimeout = c.dialTimeout
	s.LogLevel = c.logLevel
	s.LogFormat = c.logFormat
	s.Services = c.services
	s.Forwards = c.forwards
	s.ForwardLines = c.forwardLines
	if s.Listen != "" {
		d.listenClash(c, s.Listen, top.attr("listen"))
	}
	if err := d.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// ParseClient parses src as a client config. filename names the file in
// messages, and relative paths in it resolve against its directory.
// A non-nil error is an *[Error].
func ParseClient(filename string, src []byte) (*Client, error) {
	d, body := parse(filename, src)
	if body == nil {
		return nil, d.err()
	}
	cl := &Client{Path: d.path, SessionWait: DefaultSessionWait, BulkConnections: DefaultBulkConnections}
	top := d.content(body, clientTop, "the client config", "", hcl.Range{})
	if a := top.attr("server"); a != nil {
		cl.Servers = d.servers(top, a)
	} else {
		d.missing(top, "server", `server = "tunnel.example.net:8443"`)
	}
	if a := top.attr("session_wait"); a != nil {
		if v, ok := d.durationOrZero(top, a); ok {
			cl.SessionWait = v
		}
	}
	if a := top.attr("bulk_connections"); a != nil {
		if n, ok := d.integer(top, a); ok {
			if n < 1 || n > MaxBulkConnections {
				d.addf(a.Expr.Range(), "bulk_connections = %d is out of range (1 to %d): one TLS connection per core of crypto; more than 1 suits hosts with cores to spare, and beyond the cores of either host more buy nothing", n, MaxBulkConnections)
			} else {
				cl.BulkConnections = n
			}
		}
	}
	if a := top.attr("bulk_spread"); a != nil {
		if v, ok := d.boolean(top, a); ok {
			cl.BulkSpread = v
		}
	}
	c := d.common(top, false)
	cl.Settings = c.settings
	cl.TLS = c.tls
	if c.tlsBlock != nil && !c.serverNameSet && len(cl.Servers) > 0 {
		cl.TLS.ServerName = hostOf(cl.Servers[0])
	}
	cl.HandshakeTimeout = c.handshakeTimeout
	cl.DialTimeout = c.dialTimeout
	cl.LogLevel = c.logLevel
	cl.LogFormat = c.logFormat
	cl.Services = c.services
	cl.Forwards = c.forwards
	cl.ForwardLines = c.forwardLines
	if err := d.err(); err != nil {
		return nil, err
	}
	return cl, nil
}

// Error lists every problem found in a config file (not just the first).
type Error struct{ Problems []Problem }

// Problem is one thing wrong with a config file.
type Problem struct {
	File      string
	Line, Col int    // 0 when unknown
	Msg       string // lowercase "what is wrong (how to fix)"
}

// Error returns one problem per line, each as "file:line:col: msg".
func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.format())
	}
	return b.String()
}

func (p Problem) format() string {
	switch {
	case p.Line > 0 && p.Col > 0:
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
	case p.Line > 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	default:
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	}
}
