package e2e

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// A raw speaker of the tunnel protocol, for the hostile-peer tests: it holds
// a valid client certificate, sends a hello of its choosing and then writes
// yamux frames by hand, so it can do what a real yamux library never would
// (thousands of opens without waiting, streams without a header, lies in a
// frame's length). It reads whatever the server sends, answers pings and
// acknowledges the server's opens, and counts the answers to its streams.

// yamux frame header fields (hashicorp/yamux spec.md).
const (
	yamuxVersion = 0

	frameData   = 0
	frameWindow = 1
	framePing   = 2
	frameGoAway = 3

	flagSYN = 1
	flagACK = 2
	flagFIN = 4
	flagRST = 8

	frameHeaderLen = 12
)

// appendFrame appends one yamux frame: a header whose length field is
// length (which a hostile peer may set to anything) followed by body.
func appendFrame(b []byte, version, typ byte, flags uint16, id, length uint32, body []byte) []byte {
	b = append(b, version, typ)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, body...)
}

// dataFrame is an honest data frame: the length is the body's.
func dataFrame(b []byte, flags uint16, id uint32, body []byte) []byte {
	return appendFrame(b, yamuxVersion, frameData, flags, id, uint32(len(body)), body)
}

// windowFrame is a window update (an open when flags has SYN).
func windowFrame(b []byte, flags uint16, id, delta uint32) []byte {
	return appendFrame(b, yamuxVersion, frameWindow, flags, id, delta, nil)
}

// openHeader is a stream-open header for service, with an empty source.
func openHeader(service string) []byte {
	b := []byte{1, byte(len(service))}
	b = append(b, service...)
	return append(b, 0)
}

// resumableHeader is a resumable stream-open header (kind 3) for service
// under token, with an empty source.
func resumableHeader(service string, token [16]byte) []byte {
	b := openHeader(service)
	b[0] = 3
	return append(b, token[:]...)
}

// resumeHeader is a resume header (kind 4): move the stream named token
// here, having delivered delivered bytes of it.
func resumeHeader(token [16]byte, delivered uint64) []byte {
	b := append([]byte{4}, token[:]...)
	return binary.BigEndian.AppendUint64(b, delivered)
}

// controlHeader is the header of a control stream.
var controlHeader = []byte{2, 0}

// helloFrame is a tunnel hello with the given JSON fields.
func helloFrame(fields map[string]any) ([]byte, error) {
	body, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("encode hello: %w", err)
	}
	if len(body) > 4096 {
		return nil, fmt.Errorf("hello body of %d bytes is over the protocol's 4096", len(body))
	}
	b := append([]byte("TUNL"), 1)
	b = binary.BigEndian.AppendUint16(b, uint16(len(body)))
	return append(b, body...), nil
}

// rawPeer is one hostile connection after the hello.
type rawPeer struct {
	raw  net.Conn
	conn *tls.Conn

	wmu  sync.Mutex
	next uint32 // the next odd stream ID to open

	mu        sync.Mutex
	replied   map[uint32]bool // our streams that got their first data
	codes     map[byte]int    // first byte of each of our streams' first data: the reply code
	rsts      int             // RSTs on our streams
	fins      int             // FINs on our streams
	serverSYN int             // streams the server opened to us
	goAway    bool
	frames    int   // frames read
	readErr   error // why the reader stopped
	onAnswer  func(id uint32)
	waiters   map[uint32]chan int // streams someone waits on: the reply code, or -1 for a reset
	pending   []byte              // the reader's answers held while a write was in progress

	done chan struct{} // closed when the reader has stopped
}

// hostileDial connects to addr with cert, completes TLS and sends a hello
// with class. It returns an error (and no peer) if the server refused us
// before its own hello arrived. The peer is closed on cleanup.
func hostileDial(t interface {
	Cleanup(func())
}, addr string, conf *tls.Config, class string, caps ...string) (*rawPeer, error) {
	fields := map[string]any{"role": "client", "agent": "hostile"}
	if class != "" {
		fields["class"] = class
	}
	if len(caps) > 0 {
		fields["caps"] = caps
	}
	return hostileDialHello(t, addr, conf, fields)
}

// hostileDialHello is hostileDial with the hello's fields as given.
func hostileDialHello(t interface {
	Cleanup(func())
}, addr string, conf *tls.Config, fields map[string]any) (*rawPeer, error) {
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	// Bound the handshake and the hello exchange.
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, conf)
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	hello, err := helloFrame(fields)
	if err != nil {
		raw.Close()
		return nil, err
	}
	if _, err := c.Write(hello); err != nil {
		raw.Close()
		return nil, fmt.Errorf("send hello: %w", err)
	}
	var head [7]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		raw.Close()
		return nil, fmt.Errorf("read server hello: %w", err)
	}
	if string(head[:4]) != "TUNL" {
		raw.Close()
		return nil, fmt.Errorf("server hello starts with %q", head[:4])
	}
	if _, err := io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint16(head[5:]))); err != nil {
		raw.Close()
		return nil, fmt.Errorf("read server hello body: %w", err)
	}
	_ = raw.SetDeadline(time.Time{})
	p := &rawPeer{raw: raw, conn: c, next: 1, replied: map[uint32]bool{}, codes: map[byte]int{}, waiters: map[uint32]chan int{}, done: make(chan struct{})}
	go p.read()
	t.Cleanup(p.close)
	return p, nil
}

// read drains the server's frames until the connection ends.
func (p *rawPeer) read() {
	defer close(p.done)
	var hdr [frameHeaderLen]byte
	body := make([]byte, 64*1024)
	for {
		if _, err := io.ReadFull(p.conn, hdr[:]); err != nil {
			p.stop(err)
			return
		}
		typ, flags := hdr[1], binary.BigEndian.Uint16(hdr[2:])
		id, length := binary.BigEndian.Uint32(hdr[4:]), binary.BigEndian.Uint32(hdr[8:])
		var data []byte
		if typ == frameData && length > 0 {
			if length > uint32(len(body)) {
				// Never more than a window's worth from an honest server;
				// skip what does not fit rather than grow without bound.
				if _, err := io.CopyN(io.Discard, p.conn, int64(length)); err != nil {
					p.stop(err)
					return
				}
			} else {
				data = body[:length]
				if _, err := io.ReadFull(p.conn, data); err != nil {
					p.stop(err)
					return
				}
			}
		}
		var reply []byte
		var answered bool
		p.mu.Lock()
		p.frames++
		switch {
		case typ == framePing && flags&flagSYN != 0:
			reply = appendFrame(nil, yamuxVersion, framePing, flagACK, 0, length, nil)
		case typ == frameGoAway:
			p.goAway = true
		case id%2 == 0 && id != 0 && flags&flagSYN != 0:
			// The server's own open (its control stream): acknowledge it,
			// or yamux closes the session after StreamOpenTimeout.
			p.serverSYN++
			reply = windowFrame(nil, flagACK, id, 0)
		case id%2 == 1:
			if len(data) > 0 && !p.replied[id] {
				p.replied[id] = true
				p.codes[data[0]]++
				answered = true
			}
			if flags&flagRST != 0 {
				p.rsts++
				if !p.replied[id] {
					p.replied[id] = true
					answered = true
				}
			}
			if flags&flagFIN != 0 {
				p.fins++
			}
		}
		cb := p.onAnswer
		if answered {
			if w := p.waiters[id]; w != nil {
				code := -1
				if len(data) > 0 {
					code = int(data[0])
				}
				w <- code // buffered: one answer per stream
				delete(p.waiters, id)
			}
		}
		p.mu.Unlock()
		if answered && cb != nil {
			cb(id)
		}
		if reply != nil {
			p.reply(reply)
		}
	}
}

func (p *rawPeer) stop(err error) {
	p.mu.Lock()
	p.readErr = err
	p.mu.Unlock()
}

// write sends b whole (after any reply the reader queued), bounded so a
// server that stopped reading cannot hang the test.
func (p *rawPeer) write(b []byte) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.writeLocked(b)
}

func (p *rawPeer) writeLocked(b []byte) error {
	p.mu.Lock()
	if len(p.pending) > 0 {
		b = append(p.pending, b...)
		p.pending = nil
	}
	p.mu.Unlock()
	_ = p.raw.SetWriteDeadline(time.Now().Add(20 * time.Second))
	_, err := p.conn.Write(b)
	return err
}

// reply sends an answer from the reader without ever waiting for a write
// in progress (which may itself wait for the server to read, while the
// server waits for us to read): if one is, the answer goes out with the
// next write.
func (p *rawPeer) reply(b []byte) {
	if !p.wmu.TryLock() {
		p.mu.Lock()
		p.pending = append(p.pending, b...)
		p.mu.Unlock()
		return
	}
	defer p.wmu.Unlock()
	// A failed write ends the session; the read sees it next.
	_ = p.writeLocked(b)
}

// openIDs reserves n stream IDs.
func (p *rawPeer) openIDs(n int) []uint32 {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = p.next
		p.next += 2
	}
	return ids
}

// openMany opens n streams, each with a data frame carrying header (SYN,
// plus FIN if fin) or, with a nil header, a bare SYN window update that
// never sends a header. Frames go out in batches of batch.
func (p *rawPeer) openMany(n int, header []byte, fin bool, batch int) error {
	flags := uint16(flagSYN)
	if fin {
		flags |= flagFIN
	}
	var buf []byte
	for sent := 0; sent < n; {
		k := min(batch, n-sent)
		buf = buf[:0]
		for _, id := range p.openIDs(k) {
			if header == nil {
				buf = windowFrame(buf, flags, id, 0)
			} else {
				buf = dataFrame(buf, flags, id, header)
			}
		}
		if err := p.write(buf); err != nil {
			return fmt.Errorf("open streams %d..%d of %d: %w", sent, sent+k, n, err)
		}
		sent += k
	}
	return nil
}

// counts returns what the server has answered so far.
func (p *rawPeer) counts() (codes map[byte]int, rsts, fins int, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	codes = make(map[byte]int, len(p.codes))
	for k, v := range p.codes {
		codes[k] = v
	}
	return codes, p.rsts, p.fins, p.readErr
}

// closed reports whether the server ended the connection.
func (p *rawPeer) closed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// close closes the TCP connection (no TLS close_notify, no GoAway: the
// peer just vanishes) and waits for the reader.
func (p *rawPeer) close() {
	p.raw.Close()
	select {
	case <-p.done:
	case <-time.After(waitLimit):
	}
}

// probe opens one stream to service and waits up to limit for the
// server's answer: the reply code, or -1 if the stream was reset. An error
// means no answer: the connection ended or the limit passed.
func (p *rawPeer) probe(service string, limit time.Duration) (int, error) {
	return p.probeHeader(openHeader(service), limit)
}

// probeHeader is probe with the stream's header given; the stream stays
// open (no FIN).
func (p *rawPeer) probeHeader(header []byte, limit time.Duration) (int, error) {
	_, code, err := p.probeStream(header, limit)
	return code, err
}

// probeStream is probeHeader that also returns the stream's ID.
func (p *rawPeer) probeStream(header []byte, limit time.Duration) (id uint32, code int, err error) {
	id = p.openIDs(1)[0]
	w := make(chan int, 1)
	p.mu.Lock()
	p.waiters[id] = w
	p.mu.Unlock()
	if err := p.write(dataFrame(nil, flagSYN, id, header)); err != nil {
		return id, 0, fmt.Errorf("open a stream: %w", err)
	}
	select {
	case code := <-w:
		return id, code, nil
	case <-p.done:
		p.mu.Lock()
		err := p.readErr
		p.mu.Unlock()
		return id, 0, fmt.Errorf("connection ended before the answer: %w", err)
	case <-time.After(limit):
		return id, 0, fmt.Errorf("no answer to a stream open within %s", limit)
	}
}

// reset resets one of our streams (RST).
func (p *rawPeer) reset(id uint32) error {
	return p.write(windowFrame(nil, flagRST, id, 0))
}

// errAnswer is the text of a read error for reports: EOF and resets are
// the server closing on us.
func errAnswer(err error) string {
	switch {
	case err == nil:
		return "open"
	case errors.Is(err, io.EOF):
		return "closed (EOF)"
	case isReset(err):
		return "reset"
	}
	return err.Error()
}
