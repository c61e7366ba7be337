package yamux

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Session is used to wrap a reliable ordered connection and to
// multiplex it into multiple streams.
type Session struct {
	// remoteGoAway indicates the remote side does
	// not want futher connections. Must be first for alignment.
	remoteGoAway int32

	// localGoAway indicates that we should stop
	// accepting futher connections. Must be first for alignment.
	localGoAway int32

	// nextStreamID is the next stream we should
	// send. This depends if we are a client/server.
	nextStreamID uint32

	// config holds our configuration
	config *Config

	// logger is used for our logs
	logger Logger

	// conn is the underlying connection
	conn io.ReadWriteCloser

	// bufRead is a buffered reader
	bufRead *bufio.Reader

	// pings is used to track inflight pings
	pings    map[uint32]chan struct{}
	pingID   uint32
	pingLock sync.Mutex

	// streams maps a stream id to a stream, and inflight has an entry
	// for any outgoing stream that has not yet been established. Both are
	// protected by streamLock.
	streams    map[uint32]*Stream
	inflight   map[uint32]struct{}
	streamLock sync.Mutex

	// synCh acts like a semaphore. It is sized to the AcceptBacklog which
	// is assumed to be symmetric between the client and server. This allows
	// the client to avoid exceeding the backlog and instead blocks the open.
	synCh chan struct{}

	// acceptCh is used to pass ready streams to the client
	acceptCh chan *Stream

	// sendCh is used to mark a stream as ready to send,
	// or to send a header out directly.
	sendCh chan *sendReady

	// writes decides who writes the next frame to conn: sendLoop, or a
	// stream writing its own data frame (writeData); one at a time.
	// Patched for tunnelworks, see PATCHED.md.
	writes writeQueue
	// recvFlow is recvLoop's place in writes for the window updates it
	// writes itself, recvHdr their header (patch 21); only recvLoop uses
	// them.
	recvFlow writeFlow
	recvHdr  [headerSize]byte

	// recvDoneCh is closed when recv() exits to avoid a race
	// between stream registration and stream shutdown
	recvDoneCh chan struct{}
	sendDoneCh chan struct{}

	// refusedOverLimit and refusedBacklog count streams the peer opened
	// that were reset because of MaxStreams or a full accept backlog.
	// Patched for tunnelworks, see PATCHED.md.
	refusedOverLimit atomic.Uint64
	refusedBacklog   atomic.Uint64

	// strayFrames counts frames received for streams the session does not
	// hold. Patched for tunnelworks, see PATCHED.md.
	strayFrames atomic.Uint64

	// directBuf holds the body of a frame delivered directly (see
	// Stream.SetDeliver); used by recvLoop only. Patched for tunnelworks,
	// see PATCHED.md.
	directBuf []byte
	// recvChunks are the spare chunks of the streams' receive buffers
	// (patch_recvbuf.go). Patched for tunnelworks, see PATCHED.md.
	recvChunks *chunkPools
	// dataRunID and dataRun: the stream of the last large data frames
	// received and how many came in a row (see noteData); recvLoop only.
	// soleReceiver is dataRunID once the run is long enough, else 0, for
	// other goroutines (Stream.DeliversLarge). bulkDirect: no stream
	// exchanges messages now, so every stream's large frames may be
	// delivered directly (patch 16; set by updateShare).
	dataRunID    uint32
	dataRun      int
	soleReceiver atomic.Uint32
	bulkDirect   atomic.Bool
	// recentBulk are the streams of the last large data frames received,
	// bulkCount how many different ones, sinceSmall how many large frames
	// came since another stream's small one, lastSmall that stream, and
	// shareWindow by how many streams the window is shared now
	// (patch_window.go). recvLoop only, but shareWindow is read by any
	// stream's reader.
	recentBulk  [bulkHistory]uint32
	recentNext  int
	bulkCount   uint32
	sinceSmall  int
	lastSmall   uint32
	shareWindow atomic.Uint32
	// What the bulk streams may have in flight in all while they share
	// (0: MaxStreamWindowSize), from their receive rate (rateStart,
	// rateBytes: recvLoop only) and the least round-trip time the owner
	// has told us of (pathRTT, ns). Patched for tunnelworks
	// (patch_window.go, patch 13).
	sharedBudget atomic.Uint32
	aloneBeside  atomic.Bool // one bulk stream, another waiting (patch 13)
	// loneCap: what a bulk stream nobody waits behind may have in flight
	// (0: MaxStreamWindowSize), from the same rate and RTT (patch 13).
	loneCap atomic.Uint32
	// loneLent is how much of the lone window's extra
	// (LoneStreamWindow - MaxStreamWindowSize) streams hold now (patch
	// 22), and bulkAlone whether one stream alone received the large
	// frames of the last loneSettle and bulkHistory, the only receiver
	// the extra is lent to (patch 23).
	loneLent  atomic.Int64
	bulkAlone atomic.Bool
	pathRTT   atomic.Int64
	pathFloor atomic.Int64 // ns; patch 18
	rateStart time.Time
	rateBytes uint64
	lastLarge time.Time     // when the last large frame came (recvLoop only)
	frameGap  time.Duration // the mean gap between them, last measured
	// aloneID is the stream that received every large frame since
	// aloneSince (recvLoop only; patch 23).
	aloneID    uint32
	aloneSince time.Time

	// shutdown is used to safely close a session
	shutdown        bool
	shutdownErr     error
	shutdownCh      chan struct{}
	shutdownLock    sync.Mutex
	shutdownErrLock sync.Mutex
}

// sendReady is used to either mark a stream as ready
// or to directly send a header
type sendReady struct {
	Hdr  []byte
	mu   sync.Mutex // Protects Body from unsafe reads.
	Body []byte
	Err  chan error
}

// newSession is used to construct a new session
func newSession(config *Config, conn io.ReadWriteCloser, client bool) *Session {
	logger := config.Logger
	if logger == nil {
		logger = log.New(config.LogOutput, "", log.LstdFlags)
	}

	s := &Session{
		config:     config,
		logger:     logger,
		conn:       conn,
		bufRead:    bufio.NewReader(conn),
		pings:      make(map[uint32]chan struct{}),
		streams:    make(map[uint32]*Stream),
		inflight:   make(map[uint32]struct{}),
		synCh:      make(chan struct{}, config.AcceptBacklog),
		acceptCh:   make(chan *Stream, config.AcceptBacklog),
		sendCh:     make(chan *sendReady, 64),
		recvDoneCh: make(chan struct{}),
		sendDoneCh: make(chan struct{}),
		shutdownCh: make(chan struct{}),
		recvChunks: newChunkPools(), // patched (patch 11)
		sinceSmall: interactiveSpan, // patched (patch 12): nobody waiting yet
	}
	s.bulkDirect.Store(true) // patched (patch 16): nobody waiting yet
	// Patched (patch 19): whoever holds conn writes the frames queued
	// behind it.
	s.writes.conn, s.writes.onFail = conn, s.failedQueuedWrite
	if client {
		s.nextStreamID = 1
	} else {
		s.nextStreamID = 2
	}
	go s.recv()
	go s.send()
	if config.EnableKeepAlive {
		go s.keepalive()
	}
	return s
}

// IsClosed does a safe check to see if we have shutdown
func (s *Session) IsClosed() bool {
	select {
	case <-s.shutdownCh:
		return true
	default:
		return false
	}
}

// CloseChan returns a read-only channel which is closed as
// soon as the session is closed.
func (s *Session) CloseChan() <-chan struct{} {
	return s.shutdownCh
}

// NumStreams returns the number of currently open streams
func (s *Session) NumStreams() int {
	s.streamLock.Lock()
	num := len(s.streams)
	s.streamLock.Unlock()
	return num
}

// RefusedStreams returns how many streams the peer opened that were reset
// at once: over Config.MaxStreams, or with the accept backlog full. They
// are counted, not logged, as a peer may open any number of them.
// Patched for tunnelworks, see PATCHED.md.
func (s *Session) RefusedStreams() (overLimit, backlogFull uint64) {
	return s.refusedOverLimit.Load(), s.refusedBacklog.Load()
}

// StrayFrames returns how many frames arrived for streams the session does
// not hold: data the peer sent before it saw our reset, or frames for
// streams that never existed. Only the first is logged. Patched for
// tunnelworks, see PATCHED.md.
func (s *Session) StrayFrames() uint64 {
	return s.strayFrames.Load()
}

// Open is used to create a new stream as a net.Conn
func (s *Session) Open() (net.Conn, error) {
	conn, err := s.OpenStream()
	if err != nil {
		return nil, err
	}
	return conn, nil
}

// OpenStream is used to create a new stream
func (s *Session) OpenStream() (*Stream, error) {
	if s.IsClosed() {
		return nil, ErrSessionShutdown
	}
	if atomic.LoadInt32(&s.remoteGoAway) == 1 {
		return nil, ErrRemoteGoAway
	}

	// Block if we have too many inflight SYNs
	select {
	case s.synCh <- struct{}{}:
	case <-s.shutdownCh:
		return nil, ErrSessionShutdown
	}

GET_ID:
	// Get an ID, and check for stream exhaustion
	id := atomic.LoadUint32(&s.nextStreamID)
	if id >= math.MaxUint32-1 {
		return nil, ErrStreamsExhausted
	}
	if !atomic.CompareAndSwapUint32(&s.nextStreamID, id, id+2) {
		goto GET_ID
	}

	// Register the stream
	stream := newStream(s, id, streamInit)
	s.streamLock.Lock()
	s.streams[id] = stream
	s.inflight[id] = struct{}{}
	s.streamLock.Unlock()

	if s.config.StreamOpenTimeout > 0 {
		go s.setOpenTimeout(stream)
	}

	// Send the window update to create
	if err := stream.sendWindowUpdate(); err != nil {
		select {
		case <-s.synCh:
		default:
			s.logger.Printf("[ERR] yamux: aborted stream open without inflight syn semaphore")
		}
		return nil, err
	}
	return stream, nil
}

// setOpenTimeout implements a timeout for streams that are opened but not established.
// If the StreamOpenTimeout is exceeded we assume the peer is unable to ACK,
// and close the session.
// The number of running timers is bounded by the capacity of the synCh.
func (s *Session) setOpenTimeout(stream *Stream) {
	timer := time.NewTimer(s.config.StreamOpenTimeout)
	defer timer.Stop()

	select {
	case <-stream.establishCh:
		return
	case <-s.shutdownCh:
		return
	case <-timer.C:
		// Timeout reached while waiting for ACK.
		// Close the session to force connection re-establishment.
		s.logger.Printf("[ERR] yamux: aborted stream open (destination=%s): %v", s.RemoteAddr().String(), ErrTimeout.err)
		s.Close()
	}
}

// Accept is used to block until the next available stream
// is ready to be accepted.
func (s *Session) Accept() (net.Conn, error) {
	conn, err := s.AcceptStream()
	if err != nil {
		return nil, err
	}
	return conn, err
}

// AcceptStream is used to block until the next available stream
// is ready to be accepted.
func (s *Session) AcceptStream() (*Stream, error) {
	select {
	case stream := <-s.acceptCh:
		if err := stream.sendWindowUpdate(); err != nil {
			return nil, err
		}
		return stream, nil
	case <-s.shutdownCh:
		return nil, s.shutdownErr
	}
}

// AcceptStream is used to block until the next available stream
// is ready to be accepted.
func (s *Session) AcceptStreamWithContext(ctx context.Context) (*Stream, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case stream := <-s.acceptCh:
		if err := stream.sendWindowUpdate(); err != nil {
			return nil, err
		}
		return stream, nil
	case <-s.shutdownCh:
		return nil, s.shutdownErr
	}
}

// Close is used to close the session and all streams.
// Attempts to send a GoAway before closing the connection.
func (s *Session) Close() error {
	s.shutdownLock.Lock()
	defer s.shutdownLock.Unlock()

	if s.shutdown {
		return nil
	}
	s.shutdown = true

	s.shutdownErrLock.Lock()
	if s.shutdownErr == nil {
		s.shutdownErr = ErrSessionShutdown
	}
	s.shutdownErrLock.Unlock()

	close(s.shutdownCh)

	s.conn.Close()
	<-s.recvDoneCh

	s.streamLock.Lock()
	defer s.streamLock.Unlock()
	for _, stream := range s.streams {
		stream.shutdownClose()
	}
	<-s.sendDoneCh
	return nil
}

// exitErr is used to handle an error that is causing the
// session to terminate.
func (s *Session) exitErr(err error) {
	s.shutdownErrLock.Lock()
	if s.shutdownErr == nil {
		s.shutdownErr = err
	}
	s.shutdownErrLock.Unlock()
	s.Close()
}

// GoAway can be used to prevent accepting further
// connections. It does not close the underlying conn.
func (s *Session) GoAway() error {
	return s.waitForSend(s.goAway(goAwayNormal), nil)
}

// goAway is used to send a goAway message
func (s *Session) goAway(reason uint32) header {
	atomic.SwapInt32(&s.localGoAway, 1)
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeGoAway, 0, 0, reason)
	return hdr
}

// Ping is used to measure the RTT response time
func (s *Session) Ping() (time.Duration, error) {
	// Get a channel for the ping
	ch := make(chan struct{})

	// Get a new ping id, mark as pending
	s.pingLock.Lock()
	id := s.pingID
	s.pingID++
	s.pings[id] = ch
	s.pingLock.Unlock()

	// Send the ping request. Patched for tunnelworks (see PATCHED.md,
	// patch 17): the clock starts before the send, not once it returns. A
	// reply that arrived while this goroutine waited to run again (a busy
	// host) measured a round trip of a few microseconds.
	start := time.Now()
	hdr := header(make([]byte, headerSize))
	hdr.encode(typePing, flagSYN, 0, id)
	if err := s.waitForSend(hdr, nil); err != nil {
		return 0, err
	}

	// Wait for a response
	select {
	case <-ch:
	case <-time.After(s.config.ConnectionWriteTimeout):
		s.pingLock.Lock()
		delete(s.pings, id) // Ignore it if a response comes later.
		s.pingLock.Unlock()
		return 0, ErrTimeout
	case <-s.shutdownCh:
		return 0, ErrSessionShutdown
	}

	// Compute the RTT
	return time.Since(start), nil
}

// keepalive is a long running goroutine that periodically does
// a ping to keep the connection alive.
func (s *Session) keepalive() {
	for {
		select {
		case <-time.After(s.config.KeepAliveInterval):
			_, err := s.Ping()
			if err != nil {
				if err != ErrSessionShutdown {
					s.logger.Printf("[ERR] yamux: keepalive failed: %v", err)
					s.exitErr(ErrKeepAliveTimeout)
				}
				return
			}
		case <-s.shutdownCh:
			return
		}
	}
}

// waitForSendErr waits to send a header, checking for a potential shutdown
func (s *Session) waitForSend(hdr header, body []byte) error {
	errCh := make(chan error, 1)
	return s.waitForSendErr(hdr, body, errCh)
}

// waitForSendErr waits to send a header with optional data, checking for a
// potential shutdown. Since there's the expectation that sends can happen
// in a timely manner, we enforce the connection write timeout here.
func (s *Session) waitForSendErr(hdr header, body []byte, errCh chan error) error {
	t := timerPool.Get()
	timer := t.(*time.Timer)
	timer.Reset(s.config.ConnectionWriteTimeout)
	defer func() {
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timerPool.Put(t)
	}()

	ready := &sendReady{Hdr: hdr, Body: body, Err: errCh}
	select {
	case s.sendCh <- ready:
	case <-s.shutdownCh:
		return ErrSessionShutdown
	case <-timer.C:
		return ErrConnectionWriteTimeout
	}

	bodyCopy := func() {
		if body == nil {
			return // A nil body is ignored.
		}

		// In the event of session shutdown or connection write timeout,
		// we need to prevent `send` from reading the body buffer after
		// returning from this function since the caller may re-use the
		// underlying array.
		ready.mu.Lock()
		defer ready.mu.Unlock()

		if ready.Body == nil {
			return // Body was already copied in `send`.
		}
		newBody := make([]byte, len(body))
		copy(newBody, body)
		ready.Body = newBody
	}

	select {
	case err := <-errCh:
		return err
	case <-s.shutdownCh:
		bodyCopy()
		return ErrSessionShutdown
	case <-timer.C:
		bodyCopy()
		return ErrConnectionWriteTimeout
	}
}

// sendNoWait does a send without waiting. Since there's the expectation that
// the send happens right here, we enforce the connection write timeout if we
// can't queue the header to be sent.
func (s *Session) sendNoWait(hdr header) error {
	t := timerPool.Get()
	timer := t.(*time.Timer)
	timer.Reset(s.config.ConnectionWriteTimeout)
	defer func() {
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timerPool.Put(t)
	}()

	select {
	case s.sendCh <- &sendReady{Hdr: hdr}:
		return nil
	case <-s.shutdownCh:
		return ErrSessionShutdown
	case <-timer.C:
		return ErrConnectionWriteTimeout
	}
}

// send is a long running goroutine that sends data
func (s *Session) send() {
	if err := s.sendLoop(); err != nil {
		s.exitErr(err)
	}
}

// writeData writes one data frame of a stream from the caller's goroutine
// and returns once conn has taken it.
//
// Patched for tunnelworks (see PATCHED.md): upstream hands every frame to
// sendLoop and waits for it to be written, which costs each write a
// goroutine hand-off there and back and a copy of the body; without them
// the tunnel's agents use a fifth less CPU per GB moved. Only data frames
// from Stream.Write come here; window updates, pings and go-aways still go
// through sendLoop, and both wait for their turn in s.writes (which also
// decides the order between streams), so a frame's header and body stay
// together on the wire. The bytes written are the same as upstream's:
// the protocol is unchanged.
func (s *Session) writeData(f *writeFlow, hdr header, body []byte) error {
	// Patch 19: if another writer holds conn, a copy of the frame waits
	// in s.writes for it to write, and we return.
	took, err := s.writes.queueFrame(f, hdr, body)
	switch {
	case errors.Is(err, errQueueFull):
		if err := s.waitWriteSlot(f, len(hdr)+len(body)); err != nil {
			return err
		}
	case err != nil:
		// A queued frame failed to be written: the session is ending.
		// Return once it has ended, so that the caller sees a closed
		// session (IsClosed), not a failed stream, as it would had its
		// own frame failed (the agents' resumable streams then wait for
		// the next session instead of failing).
		<-s.shutdownCh
		return ErrSessionShutdown
	case !took:
		return nil
	}
	select {
	case <-s.shutdownCh:
		s.writes.release()
		return ErrSessionShutdown
	default:
	}
	_, err = s.conn.Write(hdr)
	if err == nil && len(body) > 0 {
		_, err = s.conn.Write(body)
	}
	if err != nil {
		s.writes.fail(err)
	}
	s.writes.release()
	if err != nil {
		// As when sendLoop fails to write: the session is over.
		s.logger.Printf("[ERR] yamux: Failed to write data frame: %v", err)
		s.exitErr(err)
		return err
	}
	return nil
}

// failedQueuedWrite ends the session after a queued frame (patch 19)
// failed to be written by whoever held conn, which may be sendLoop:
// Close waits for sendLoop, so this only records the cause and closes
// conn; recvLoop then fails and closes the session.
func (s *Session) failedQueuedWrite(err error) {
	select {
	case <-s.shutdownCh:
		return // closing already: conn is closed
	default:
	}
	s.logger.Printf("[ERR] yamux: Failed to write data frame: %v", err)
	s.shutdownErrLock.Lock()
	if s.shutdownErr == nil {
		s.shutdownErr = err
	}
	s.shutdownErrLock.Unlock()
	s.conn.Close()
}

// waitWriteSlot waits for f's turn to write n bytes, at most
// ConnectionWriteTimeout. Only a writer that has to wait pays for the
// timer.
func (s *Session) waitWriteSlot(f *writeFlow, n int) error {
	t := timerPool.Get()
	timer := t.(*time.Timer)
	timer.Reset(s.config.ConnectionWriteTimeout)
	defer func() {
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timerPool.Put(t)
	}()
	return s.writes.take(f, n, s.shutdownCh, ErrSessionShutdown, timer.C, ErrConnectionWriteTimeout)
}

func (s *Session) sendLoop() error {
	defer close(s.sendDoneCh)
	var bodyBuf bytes.Buffer
	var flow writeFlow // the control frames are one flow in s.writes
	for {
		bodyBuf.Reset()

		select {
		case ready := <-s.sendCh:
			ready.mu.Lock()
			n := len(ready.Hdr) + len(ready.Body)
			ready.mu.Unlock()
			if s.writes.take(&flow, n, s.shutdownCh, ErrSessionShutdown, nil, nil) != nil {
				return nil
			}
			// Send a header if ready
			if ready.Hdr != nil {
				_, err := s.conn.Write(ready.Hdr)
				if err != nil {
					s.writes.fail(err)
					s.writes.release()
					s.logger.Printf("[ERR] yamux: Failed to write header: %v", err)
					asyncSendErr(ready.Err, err)
					return err
				}
			}

			ready.mu.Lock()
			if ready.Body != nil {
				// Copy the body into the buffer to avoid
				// holding a mutex lock during the write.
				_, err := bodyBuf.Write(ready.Body)
				if err != nil {
					ready.Body = nil
					ready.mu.Unlock()
					s.writes.release()
					s.logger.Printf("[ERR] yamux: Failed to copy body into buffer: %v", err)
					asyncSendErr(ready.Err, err)
					return err
				}
				ready.Body = nil
			}
			ready.mu.Unlock()

			if bodyBuf.Len() > 0 {
				// Send data from a body if given
				_, err := s.conn.Write(bodyBuf.Bytes())
				if err != nil {
					s.writes.fail(err)
					s.writes.release()
					s.logger.Printf("[ERR] yamux: Failed to write body: %v", err)
					asyncSendErr(ready.Err, err)
					return err
				}
			}

			s.writes.release()

			// No error, successful send
			asyncSendErr(ready.Err, nil)
		case <-s.shutdownCh:
			return nil
		}
	}
}

// recv is a long running goroutine that accepts new data
func (s *Session) recv() {
	if err := s.recvLoop(); err != nil {
		s.exitErr(err)
	}
}

// Ensure that the index of the handler (typeData/typeWindowUpdate/etc) matches the message type
var (
	handlers = []func(*Session, header) error{
		typeData:         (*Session).handleStreamMessage,
		typeWindowUpdate: (*Session).handleStreamMessage,
		typePing:         (*Session).handlePing,
		typeGoAway:       (*Session).handleGoAway,
	}
)

// recvLoop continues to receive data until a fatal error is encountered
func (s *Session) recvLoop() error {
	defer close(s.recvDoneCh)
	hdr := header(make([]byte, headerSize))
	for {
		// Read the header
		if _, err := io.ReadFull(s.bufRead, hdr); err != nil {
			if err != io.EOF && !strings.Contains(err.Error(), "closed") && !strings.Contains(err.Error(), "reset by peer") {
				s.logger.Printf("[ERR] yamux: Failed to read header: %v", err)
			}
			return err
		}

		// Verify the version
		if hdr.Version() != protoVersion {
			s.logger.Printf("[ERR] yamux: Invalid protocol version: %d", hdr.Version())
			return ErrInvalidVersion
		}

		mt := hdr.MsgType()
		if mt < typeData || mt > typeGoAway {
			return ErrInvalidMsgType
		}

		if err := handlers[mt](s, hdr); err != nil {
			return err
		}
	}
}

// handleStreamMessage handles either a data or window update frame
func (s *Session) handleStreamMessage(hdr header) error {
	// Check for a new stream creation
	id := hdr.StreamID()
	flags := hdr.Flags()
	var created *Stream
	if flags&flagSYN == flagSYN {
		var (
			refused bool
			err     error
		)
		created, refused, err = s.incomingStream(id)
		if err != nil {
			return err
		}
		if refused {
			// Counted in incomingStream; drop the frame without a log line.
			if hdr.MsgType() == typeData && hdr.Length() > 0 {
				if _, err := io.CopyN(ioutil.Discard, s.bufRead, int64(hdr.Length())); err != nil {
					return err
				}
			}
			return nil
		}
	}

	if created != nil && s.config.afterIncoming != nil {
		s.config.afterIncoming(created)
	}

	// Get the stream
	s.streamLock.Lock()
	stream := s.streams[id]
	s.streamLock.Unlock()

	// Patched for tunnelworks (see PATCHED.md): the stream this frame
	// opened, accepted and already reset by its acceptor (a refusal):
	// its frame is dropped as upstream drops it, but it is not a frame
	// for a missing stream, and not counted or logged as one.
	if stream == nil && created != nil {
		if hdr.MsgType() == typeData && hdr.Length() > 0 {
			if _, err := io.CopyN(ioutil.Discard, s.bufRead, int64(hdr.Length())); err != nil {
				s.logger.Printf("[ERR] yamux: Failed to discard data: %v", err)
			}
		}
		return nil
	}

	// If we do not have a stream, likely we sent a RST
	if stream == nil {
		// Patched for tunnelworks (see PATCHED.md): counted; only the
		// first of a session is logged, as the peer may send any number.
		first := s.strayFrames.Add(1) == 1
		// Drain any data on the wire
		if hdr.MsgType() == typeData && hdr.Length() > 0 {
			if first {
				s.logger.Printf("[WARN] yamux: Discarding data for stream: %d (further frames for missing streams are counted, not logged)", id)
			}
			if _, err := io.CopyN(ioutil.Discard, s.bufRead, int64(hdr.Length())); err != nil {
				s.logger.Printf("[ERR] yamux: Failed to discard data: %v", err)
				return nil
			}
		} else if first {
			s.logger.Printf("[WARN] yamux: frame for missing stream: %v (further frames for missing streams are counted, not logged)", hdr)
		}
		return nil
	}

	// Check if this is a window update
	if hdr.MsgType() == typeWindowUpdate {
		if err := stream.incrSendWindow(hdr, flags); err != nil {
			if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
				s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
			}
			return err
		}
		return nil
	}

	// Read the new data
	if err := stream.readData(hdr, flags, s.bufRead); err != nil {
		if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
			s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
		}
		return err
	}
	return nil
}

// handlePing is invokde for a typePing frame
func (s *Session) handlePing(hdr header) error {
	flags := hdr.Flags()
	pingID := hdr.Length()

	// Check if this is a query, respond back in a separate context so we
	// don't interfere with the receiving thread blocking for the write.
	if flags&flagSYN == flagSYN {
		go func() {
			hdr := header(make([]byte, headerSize))
			hdr.encode(typePing, flagACK, 0, pingID)
			if err := s.sendNoWait(hdr); err != nil {
				s.logger.Printf("[WARN] yamux: failed to send ping reply: %v", err)
			}
		}()
		return nil
	}

	// Handle a response
	s.pingLock.Lock()
	ch := s.pings[pingID]
	if ch != nil {
		delete(s.pings, pingID)
		close(ch)
	}
	s.pingLock.Unlock()
	return nil
}

// handleGoAway is invokde for a typeGoAway frame
func (s *Session) handleGoAway(hdr header) error {
	code := hdr.Length()
	switch code {
	case goAwayNormal:
		atomic.SwapInt32(&s.remoteGoAway, 1)
	case goAwayProtoErr:
		s.logger.Printf("[ERR] yamux: received protocol error go away")
		return fmt.Errorf("yamux protocol error")
	case goAwayInternalErr:
		s.logger.Printf("[ERR] yamux: received internal error go away")
		return fmt.Errorf("remote yamux internal error")
	default:
		s.logger.Printf("[ERR] yamux: received unexpected go away")
		return fmt.Errorf("unexpected go away received")
	}
	return nil
}

// incomingStream is used to create a new incoming stream. refused reports
// a stream reset at once (MaxStreams, full backlog or go away).
func (s *Session) incomingStream(id uint32) (stream *Stream, refused bool, err error) {
	// Reject immediately if we are doing a go away
	if atomic.LoadInt32(&s.localGoAway) == 1 {
		return nil, true, s.sendRST(id)
	}

	s.streamLock.Lock()

	// Check if stream already exists
	if _, ok := s.streams[id]; ok {
		s.streamLock.Unlock()
		s.logger.Printf("[ERR] yamux: duplicate stream declared")
		if sendErr := s.sendNoWait(s.goAway(goAwayProtoErr)); sendErr != nil {
			s.logger.Printf("[WARN] yamux: failed to send go away: %v", sendErr)
		}
		return nil, false, ErrDuplicateStream
	}

	// Patched for tunnelworks: refuse before allocating a stream the cap
	// has no room for. The RSTs below are queued without streamLock held:
	// a peer that opens streams and reads nothing must not hold it.
	if max := s.config.MaxStreams; max > 0 && len(s.streams) >= max {
		s.streamLock.Unlock()
		s.refusedOverLimit.Add(1)
		return nil, true, s.sendRST(id)
	}

	// Allocate and register the stream
	stream = newStream(s, id, streamSYNReceived)
	s.streams[id] = stream

	// Check if we've exceeded the backlog
	select {
	case s.acceptCh <- stream:
		s.streamLock.Unlock()
		return stream, false, nil
	default:
		// Backlog exceeded! RST the stream. Patched for tunnelworks:
		// counted, not logged once per stream.
		delete(s.streams, id)
		s.streamLock.Unlock()
		s.refusedBacklog.Add(1)
		return nil, true, s.sendRST(id)
	}
}

// sendRST queues a RST frame for the stream id.
func (s *Session) sendRST(id uint32) error {
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeWindowUpdate, flagRST, id, 0)
	return s.sendNoWait(hdr)
}

// closeStream is used to close a stream once both sides have
// issued a close. If there was an in-flight SYN and the stream
// was not yet established, then this will give the credit back.
func (s *Session) closeStream(id uint32) {
	s.streamLock.Lock()
	if st := s.streams[id]; st != nil {
		st.returnLoneExtra() // patch 22
	}
	if _, ok := s.inflight[id]; ok {
		// Patched for tunnelworks (see PATCHED.md): forget the entry too,
		// or a second close (Reset racing a close timeout) would take
		// another stream's credit, and every stream reset before its ACK
		// would leave an entry behind.
		delete(s.inflight, id)
		select {
		case <-s.synCh:
		default:
			s.logger.Printf("[ERR] yamux: SYN tracking out of sync")
		}
	}
	delete(s.streams, id)
	s.streamLock.Unlock()
}

// establishStream is used to mark a stream that was in the
// SYN Sent state as established.
func (s *Session) establishStream(id uint32) {
	s.streamLock.Lock()
	if _, ok := s.inflight[id]; ok {
		delete(s.inflight, id)
	} else {
		s.logger.Printf("[ERR] yamux: established stream without inflight SYN (no tracking entry)")
	}
	select {
	case <-s.synCh:
	default:
		s.logger.Printf("[ERR] yamux: established stream without inflight SYN (didn't have semaphore)")
	}
	s.streamLock.Unlock()
}
