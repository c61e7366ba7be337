package mux

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/yamux"

	"github.com/tunnelworks/tunnel/transport/ssl"
)

func TestRefusalWire(t *testing.T) {
	msg := encodeRefusal(RefusalRevoked, "certificate \"edge-1\" (serial 01:02) is revoked\n\x00")
	_, err := readHello(bytes.NewReader(msg))
	var r *RefusedError
	if !errors.As(err, &r) || r.Code != RefusalRevoked || !r.ByPeer || !r.Definite() {
		t.Fatalf("err = %#v", err)
	}
	if r.Msg != `certificate "edge-1" (serial 01:02) is revoked??` {
		t.Fatalf("text not cleaned: %q", r.Msg)
	}
	if got := r.Error(); got != "the server refused us: "+r.Msg {
		t.Fatalf("Error() = %q", got)
	}
	// The text is bounded whatever the sender wanted.
	long := encodeRefusal(RefusalLimit, strings.Repeat("é", 1000))
	if err := readRefusal(bytes.NewReader(long)); !errors.As(err, &r) || len(r.Msg) > maxRefusalText || r.Definite() {
		t.Fatalf("long: %v", err)
	}
	// Another refusal version: still a refusal, with no words we trust.
	if err := readRefusal(bytes.NewReader([]byte("TUNR\x02\x01\x00\x00"))); !errors.As(err, &r) || r.Code != RefusalOther {
		t.Fatalf("version 2: %v", err)
	}
	for _, bad := range [][]byte{[]byte("TUNR\x01\x02\x00"), []byte("TUNR\x01\x02\x02\x01"), []byte("TUNR\x01\x02\x00\x05ab")} {
		if err := readRefusal(bytes.NewReader(bad)); errors.As(err, &r) {
			t.Errorf("%q read as a refusal: %v", bad, r)
		}
	}
}

func FuzzReadRefusal(f *testing.F) {
	f.Add(encodeRefusal(RefusalNotAllowed, "not allowed"))
	f.Add([]byte("TUNR\x01\x02\xff\xff"))
	f.Add([]byte("TUNR\x09"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r *RefusedError
		if err := readRefusal(bytes.NewReader(b)); errors.As(err, &r) {
			if len(r.Msg) > maxRefusalText || cleanText(r.Msg, maxRefusalText) != r.Msg {
				t.Fatalf("unclean or long text %q", r.Msg)
			}
			// Whatever parsed survives a round trip.
			var again *RefusedError
			if err := readRefusal(bytes.NewReader(encodeRefusal(r.Code, r.Msg))); !errors.As(err, &again) || *again != *r {
				t.Fatalf("round trip: %v vs %v", again, r)
			}
		}
	})
}

func TestHelloServices(t *testing.T) {
	cfg := Config{Classes: []string{"control", "bulk"}, Class: "bulk"}
	cli := cfg
	cli.Services = map[string]string{"ssh": "bulk"}
	srv := cfg
	srv.Class = "" // a server names no class
	srv.Services = map[string]string{"bgp": "control", "web": "bulk"}
	server, client := sessionsWith(t, "client-a", srv, cli)
	if got := client.PeerHello.Services; len(got) != 2 || got["bgp"] != "control" || got["web"] != "bulk" {
		t.Fatalf("client got %v", got)
	}
	if got := server.PeerHello.Services; len(got) != 1 || got["ssh"] != "bulk" {
		t.Fatalf("server got %v", got)
	}
	for name, svcs := range map[string]map[string]string{
		"unknown class": {"bgp": "urgent"},
		"empty class":   {"bgp": ""},
		"bad name":      {"a b": "bulk"},
		"too many":      manyServices(maxHelloServices + 1),
	} {
		if _, err := checkHello(Hello{Role: RoleServer, Services: svcs}, RoleClient, cfg.Classes, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := checkHello(Hello{Role: RoleServer, Services: manyServices(maxHelloServices)}, RoleClient, cfg.Classes, nil); err != nil {
		t.Errorf("a full list refused: %v", err)
	}
	if _, err := encodeHello(Hello{Role: RoleServer, Services: manyServices(maxHelloServices)}); err != nil {
		t.Errorf("a full list of the longest names does not fit a hello: %v", err)
	}
}

func manyServices(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		name := strings.Repeat("s", maxServiceName-4) + string(rune('a'+i/26%26)) + string(rune('a'+i%26)) + string(rune('a'+i/676)) + "x"
		m[name] = "control"
	}
	return m
}

// A refused client is told why, and nothing is served on its connection,
// whatever it sends after its hello.
func TestRefusedClientGetsNothing(t *testing.T) {
	srvConn, cliConn, srvPeer, _ := tlsPair(t, "client-a")
	dialed := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		s, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, Config{
			HelloTimeout: 5 * time.Second,
			Refusal:      &RefusedError{Code: RefusalRevoked, Msg: `certificate "client-a" (serial 01) is revoked`},
		})
		if s != nil {
			// Were there a session, serve it: the test would see the dial.
			s.Serve(context.Background(), func(string) (Service, bool) {
				return Service{Allowed: func(_ ssl.Identity) bool { return true }, Dial: func(context.Context, Request) (net.Conn, error) {
					dialed <- struct{}{}
					return nil, errors.New("no")
				}}, true
			}, nil)
		}
		srvConn.Close()
		done <- err
	}()
	// The hostile client: its hello, then at once a yamux stream with a
	// header, as if the hello had been accepted.
	hello, _ := encodeHello(Hello{Role: RoleClient})
	if _, err := cliConn.Write(hello); err != nil {
		t.Fatal(err)
	}
	y, err := yamux.Client(cliConn, yamuxConfig(hclog.NewNullLogger(), nil, 256<<10, 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	if st, err := y.OpenStream(); err == nil {
		hdr, _ := encodeHeader("bgp", "", nil)
		st.Write(hdr)
	}
	var r *RefusedError
	if err := <-done; !errors.As(err, &r) || r.Code != RefusalRevoked || r.ByPeer {
		t.Fatalf("server: %v", err)
	}
	select {
	case <-dialed:
		t.Fatal("a refused client's stream was served")
	default:
	}
	<-y.CloseChan() // the server closed the connection
}

// A well-behaved client reads the refusal in place of the hello.
func TestClientReadsRefusal(t *testing.T) {
	srvConn, cliConn, srvPeer, cliPeer := tlsPair(t, "client-a")
	go func() {
		_, _ = Establish(context.Background(), srvConn, RoleServer, srvPeer, Config{
			Admit: func(Hello) error {
				return &RefusedError{Code: RefusalLimit, Msg: "server has 1 sessions, its limit (max_sessions)"}
			},
		})
		srvConn.Close()
	}()
	_, err := Establish(context.Background(), cliConn, RoleClient, cliPeer, Config{})
	var r *RefusedError
	if !errors.As(err, &r) || !r.ByPeer || r.Code != RefusalLimit || r.Definite() || !strings.Contains(err.Error(), "the server refused us: server has 1 sessions") {
		t.Fatalf("err = %v", err)
	}
}

// EndWithRefusal reaches the peer as the reason its session ended.
func TestEndWithRefusal(t *testing.T) {
	server, client := sessions(t, "client-a", Config{})
	serve(t, client, nil)
	serve(t, server, nil)
	start := time.Now()
	server.EndWithRefusal(RefusalExpired, `your certificate "client-a" expired`, 5*time.Second, errors.New("peer certificate expired"))
	select {
	case <-client.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client session still up")
	}
	var r *RefusedError
	if err := client.Err(); !errors.As(err, &r) || r.Code != RefusalExpired || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("client's reason = %v", client.Err())
	}
	// The client closed first: the server did not wait out its bound.
	if d := time.Since(start); d >= 5*time.Second {
		t.Fatalf("took %s", d)
	}
}

// A probe (validate -online) learns the verdict and the services it may
// open; the server starts no session and applies no session limit to it.
func TestProbeStartsNoSession(t *testing.T) {
	srvConn, cliConn, srvPeer, _ := tlsPair(t, "client-a")
	type result struct {
		sess *Session
		err  error
	}
	done := make(chan result, 1)
	go func() {
		sess, err := Establish(context.Background(), srvConn, RoleServer, srvPeer, Config{
			Classes:  []string{"control", "bulk"},
			Services: map[string]string{"bgp": "control"},
			Admit: func(Hello) error {
				return &RefusedError{Code: RefusalLimit, Msg: "a session limit must not apply to a probe"}
			},
		})
		srvConn.Close()
		done <- result{sess, err}
	}()
	h, err := Probe(context.Background(), cliConn, Config{Classes: []string{"control", "bulk"}})
	if err != nil || h.Role != RoleServer || h.Services["bgp"] != "control" {
		t.Fatalf("probe: hello %+v, err %v", h, err)
	}
	r := <-done
	if r.sess != nil || !errors.Is(r.err, ErrProbed) {
		t.Fatalf("server: session %v, err %v; want no session and ErrProbed", r.sess, r.err)
	}

	// A refusal by policy reaches the probe in words.
	srvConn, cliConn, srvPeer, _ = tlsPair(t, "client-a")
	go func() {
		_, _ = Establish(context.Background(), srvConn, RoleServer, srvPeer, Config{
			Refusal: &RefusedError{Code: RefusalRevoked, Msg: `certificate "client-a" is revoked`},
		})
		srvConn.Close()
	}()
	var refusal *RefusedError
	if _, err := Probe(context.Background(), cliConn, Config{}); !errors.As(err, &refusal) || refusal.Code != RefusalRevoked {
		t.Fatalf("probe of a revoked client: %v", err)
	}
}

// Lanes: the client's lane and both sides' CapLanes go through the hello
// to a server that speaks lanes; one that does not reads lane 0 and
// announces nothing, as a server before lanes.
func TestHelloLanes(t *testing.T) {
	pair := func(t *testing.T, srvLanes []string) (server, client *Session) {
		t.Helper()
		base := Config{Classes: []string{"control", "bulk"}, HelloTimeout: 5 * time.Second}
		cli := base
		cli.Class, cli.Lane, cli.LaneClasses, cli.Resumable = "bulk", 3, []string{"bulk"}, true
		srv := base
		srv.LaneClasses, srv.Resumable = srvLanes, true
		return sessionsWith(t, "client-a", srv, cli)
	}
	server, client := pair(t, []string{"bulk"})
	if h := server.PeerHello; h.Lane != 3 || h.Class != "bulk" || !h.Has(CapLanes) || !h.Has(CapResume) {
		t.Errorf("server read %+v", h)
	}
	if h := client.PeerHello; h.Lane != 0 || !h.Has(CapLanes) || !h.Has(CapResume) {
		t.Errorf("client read %+v", h)
	}
	server, client = pair(t, nil)
	if h := server.PeerHello; h.Lane != 0 || !h.Has(CapLanes) {
		t.Errorf("a server without lanes read %+v", h)
	}
	if h := client.PeerHello; h.Has(CapLanes) || !h.Has(CapResume) {
		t.Errorf("a server without lanes announced %v", h.Capabilities)
	}
}

func TestHelloLaneValidated(t *testing.T) {
	cfg := Config{Classes: []string{"control", "bulk"}, LaneClasses: []string{"bulk"}, HelloTimeout: 5 * time.Second}
	for _, tc := range []struct {
		name string
		h    Hello
		want string
	}{
		{"lane 8", Hello{Role: RoleClient, Class: "bulk", Lane: MaxLanes}, "peer's hello names lane 8, not 0 to 7"},
		{"negative lane", Hello{Role: RoleClient, Class: "bulk", Lane: -1}, "peer's hello names lane -1, not 0 to 7"},
		{"huge lane", Hello{Role: RoleClient, Class: "bulk", Lane: 1 << 40}, "not 0 to 7"},
		{"lane on control", Hello{Role: RoleClient, Class: "control", Lane: 1}, `peer's hello names lane 1 of traffic class "control", which has one session (lane 0); only ["bulk"] may have more`},
		{"probe with a lane", Hello{Role: RoleProbe, Lane: 1}, "probe's hello names lane 1; a probe names none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := hostileHello(t, tc.h, cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	for _, h := range []Hello{
		{Role: RoleClient, Class: "bulk", Lane: MaxLanes - 1},
		{Role: RoleClient, Class: "control"},
	} {
		if err := hostileHello(t, h, cfg); err != nil {
			t.Errorf("%+v refused: %v", h, err)
		}
	}
	// A client's hello with a lane is refused by no server: one without
	// lanes reads it as lane 0.
	if err := hostileHello(t, Hello{Role: RoleClient, Class: "control", Lane: 99}, Config{Classes: cfg.Classes, HelloTimeout: 5 * time.Second}); err != nil {
		t.Errorf("a server without lanes refused a lane: %v", err)
	}
}

func TestServerHelloWithLaneRefused(t *testing.T) {
	srvConn, cliConn, _, cliPeer := tlsPair(t, "client-a")
	msg, _ := encodeHello(Hello{Role: RoleServer, Lane: 2})
	go func() {
		srvConn.Write(msg)
		io.Copy(io.Discard, srvConn)
	}()
	_, err := Establish(context.Background(), cliConn, RoleClient, cliPeer, Config{Class: "bulk"})
	if err == nil || !strings.Contains(err.Error(), "server's hello names lane 2; a server names none") {
		t.Fatalf("err = %v", err)
	}
	cliConn.Close()
}

// A resumable open under a token the owner holds already is refused
// before its target is dialled and reported as token_held; another token,
// and a plain open, are served. The allow list is asked first: a service
// the peer may not open is denied whatever the token.
func TestHeldTokenRefusedBeforeDial(t *testing.T) {
	held := Token{7}
	var (
		mu     sync.Mutex
		kinds  []string
		dialed int
	)
	srv := Config{Resumable: true, TokenHeld: func(tok Token) bool { return tok == held },
		OnRefuse: func(kind, _ string, _ error, _ int) { mu.Lock(); kinds = append(kinds, kind); mu.Unlock() }}
	server, client := sessionsWith(t, "client-a", srv, Config{Resumable: true})
	echo := echoTarget(t)
	counted := func(ctx context.Context, req Request) (net.Conn, error) {
		mu.Lock()
		dialed++
		mu.Unlock()
		return dialTo(echo)(ctx, req)
	}
	serve(t, server, map[string]Service{
		"echo":   {Allowed: allowOnly("client-a"), Dial: counted},
		"secret": {Allowed: allowOnly("client-b"), Dial: counted},
	})
	for _, tc := range []struct {
		service string
		token   *Token
		code    Code // CodeOK: served
		kind    string
		dials   int
	}{
		{"echo", &held, CodeBadHeader, RefusedTokenHeld, 0},
		{"secret", &held, CodeDenied, RefusedDenied, 0},
		{"echo", &Token{8}, CodeOK, "", 1},
		{"echo", nil, CodeOK, "", 2},
	} {
		mu.Lock()
		kinds = nil
		mu.Unlock()
		st, err := client.open(context.Background(), tc.service, "", tc.token)
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("x"))
		_, err = st.Read(make([]byte, 1))
		var oe *OpenError
		switch {
		case tc.code == CodeOK && err != nil:
			t.Errorf("%s, token %v: %v, want served", tc.service, tc.token, err)
		case tc.code != CodeOK && (!errors.As(err, &oe) || oe.Code != tc.code):
			t.Errorf("%s, token %v: %v, want %s", tc.service, tc.token, err, tc.code)
		}
		st.Close()
		mu.Lock()
		if got := strings.Join(kinds, ","); got != tc.kind || dialed != tc.dials {
			t.Errorf("%s, token %v: reported %q, %d dials; want %q, %d", tc.service, tc.token, got, dialed, tc.kind, tc.dials)
		}
		mu.Unlock()
	}
}
