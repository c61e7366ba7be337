package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/tunnelworks/tunnel/config"
	"github.com/tunnelworks/tunnel/forward"
)

// writeClient rewrites the rig's client config with forward "echo" on
// listen, and returns the file's path.
func (r *rig) writeClient(t *testing.T, listen string) string {
	t.Helper()
	path := filepath.Join(r.dir, "client.hcl")
	if err := os.WriteFile(path, fmt.Appendf(nil, `server = %q
tls {
  cert = "client.crt"
  key  = "client.key"
  ca   = "ca.crt"
  server_name = "localhost"
}
forward "echo" {
  listen = %q
}
`, r.srv.Addr("tunnel").String(), listen), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// echoOnce writes msg on c and reads it back.
func echoOnce(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echoed %q, want %q", got, msg)
	}
	return nil
}

// A reload that moves a forward to a port already taken keeps the forward
// on its old port with its old settings, says which forward, where and
// why, and shows it in status; once the port is free, a reload moves it.
// A connection accepted before either reload carries on throughout.
func TestReloadForwardOntoBusyPortKeepsOld(t *testing.T) {
	r := startRig(t)
	a := r.cli.Addr("echo").String()
	held, err := net.DialTimeout("tcp", a, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := echoOnce(held, "before"); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	b := busy.Addr().String()

	path := r.writeClient(t, b)
	reloadedBefore := strings.Count(r.cliLog.String(), "reloaded:")
	err = r.cli.Reload()
	var inc *IncompleteReloadError
	if !errors.As(err, &inc) {
		t.Fatalf("reload onto a busy port: %v, want an incomplete reload", err)
	}
	// The file and the line of the forward's listen key (writeClient's
	// line 9), as config errors name them.
	for _, want := range []string{path + `:9: forward "echo"`, "listen on " + b, "already in use", "still on " + a} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("reload error lacks %q: %v", want, err)
		}
	}
	// One line says it, at ERROR, with what did change: no "reloaded"
	// line first that reads as a clean reload.
	if n := strings.Count(r.cliLog.String(), "reloaded:"); n != reloadedBefore {
		t.Errorf("an incomplete reload logged as reloaded: %s", r.cliLog)
	}
	if inc.Changes == "" || !strings.Contains(inc.Changes, "echo") {
		t.Errorf("incomplete reload's changes %q, want the forward echo changed", inc.Changes)
	}
	log := &syncBuffer{}
	LogReloadFailure(hclog.New(&hclog.LoggerOptions{Output: log}), err)
	if got := log.String(); !strings.Contains(got, "reload applied except for some listeners") || !strings.Contains(got, "changes=") {
		t.Errorf("logged as %q", got)
	}
	if got := r.cli.Addr("echo"); got == nil || got.String() != a {
		t.Fatalf("forward after a failed move: %v, want %s", got, a)
	}
	if err := roundTrip(a, []byte("still on the old port")); err != nil {
		t.Fatalf("old port after a failed move: %v", err)
	}
	if err := echoOnce(held, "during"); err != nil {
		t.Fatalf("connection accepted before the failed move: %v", err)
	}
	st := r.cli.status()
	if len(st.Forwards) != 1 || st.Forwards[0].Listen != a || !strings.Contains(st.Forwards[0].NotApplied, "listen on "+b) {
		t.Errorf("status forwards after a failed move: %+v", st.Forwards)
	}
	if !strings.Contains(st.LastError, "listen on "+b) {
		t.Errorf("status last error: %q", st.LastError)
	}

	// The port freed, the same file applies.
	busy.Close()
	if err := r.cli.Reload(); err != nil {
		t.Fatalf("reload onto the freed port: %v", err)
	}
	if got := r.cli.Addr("echo"); got == nil || got.String() != b {
		t.Fatalf("forward after the move: %v, want %s", got, b)
	}
	if err := roundTrip(b, []byte("on the new port")); err != nil {
		t.Fatalf("new port: %v", err)
	}
	expectClosed(t, a)
	if err := echoOnce(held, "after"); err != nil {
		t.Fatalf("connection accepted before the move: %v", err)
	}
	if st := r.cli.status(); st.Forwards[0].NotApplied != "" {
		t.Errorf("status still says the forward is not as in the file: %+v", st.Forwards[0])
	}
}

// namedSet is a forwardSet whose connections are answered with the name of
// their forward's service, for tests that need no tunnel.
func namedSet(t *testing.T) *forwardSet {
	t.Helper()
	var conns sync.WaitGroup
	fs := newForwardSet(hclog.NewNullLogger(), nil, &conns, forward.Listen, func(_ context.Context, f config.Forward, local net.Conn) {
		defer local.Close()
		io.WriteString(local, f.Service)
	})
	ctx, cancel := context.WithCancel(context.Background())
	if err := fs.start(ctx, ctx, nil, origin{file: "test.hcl"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); fs.stop(); conns.Wait() })
	return fs
}

// serviceAt is the service that answers at addr.
func serviceAt(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read %s: %v", addr, err)
	}
	return string(b)
}

// freePort is a loopback address nothing listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func fwd(name, listen, service string) config.Forward {
	return config.Forward{Name: name, Listen: listen, Service: service, MaxConns: 8, DSCP: -1}
}

// A new forward whose port is taken is named with its address; the others
// start regardless, and a later reload starts it once the port is free.
func TestForwardSetNewOnBusyPort(t *testing.T) {
	fs := namedSet(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	b, ok := busy.Addr().String(), freePort(t)
	want := []config.Forward{fwd("x", b, "sx"), fwd("y", ok, "sy")}
	err = fs.apply(want, origin{file: "test.hcl", lines: map[string]int{"x": 3, "y": 7}})
	if err == nil || !strings.Contains(err.Error(), `test.hcl:3: forward "x": listen on `+b+": address already in use") || strings.Contains(err.Error(), "still on") {
		t.Fatalf("new forward on a busy port: %v", err)
	}
	if fs.addr("x") != nil || fs.problem("x") == "" || fs.problem("y") != "" {
		t.Errorf("x at %v (problem %q), y problem %q", fs.addr("x"), fs.problem("x"), fs.problem("y"))
	}
	if got := serviceAt(t, ok); got != "sy" {
		t.Errorf("y answers as %q", got)
	}
	busy.Close()
	if err := fs.apply(want, origin{file: "test.hcl"}); err != nil {
		t.Fatal(err)
	}
	if got := serviceAt(t, b); got != "sx" || fs.problem("x") != "" {
		t.Errorf("x answers as %q (problem %q)", got, fs.problem("x"))
	}
}

// A forward whose other settings change with its listen address keeps
// all of its old ones when the new address is taken, and takes all of the
// new ones when it moves.
func TestForwardSetChangedWithListenKeepsOldSettings(t *testing.T) {
	fs := namedSet(t)
	if err := fs.apply([]config.Forward{fwd("x", "127.0.0.1:0", "old")}, origin{file: "test.hcl"}); err != nil {
		t.Fatal(err)
	}
	a := fs.addr("x").String()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	b := busy.Addr().String()
	if err := fs.apply([]config.Forward{fwd("x", b, "new")}, origin{file: "test.hcl"}); err == nil || !strings.Contains(err.Error(), "still on "+a) {
		t.Fatalf("move onto a busy port: %v", err)
	}
	if got := serviceAt(t, a); got != "old" {
		t.Errorf("after a failed move x answers as %q, want its old service", got)
	}
	busy.Close()
	if err := fs.apply([]config.Forward{fwd("x", b, "new")}, origin{file: "test.hcl"}); err != nil {
		t.Fatal(err)
	}
	if got := serviceAt(t, b); got != "new" {
		t.Errorf("after the move x answers as %q", got)
	}
	expectClosed(t, a)
}

// Forwards may take each other's addresses, in a chain or a swap, and a
// forward may change its settings on the address it has.
func TestForwardSetSwapAndChainAndInPlace(t *testing.T) {
	fs := namedSet(t)
	p, q, r := freePort(t), freePort(t), freePort(t)
	if err := fs.apply([]config.Forward{fwd("x", p, "s1"), fwd("y", q, "s2")}, origin{file: "test.hcl"}); err != nil {
		t.Fatal(err)
	}
	// Swap.
	if err := fs.apply([]config.Forward{fwd("x", q, "s1"), fwd("y", p, "s2")}, origin{file: "test.hcl"}); err != nil {
		t.Fatalf("swap: %v", err)
	}
	if serviceAt(t, q) != "s1" || serviceAt(t, p) != "s2" {
		t.Error("swap not applied")
	}
	// Chain: y moves off p, and x takes it (x listed first).
	if err := fs.apply([]config.Forward{fwd("x", p, "s1"), fwd("y", r, "s2")}, origin{file: "test.hcl"}); err != nil {
		t.Fatalf("chain: %v", err)
	}
	if serviceAt(t, p) != "s1" || serviceAt(t, r) != "s2" {
		t.Error("chain not applied")
	}
	expectClosed(t, q)
	// Same address, another service.
	if err := fs.apply([]config.Forward{fwd("x", p, "s3"), fwd("y", r, "s2")}, origin{file: "test.hcl"}); err != nil {
		t.Fatalf("in place: %v", err)
	}
	if got := serviceAt(t, p); got != "s3" {
		t.Errorf("in place: x answers as %q", got)
	}
}
