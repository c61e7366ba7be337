# tunnel-client configuration. Reference: `tunnel-client help`, README.md.
#   tunnel-client validate -config /etc/tunnel/client.hcl
server = "tunnel.example.net:8443"

tls {
  cert = "/etc/tunnel/tls/client.crt"
  key  = "/etc/tunnel/tls/client.key"
  ca   = "/etc/tunnel/tls/ca.crt"
}

admin {
  listen = "127.0.0.1:9091"
}

# The class of a forward is the one the server gives its service: a "bgp"
# service whose target is port 179 makes this forward ride the control
# session, whatever port it listens on (`class = "bulk"` would override).
# forward "bgp" {
#   listen = "127.0.0.1:1179"
# }
