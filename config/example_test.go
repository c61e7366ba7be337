package config_test

import (
	"fmt"

	"github.com/tunnelworks/tunnel/config"
)

func ExampleParseServer() {
	src := `listen = "0.0.0.0"
handshake_timeout = 10
service "echo" {
  target = "127.0.0.1:7"
}
forward "edge-ssh" {
  listen = "127.0.0.1:2222"
  sevice = "ssh"
}
`
	_, err := config.ParseServer("server.hcl", []byte(src))
	fmt.Println(err)
	// Output:
	// server.hcl:1:10: listen = "0.0.0.0": missing port in address (write host:port, e.g. "127.0.0.1:2222", ":8443" or "[::1]:2222"; put IPv6 addresses in brackets)
	// server.hcl:2:21: handshake_timeout must be a duration string, not a number (e.g. handshake_timeout = "10s"; a bare number has no unit: write "10s" for ten seconds)
	// server.hcl:3:1: service "echo" has no allow list: services are deny by default; list the client identities that may open it (add allow = ["client-id"])
	// server.hcl:6:1: missing required key client in forward "edge-ssh" (add client = "client-id": the identity of the connected client whose session carries the stream)
	// server.hcl:8:3: unknown key "sevice" in forward "edge-ssh" (did you mean "service"? allowed keys: listen, service, client, class, max_conns, idle_timeout, min_ttl, dscp, resume_window; no blocks are allowed here)
	// server.hcl: missing tls block (add tls { cert = "...", key = "...", ca = "..." })
}
