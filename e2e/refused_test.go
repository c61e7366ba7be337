package e2e

import (
	"testing"
)

// Streams the server refuses: the local connection is closed with no data,
// and both logs say why.
func TestRefusedStreams(t *testing.T) {
	t.Parallel()
	echoAddr := startEcho(t)
	tn := startTunnel(t, tunnelSpec{
		services: []svc{
			{name: "secret", target: echoAddr, allow: []string{"client-b"}},
			{name: "dead", target: refusedAddr(t), allow: []string{"client-a"}},
			{name: "echo", target: echoAddr, allow: []string{"client-a"}},
		},
		forwards: []fwd{
			{name: "deny", service: "secret"},
			{name: "nope", service: "no-such-service"},
			{name: "dead", service: "dead"},
			{name: "echo", service: "echo"},
		},
	})
	cases := []struct {
		name, forward string
		clientSays    []string
		serverSays    []string
	}{
		{"denied", "deny",
			[]string{"stream refused by peer", "forward=deny", "denied"},
			[]string{"stream refused: denied", "peer=client-a", "service=secret"}},
		// The peer hears "denied" for an unknown service too (it cannot
		// list service names); only the server's log says which.
		{"unknown service", "nope",
			[]string{"stream refused by peer", "forward=nope", "denied", `service \"no-such-service\" is not available to you`},
			[]string{"stream refused: unknown service", "peer=client-a", "service=no-such-service"}},
		{"target refuses", "dead",
			[]string{"stream refused by peer", "forward=dead", "dial failed", "connection refused"},
			[]string{"stream refused: dial failed", "service=dead", "connection refused"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			expectRefused(t, tn.client.forwards[tc.forward])
			line := tn.client.waitLine(t, tc.clientSays...)
			t.Logf("client: %s", line)
			line = tn.server.waitLine(t, tc.serverSays...)
			t.Logf("server: %s", line)
		})
	}
	// A refused stream leaves the session alone.
	t.Run("session still works", func(t *testing.T) {
		t.Parallel()
		if err := oneStream(tn.client.forwards["echo"], 1); err != nil {
			t.Fatal(err)
		}
	})
}
