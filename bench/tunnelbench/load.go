package tunnelbench

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The workloads. Every byte is checked: bulk data by length and CRC-32C
// (hardware-assisted, so the check costs far less than the transfer),
// echoes by comparison.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// payload is what bulk senders send, cycled: 1 MiB of seeded random bytes.
var payload = func() []byte {
	b := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{'t', 'u', 'n', 'n', 'e', 'l'}).Read(b)
	return b
}()

const chunk = 32 * 1024

// dialer opens one connection of a path under test.
type dialer func(ctx context.Context) (net.Conn, error)

func tcpDialer(addr string) dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// targets are the sink and the echo server, in this process.
type targets struct {
	sink, echo string
	source     string // sends payload, cycled, until the reader closes
	lns        []net.Listener
	wg         sync.WaitGroup
	mu         sync.Mutex
	conns      map[net.Conn]struct{}
}

func startTargets() (*targets, error) {
	t := &targets{conns: map[net.Conn]struct{}{}}
	var err error
	if t.sink, err = t.serve(sinkConn); err != nil {
		return nil, err
	}
	if t.echo, err = t.serve(echoConn); err != nil {
		t.close()
		return nil, err
	}
	if t.source, err = t.serve(sourceConn); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// serve accepts on loopback and runs handle for each connection.
func (t *targets) serve(handle func(net.Conn)) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	t.lns = append(t.lns, ln)
	t.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(5 * time.Millisecond) // EMFILE and friends: bounded retry
				continue
			}
			t.mu.Lock()
			t.conns[c] = struct{}{}
			t.mu.Unlock()
			t.wg.Go(func() {
				handle(c)
				c.Close()
				t.mu.Lock()
				delete(t.conns, c)
				t.mu.Unlock()
			})
		}
	})
	return ln.Addr().String(), nil
}

func (t *targets) close() {
	for _, ln := range t.lns {
		ln.Close()
	}
	t.mu.Lock()
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

// sinkConn reads to EOF, then answers with the byte count (8 bytes) and
// the CRC-32C (4 bytes) of everything it read.
func sinkConn(c net.Conn) {
	buf := make([]byte, chunk)
	var n int64
	var crc uint32
	for {
		k, err := c.Read(buf)
		n += int64(k)
		crc = crc32.Update(crc, castagnoli, buf[:k])
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
	}
	var rep [12]byte
	binary.BigEndian.PutUint64(rep[:], uint64(n))
	binary.BigEndian.PutUint32(rep[8:], crc)
	_, _ = c.Write(rep[:])
}

// sourceConn sends payload, cycled, until the connection fails (the
// reader closed it).
func sourceConn(c net.Conn) {
	for {
		if _, err := c.Write(payload); err != nil {
			return
		}
	}
}

// download reads what the source sends through dial until ctx ends,
// checking every byte against payload, cycled; the rate is over the time
// from the dial to the last byte read.
func download(ctx context.Context, dial dialer) bulkResult {
	c, err := dial(context.Background())
	if err != nil {
		return bulkResult{err: fmt.Errorf("dial: %w", err)}
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	start := time.Now()
	buf := make([]byte, chunk)
	var n int64
	for {
		k, err := c.Read(buf)
		for i := 0; i < k; {
			off := int((n + int64(i)) % int64(len(payload)))
			m := min(k-i, len(payload)-off)
			if !bytes.Equal(buf[i:i+m], payload[off:off+m]) {
				return bulkResult{bytes: n, err: fmt.Errorf("downloaded bytes differ from the source's after %d bytes", n+int64(i))}
			}
			i += m
		}
		n += int64(k)
		if err != nil {
			if ctx.Err() != nil {
				return bulkResult{bytes: n, elapsed: time.Since(start)}
			}
			return bulkResult{bytes: n, err: fmt.Errorf("read after %d bytes: %w", n, err)}
		}
	}
}

// echoConn sends back what it reads; EOF is passed on as a half-close.
func echoConn(c net.Conn) {
	buf := make([]byte, chunk)
	for {
		k, err := c.Read(buf)
		if k > 0 {
			if _, werr := c.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			if err == io.EOF {
				closeWrite(c)
			}
			return
		}
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// bulkResult is one bulk stream's outcome.
type bulkResult struct {
	bytes   int64
	elapsed time.Duration // first write to the sink's verified answer
	err     error
}

// bulk sends payload through dial until ctx ends, half-closes, and checks
// the sink's count and CRC. The elapsed time includes the drain, so the
// rate is end to end.
func bulk(ctx context.Context, dial dialer, drainLimit time.Duration) bulkResult {
	c, err := dial(context.Background())
	if err != nil {
		return bulkResult{err: fmt.Errorf("dial: %w", err)}
	}
	defer c.Close()
	// A plain TCP write blocked on a slow path ends when ctx does; a TLS
	// connection cannot be interrupted that way (a write timeout breaks
	// it for good), so it stops between writes.
	stop := func() bool { return false }
	if _, ok := c.(*net.TCPConn); ok {
		stop = context.AfterFunc(ctx, func() { _ = c.SetWriteDeadline(time.Unix(1, 0)) })
	}
	defer stop()
	start := time.Now()
	var (
		n   int64
		crc uint32
		off int
	)
	for ctx.Err() == nil {
		k, err := c.Write(payload[off : off+chunk])
		crc = crc32.Update(crc, castagnoli, payload[off:off+k])
		n += int64(k)
		off = (off + k) % len(payload)
		if off+chunk > len(payload) {
			off = 0 // after a short write: next chunk from the block's start
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return bulkResult{bytes: n, err: fmt.Errorf("write: %w", err)}
		}
	}
	stop()
	_ = c.SetWriteDeadline(time.Time{})
	closeWrite(c)
	_ = c.SetReadDeadline(time.Now().Add(drainLimit))
	var rep [12]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return bulkResult{bytes: n, err: fmt.Errorf("read the sink's answer after %d bytes: %w", n, err)}
	}
	el := time.Since(start)
	if got := int64(binary.BigEndian.Uint64(rep[:])); got != n {
		return bulkResult{bytes: n, err: fmt.Errorf("sink got %d bytes, sent %d", got, n)}
	}
	if got := binary.BigEndian.Uint32(rep[8:]); got != crc {
		return bulkResult{bytes: n, err: fmt.Errorf("sink CRC %08x, sent %08x: data corrupted", got, crc)}
	}
	return bulkResult{bytes: n, elapsed: el}
}

// throughput runs streams bulk streams together for d and returns Gbit/s
// over the slowest stream's elapsed time.
func throughput(dial dialer, streams int, d time.Duration) (gbps float64, bytes int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	res := make([]bulkResult, streams)
	var wg sync.WaitGroup
	for i := range streams {
		wg.Go(func() { res[i] = bulk(ctx, dial, 30*time.Second) })
	}
	wg.Wait()
	for _, r := range res {
		if r.err != nil {
			return 0, 0, r.err
		}
	}
	gbps, bytes = bulkRate(res)
	return gbps, bytes, nil
}

// bulkRate is the streams' bytes together over the slowest one's time.
func bulkRate(res []bulkResult) (gbps float64, bytes int64) {
	var longest time.Duration
	for _, r := range res {
		bytes += r.bytes
		longest = max(longest, r.elapsed)
	}
	if longest <= 0 {
		return 0, bytes
	}
	return float64(bytes) * 8 / longest.Seconds() / 1e9, bytes
}

// pingPong does up to n round trips of size bytes on one connection, until
// deadline, each message different, and returns the round trip times.
func pingPong(dial dialer, n, size int, deadline time.Time) ([]time.Duration, error) {
	c, err := dial(context.Background())
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline.Add(30 * time.Second))
	msg := make([]byte, size)
	got := make([]byte, size)
	rtts := make([]time.Duration, 0, min(n, 1<<16))
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		binary.BigEndian.PutUint64(msg, uint64(i))
		msg[size-1] = byte(i)
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return rtts, fmt.Errorf("round trip %d: write: %w", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return rtts, fmt.Errorf("round trip %d: read: %w", i, err)
		}
		rtts = append(rtts, time.Since(t0))
		if !bytes.Equal(got, msg) {
			return rtts, fmt.Errorf("round trip %d: echo differs", i)
		}
	}
	closeWrite(c)
	return rtts, nil
}

// underLoad measures 64-byte ping-pong round trips for d while load bulk
// streams push through bulkDial (started warm earlier); the bulk data is
// verified too. bulkGbps is the bulk streams' rate over the whole of it.
func underLoad(bulkDial, pingDial dialer, load int, d, warm time.Duration) (rtts []time.Duration, bulkGbps float64, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make([]bulkResult, load)
	var wg sync.WaitGroup
	for i := range load {
		wg.Go(func() { res[i] = bulk(ctx, bulkDial, 60*time.Second) })
	}
	time.Sleep(warm)
	rtts, err = pingPong(pingDial, 10_000_000, 64, time.Now().Add(d))
	cancel()
	wg.Wait()
	for _, r := range res {
		if r.err != nil && err == nil {
			err = fmt.Errorf("bulk stream: %w", r.err)
		}
	}
	bulkGbps, _ = bulkRate(res)
	return rtts, bulkGbps, err
}

// connRate opens, echoes one byte on, and closes connections with workers
// in parallel for d; it returns connections per second.
func connRate(dial dialer, workers int, d time.Duration) (float64, error) {
	const maxConns = 200_000 // bound whatever the speed
	var (
		count atomic.Int64
		first atomic.Pointer[error]
		wg    sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(d)
	for w := range workers {
		wg.Go(func() {
			b := []byte{byte(w)}
			got := make([]byte, 1)
			for time.Now().Before(end) && count.Load() < maxConns && first.Load() == nil {
				err := func() error {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					c, err := dial(ctx)
					if err != nil {
						return err
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := c.Write(b); err != nil {
						return err
					}
					if _, err := io.ReadFull(c, got); err != nil {
						return err
					}
					if got[0] != b[0] {
						return errors.New("echo differs")
					}
					return nil
				}()
				if err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
				count.Add(1)
			}
		})
	}
	wg.Wait()
	if e := first.Load(); e != nil {
		return 0, fmt.Errorf("after %d connections: %w", count.Load(), *e)
	}
	return float64(count.Load()) / time.Since(start).Seconds(), nil
}

// openIdle opens n connections through dial, each with one byte echoed
// (so the stream exists end to end), and leaves them open.
func openIdle(dial dialer, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	for i := range n {
		c, err := dial(context.Background())
		if err != nil {
			return conns, fmt.Errorf("idle connection %d: %w", i, err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		got := []byte{0}
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			return conns, fmt.Errorf("idle connection %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil || got[0] != byte(i) {
			return conns, fmt.Errorf("idle connection %d: echo: %v", i, err)
		}
		_ = c.SetDeadline(time.Time{})
	}
	return conns, nil
}

// tlsPath is one Go TLS connection over loopback between two goroutines of
// this process, with the agents' certificates: the ceiling of any
// tunnel that carries everything over one TLS connection.
type tlsPath struct {
	ln     net.Listener
	client *tls.Config
	suite  atomic.Uint32
	wg     sync.WaitGroup
}

func startTLSPath(server, client *tls.Config) (*tlsPath, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &tlsPath{ln: ln, client: client}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() {
				tc := tls.Server(c, server)
				defer tc.Close()
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					return
				}
				_ = tc.SetDeadline(time.Time{})
				p.suite.Store(uint32(tc.ConnectionState().CipherSuite))
				sinkConn(tc)
			})
		}
	})
	return p, nil
}

func (p *tlsPath) dial(ctx context.Context) (net.Conn, error) {
	d := tls.Dialer{Config: p.client}
	return d.DialContext(ctx, "tcp", p.ln.Addr().String())
}

func (p *tlsPath) close() { p.ln.Close(); p.wg.Wait() }

// percentile is the nearest-rank q-quantile of d (sorted in place).
func percentile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(q*float64(len(d))+0.999999) - 1
	return d[min(max(i, 0), len(d)-1)]
}
