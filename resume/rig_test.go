package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tunnelworks/tunnel/forward"
	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/transport/ssl"
	"github.com/tunnelworks/tunnel/transport/ssl/pki"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is a server agent and client agents in one process, over real
// loopback TCP and TLS, with a relay in front of the server that the test
// can cut: every piece but the process boundary is the real one.
type rig struct {
	t        testing.TB
	dir      string
	direct   bool // clients dial the server, not the relay
	errMu    sync.Mutex
	errs     []error
	ca       *pki.Cert
	caFile   string
	srvMat   *ssl.Material
	srvLn    net.Listener
	relay    *relay
	server   *Table
	serverMu sync.Mutex
	target   string // the service "echo" dials this
	sink     string // the service "sink" dials this: it reads all, then closes
	source   string // the service "source" dials this: it sends 4 MiB at once
	drip     string // the service "drip" dials this: 1 KiB every 10 ms, 320 KiB
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	window   time.Duration
	// delivered counts what sessions wrote straight to local sockets
	// (SetDeliver), in every pipe of the rig.
	delivered   directCount
	srvSessions []*mux.Session // every session the server established, under errMu
	// beforeAccept, if set, runs on the server between a resumable
	// stream's answer and its Accept (a handler descheduled there).
	beforeAccept atomic.Pointer[func()]
}

// serverSessions are the server's sessions still up.
func (r *rig) serverSessions() []*mux.Session {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	var up []*mux.Session
	for _, s := range r.srvSessions {
		if !s.Closed() {
			up = append(up, s)
		}
	}
	return up
}

// directCount: the bytes delivered directly, and how many of the calls
// that took them offered a frame larger than 16 KiB (bulk frames, which
// yamux offers only to a stream receiving alone).
type directCount struct {
	bytes, largeFrames atomic.Int64
	// buffered: bytes the pipe had the stream write from its own buffer
	// (WriteBufferedTo).
	buffered atomic.Int64
}

// countedStream and countedCarrier count what their pipe's direct
// delivery takes.
type countedStream struct {
	*Stream
	n *directCount
}

func (c countedStream) SetDeliver(f func(p []byte) int) bool {
	return c.Stream.SetDeliver(countDirect(f, c.n))
}

func (c countedStream) WriteBufferedTo(w io.Writer) (int, error, error) {
	n, rerr, werr := c.Stream.WriteBufferedTo(w)
	c.n.buffered.Add(int64(n))
	return n, rerr, werr
}

type countedCarrier struct {
	*mux.Stream
	n *directCount
}

func (c countedCarrier) SetDeliver(f func(p []byte) int) bool {
	return c.Stream.SetDeliver(countDirect(f, c.n))
}

func countDirect(f func(p []byte) int, n *directCount) func(p []byte) int {
	if f == nil {
		return nil
	}
	return func(p []byte) int {
		k := f(p)
		n.bytes.Add(int64(k))
		if k > 0 && len(p) > 16<<10 {
			n.largeFrames.Add(1)
		}
		return k
	}
}

func newRig(t testing.TB, window time.Duration) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), window: window}
	var err error
	if r.ca, err = pki.NewRootCA(pki.Options{CommonName: "resume test CA"}); err != nil {
		t.Fatal(err)
	}
	r.caFile = filepath.Join(r.dir, "ca.crt")
	if err := os.WriteFile(r.caFile, r.ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := r.ca.IssueServer(pki.Options{CommonName: "tunnel-server", DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	r.srvMat = r.material("server", s)
	r.server = NewTable(Config{})
	r.target = echoServer(t)
	r.sink = sinkServer(t)
	r.source = sourceServer(t, 4<<20, 64<<10, 0)
	r.drip = sourceServer(t, 320<<10, 1<<10, 10*time.Millisecond)
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if r.srvLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	r.relay = startRelay(t, r.srvLn.Addr().String())
	r.wg.Go(r.serve)
	t.Cleanup(func() {
		r.cancel()
		r.srvLn.Close()
		r.relay.close()
		r.wg.Wait()
		r.serverTable().Close()
	})
	return r
}

func (r *rig) material(name string, c *pki.Cert) *ssl.Material {
	crt, key := filepath.Join(r.dir, name+".crt"), filepath.Join(r.dir, name+".key")
	if err := c.WriteFiles(crt, key); err != nil {
		r.t.Fatal(err)
	}
	m, err := ssl.LoadMaterial(crt, key, r.caFile)
	if err != nil {
		r.t.Fatal(err)
	}
	return m
}

func (r *rig) serverTable() *Table {
	r.serverMu.Lock()
	defer r.serverMu.Unlock()
	return r.server
}

// restartServer replaces the server's table with an empty one: the
// server as it is after a restart without its state.
func (r *rig) restartServer() {
	r.serverMu.Lock()
	old := r.server
	r.server = NewTable(Config{})
	r.serverMu.Unlock()
	old.Close()
}

func (r *rig) serve() {
	for {
		raw, err := r.srvLn.Accept()
		if err != nil {
			return
		}
		r.wg.Go(func() { r.serveConn(raw) })
	}
}

func (r *rig) serveConn(raw net.Conn) {
	defer raw.Close()
	conn := ssl.Server(raw, ssl.ServerConfig(r.srvMat)) // as the agents: yamux may write from its receive loop
	if err := ssl.Handshake(r.ctx, conn.Conn, 5*time.Second); err != nil {
		return
	}
	peer, _ := ssl.PeerIdentity(conn.ConnectionState())
	table := r.serverTable()
	sess, err := mux.Establish(r.ctx, conn, mux.RoleServer, peer, mux.Config{
		Resumable: true, Instance: table.Instance(), Resume: table.ServeResume,
		PingAfter: 200 * time.Millisecond, DeadAfter: 2 * time.Second,
	})
	if err != nil {
		return
	}
	defer sess.Close()
	r.errMu.Lock()
	r.srvSessions = append(r.srvSessions, sess)
	r.errMu.Unlock()
	table.SessionUp(sess, "")
	defer table.SessionDown(sess, "")
	lookup := func(name string) (mux.Service, bool) {
		target := map[string]string{"echo": r.target, "sink": r.sink, "source": r.source, "drip": r.drip}[name]
		if target == "" {
			return mux.Service{}, false
		}
		return mux.Service{
			Allowed: func(ssl.Identity) bool { return true },
			Dial: func(ctx context.Context, _ mux.Request) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", target)
			},
		}, true
	}
	_ = sess.Serve(r.ctx, lookup, func(ctx context.Context, _ string, st *mux.Stream, target net.Conn) {
		if _, ok := st.Token(); !ok {
			forward.Pipe(ctx, target, countedCarrier{st, &r.delivered}, nil, 0)
			return
		}
		if f := r.beforeAccept.Load(); f != nil {
			(*f)()
		}
		rs, err := table.Accept(st, target.LocalAddr(), target.RemoteAddr(), Options{Window: r.window})
		if err != nil {
			st.Abort()
			target.Close()
			return
		}
		// Off the accept handler: the session waits for its handlers,
		// and this pipe outlives it.
		r.wg.Go(func() {
			if res := forward.Pipe(ctx, rs.Local(target), countedStream{rs, &r.delivered}, nil, 0); res.Err != nil {
				r.noteErr("server pipe", res.Err)
			}
		})
	})
}

// noteErr remembers a pipe's error, for the failure message of a test.
func (r *rig) noteErr(what string, err error) {
	r.errMu.Lock()
	r.errs = append(r.errs, fmt.Errorf("%s: %w", what, err))
	r.errMu.Unlock()
}

// pipeErrors are the pipes' errors so far.
func (r *rig) pipeErrors() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return errors.Join(r.errs...)
}

// client is a client agent: its table, and a keeper that reconnects
// through the relay whenever its session ends.
type client struct {
	r      *rig
	mat    *ssl.Material
	table  *Table
	mu     sync.Mutex
	sess   *mux.Session
	up     chan struct{} // closed and replaced at each new session
	ctx    context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	paused bool      // the keeper does not redial
	upAt   time.Time // when the current session came up
}

// pauseKeeper stops (or lets go on) the keeper's redials.
func (cl *client) pauseKeeper(on bool) {
	cl.mu.Lock()
	cl.paused = on
	cl.mu.Unlock()
}

func (r *rig) newClient(name string) *client {
	c, err := r.ca.IssueClient(pki.Options{CommonName: name})
	if err != nil {
		r.t.Fatal(err)
	}
	return r.startClient(r.material(name, c), NewTable(Config{}))
}

// startClient starts a client agent with a certificate and a table (a
// successor's, in a handover).
func (r *rig) startClient(mat *ssl.Material, table *Table) *client {
	cl := &client{r: r, mat: mat, table: table, up: make(chan struct{})}
	cl.ctx, cl.stop = context.WithCancel(context.Background())
	cl.wg.Go(cl.keep)
	r.t.Cleanup(cl.shutdown)
	cl.session(r.t)
	return cl
}

// shutdown stops the client agent: its sessions end (its process exits).
func (cl *client) shutdown() {
	cl.stop()
	cl.wg.Wait()
	cl.table.Close()
}

func (cl *client) connect() (*mux.Session, error) {
	addr := cl.r.relay.addr()
	if cl.r.direct {
		addr = cl.r.srvLn.Addr().String()
	}
	return cl.connectTo(addr)
}

// connectTo sets up a session through addr (the server or a relay to it).
func (cl *client) connectTo(addr string) (*mux.Session, error) {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := ssl.Client(raw, ssl.ClientConfig(cl.mat, "localhost"))
	if err := ssl.Handshake(cl.ctx, conn.Conn, 5*time.Second); err != nil {
		raw.Close()
		return nil, err
	}
	peer, _ := ssl.PeerIdentity(conn.ConnectionState())
	sess, err := mux.Establish(cl.ctx, conn, mux.RoleClient, peer, mux.Config{
		Resumable: true, Instance: cl.table.Instance(), Resume: cl.table.ServeResume,
		PingAfter: 200 * time.Millisecond, DeadAfter: 2 * time.Second,
	})
	if err != nil {
		raw.Close()
		return nil, err
	}
	return sess, nil
}

func (cl *client) keep() {
	for cl.ctx.Err() == nil {
		cl.mu.Lock()
		paused := cl.paused
		cl.mu.Unlock()
		var (
			sess *mux.Session
			err  = errors.New("paused")
		)
		if !paused {
			sess, err = cl.connect()
		}
		if err != nil {
			select {
			case <-cl.ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		cl.mu.Lock()
		cl.sess, cl.upAt = sess, time.Now()
		close(cl.up)
		cl.up = make(chan struct{})
		cl.mu.Unlock()
		cl.table.SessionUp(sess, "")
		stop := context.AfterFunc(cl.ctx, func() { sess.Close() })
		_ = sess.Serve(cl.ctx, func(string) (mux.Service, bool) { return mux.Service{}, false }, nil)
		stop()
		cl.table.SessionDown(sess, "")
		sess.Close()
	}
}

// session waits for a live session.
func (cl *client) session(t testing.TB) *mux.Session {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		cl.mu.Lock()
		s, up := cl.sess, cl.up
		cl.mu.Unlock()
		if s != nil {
			select {
			case <-s.Done():
			default:
				return s
			}
		}
		select {
		case <-up:
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("no session within 20s")
	return nil
}

// dialEcho returns the application's end of a local connection carried
// by a resumable stream to the server's echo service.
func (cl *client) dialEcho(t testing.TB) net.Conn { return cl.dial(t, "echo", true) }

// dial returns the application's end of a local connection carried by a
// stream to the server's service, resumable or plain.
func (cl *client) dial(t testing.TB, service string, resumable bool) net.Conn {
	t.Helper()
	app, local := tcpPair(t)
	sess := cl.session(t)
	var (
		stream net.Conn
		err    error
	)
	if resumable {
		var rs *Stream
		rs, err = cl.table.Open(cl.ctx, sess, service, "", local.LocalAddr(), local.RemoteAddr(), Options{Window: cl.r.window})
		if err == nil {
			stream, local = countedStream{rs, &cl.r.delivered}, rs.Local(local)
		}
	} else {
		var st *mux.Stream
		if st, err = sess.Open(cl.ctx, service, ""); err == nil {
			stream = countedCarrier{st, &cl.r.delivered}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	cl.wg.Go(func() {
		if res := forward.Pipe(cl.ctx, local, stream, nil, 0); res.Err != nil && cl.ctx.Err() == nil {
			cl.r.noteErr("client pipe", res.Err)
		}
	})
	return app
}

// tcpPair is two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if b, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func sinkServer(t testing.TB) string {
	return tcpServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// sourceServer sends total bytes to each connection, chunk bytes every
// every, then closes it.
func sourceServer(t testing.TB, total, chunk int, every time.Duration) string {
	return tcpServer(t, func(c net.Conn) {
		buf := make([]byte, chunk)
		for sent := 0; sent < total; sent += chunk {
			if _, err := c.Write(buf); err != nil {
				return
			}
			time.Sleep(every)
		}
	})
}

func echoServer(t testing.TB) string {
	return tcpServer(t, func(c net.Conn) {
		if _, err := io.Copy(c, c); err == nil {
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
		}
	})
}

// tcpServer serves each loopback connection with handle, then closes it.
func tcpServer(t testing.TB, handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// relay forwards TCP connections to a target; cut resets all of them,
// hold stops forwarding (a blackhole) until release.
type relay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	held   chan struct{} // nil: forwarding
	rate   int           // bytes per second each way; 0: as fast as it can
	wg     sync.WaitGroup
}

// slow makes the relay a link of rate bytes per second each way.
func (r *relay) slow(rate int) {
	r.mu.Lock()
	r.rate = rate
	r.mu.Unlock()
}

func startRelay(t testing.TB, target string) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			r.mu.Lock()
			r.conns[c], r.conns[up] = struct{}{}, struct{}{}
			r.mu.Unlock()
			r.wg.Go(func() { r.pump(up, c) })
			r.wg.Go(func() { r.pump(c, up) })
		}
	})
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

func (r *relay) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			held, rate := r.held, r.rate
			r.mu.Unlock()
			if held != nil {
				<-held
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
			if rate > 0 {
				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
			}
		}
		if err != nil {
			r.drop(src)
			r.drop(dst)
			return
		}
	}
}

func (r *relay) drop(c net.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// cut resets every relayed connection.
func (r *relay) cut() {
	r.mu.Lock()
	list := make([]net.Conn, 0, len(r.conns))
	for c := range r.conns {
		list = append(list, c)
	}
	r.mu.Unlock()
	for _, c := range list {
		r.drop(c)
	}
}

// hold stops forwarding bytes (connections stay open) until release.
func (r *relay) hold() {
	r.mu.Lock()
	if r.held == nil {
		r.held = make(chan struct{})
	}
	r.mu.Unlock()
}

func (r *relay) release() {
	r.mu.Lock()
	if r.held != nil {
		close(r.held)
		r.held = nil
	}
	r.mu.Unlock()
}

func (r *relay) close() {
	r.ln.Close()
	r.release()
	r.cut()
	r.wg.Wait()
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
