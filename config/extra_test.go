package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
		DrainTimeout: 0, MaxStreamsPerSession: 10, Admin: "127.0.0.1:0", DSCP: 48}
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

func TestDefaultClass(t *testing.T) {
	for port, want := range map[int]string{179: ClassControl, 6653: ClassControl, 2605: ClassControl, 443: ClassBulk, 22: ClassBulk, 0: ClassBulk} {
		if got := DefaultClass(port); got != want {
			t.Errorf("DefaultClass(%d) = %s, want %s", port, got, want)
		}
	}
}
