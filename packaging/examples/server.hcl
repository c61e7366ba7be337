# tunnel-server configuration. Reference: `tunnel-server help`, README.md.
# Make the certificates with `tunnel-server cert ...` (see README.md), then:
#   tunnel-server validate -config /etc/tunnel/server.hcl
listen = "0.0.0.0:8443"

tls {
  cert = "/etc/tunnel/tls/server.crt"
  key  = "/etc/tunnel/tls/server.key"
  ca   = "/etc/tunnel/tls/ca.crt"
}

admin {
  listen = "127.0.0.1:9090"
}

# service "bgp" {
#   target = "127.0.0.1:179"
#   allow  = ["edge-1"]
#   ttl    = 255
# }
