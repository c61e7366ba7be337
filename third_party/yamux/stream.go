package yamux

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

type streamState int

const (
	streamInit streamState = iota
	streamSYNSent
	streamSYNReceived
	streamEstablished
	streamLocalClose
	streamRemoteClose
	streamClosed
	streamReset
)

// Stream is used to represent a logical stream
// within a session.
type Stream struct {
	recvWindow uint32
	sendWindow uint32

	id      uint32
	session *Session

	state     streamState
	stateLock sync.Mutex

	recvBuf *recvBuffer // patched: chunks (patch_recvbuf.go), not a bytes.Buffer
	// detached is WriteBufferedTo's list of chunks taken out of recvBuf
	// (patched, patch 14), kept between calls.
	detached []*[]byte
	recvLock sync.Mutex

	controlHdr     header
	controlErr     chan error
	controlHdrLock sync.Mutex

	sendHdr  header
	sendErr  chan error
	sendLock sync.Mutex
	// flow is this stream's place in the session's write order, held
	// with sendLock. Patched for tunnelworks, see PATCHED.md.
	flow writeFlow
	// ctlFlow is its window updates' place in the write order (patch
	// 21), held with controlHdrLock.
	ctlFlow writeFlow
	// lent is what the stream holds of the session's lone window extra
	// (patch 22); lentDone: closed, it may take no more.
	lent     atomic.Uint32
	lentDone atomic.Bool

	recvNotifyCh chan struct{}
	sendNotifyCh chan struct{}

	readDeadline  atomic.Value // time.Time
	writeDeadline atomic.Value // time.Time

	// establishCh is notified if the stream is established or being closed.
	establishCh chan struct{}

	// closeTimer is set with stateLock held to honor the StreamCloseTimeout
	// setting on Session.
	closeTimer *time.Timer

	// shutdownErr is set with stateLock held when the session shuts down
	// while the peer could still send on this stream: Read returns it
	// instead of io.EOF once the buffer is empty, so a stream cut short
	// does not look complete. Patched for tunnelworks, see PATCHED.md.
	shutdownErr error

	// deliver, when set, takes small frames straight from recvLoop (see
	// SetDeliver); deliverMu is held while it runs. Patched for
	// tunnelworks, see PATCHED.md.
	deliverMu  sync.Mutex
	deliver    func(p []byte) int
	hasDeliver atomic.Bool

	// background: this stream's small frames do not make bulk streams
	// share their window (SetBackground). Patched for tunnelworks, see
	// PATCHED.md, patch 13.
	background atomic.Bool
	// seenLarge: a large data frame has arrived on this stream; smallRun:
	// small ones since the last (see noteSmall). recvLoop only. Patched
	// for tunnelworks (patch 13).
	seenLarge bool
	smallRun  int
}

// newStream is used to construct a new stream within
// a given session for an ID
func newStream(session *Session, id uint32, state streamState) *Stream {
	s := &Stream{
		id:           id,
		session:      session,
		state:        state,
		controlHdr:   header(make([]byte, headerSize)),
		controlErr:   make(chan error, 1),
		sendHdr:      header(make([]byte, headerSize)),
		sendErr:      make(chan error, 1),
		recvWindow:   initialStreamWindow,
		sendWindow:   initialStreamWindow,
		recvNotifyCh: make(chan struct{}, 1),
		sendNotifyCh: make(chan struct{}, 1),
		establishCh:  make(chan struct{}, 1),
	}
	s.readDeadline.Store(time.Time{})
	s.writeDeadline.Store(time.Time{})
	return s
}

// Session returns the associated stream session
func (s *Stream) Session() *Session {
	return s.session
}

// StreamID returns the ID of this stream
func (s *Stream) StreamID() uint32 {
	return s.id
}

// Read is used to read from the stream
func (s *Stream) Read(b []byte) (n int, err error) {
	defer asyncNotify(s.recvNotifyCh)
START:

	// If the stream is closed and there's no data buffered, return EOF
	s.stateLock.Lock()
	switch s.state {
	case streamLocalClose:
		// LocalClose only prohibits further local writes. Handle reads normally.
	case streamRemoteClose:
		fallthrough
	case streamClosed:
		s.recvLock.Lock()
		if s.recvBuf == nil || s.recvBuf.Len() == 0 {
			s.recvLock.Unlock()
			err := s.shutdownErr
			s.stateLock.Unlock()
			if err != nil {
				return 0, err
			}
			return 0, io.EOF
		}
		s.recvLock.Unlock()
	case streamReset:
		s.stateLock.Unlock()
		return 0, ErrConnectionReset
	}
	s.stateLock.Unlock()

	// If there is no data available, block
	s.recvLock.Lock()
	if s.recvBuf == nil || s.recvBuf.Len() == 0 {
		s.recvLock.Unlock()
		goto WAIT
	}

	// Read any bytes
	n = s.recvBuf.Read(b)
	s.recvLock.Unlock()

	// Send a window update potentially
	err = s.sendWindowUpdate()
	// Patched for tunnelworks (see PATCHED.md): upstream drops only
	// ErrSessionShutdown here. A failed connection write ends the session
	// too (sendLoop exits with it), and which of the two the window update
	// sees is a race: drop both, so bytes read are not reported as a
	// failed read. ErrConnectionWriteTimeout is still returned.
	if err != nil && err != ErrConnectionWriteTimeout {
		err = nil
	}
	return n, err

WAIT:
	// Patched for tunnelworks (see PATCHED.md): upstream loops back to
	// START on shutdown and spins until Session.Close reaches this stream.
	// Check first without blocking: select picks at random among ready
	// cases, so a pending notify could keep winning.
	if s.session.IsClosed() {
		return 0, ErrSessionShutdown
	}
	var timeout <-chan time.Time
	var timer *time.Timer
	readDeadline := s.readDeadline.Load().(time.Time)
	if !readDeadline.IsZero() {
		delay := time.Until(readDeadline)
		timer = time.NewTimer(delay)
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
		if timer != nil {
			timer.Stop()
		}
		return 0, ErrSessionShutdown
	case <-s.recvNotifyCh:
	case <-timeout:
		return 0, ErrTimeout
	}
	if timer != nil {
		if !timer.Stop() {
			<-timeout
		}
	}
	goto START
}

// Write is used to write to the stream
func (s *Stream) Write(b []byte) (n int, err error) {
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	total := 0
	for total < len(b) {
		n, err := s.write(b[total:])
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// write is used to write to the stream, may return on
// a short write.
func (s *Stream) write(b []byte) (n int, err error) {
	var flags uint16
	var max uint32
	var body []byte
START:
	s.stateLock.Lock()
	switch s.state {
	case streamLocalClose:
		fallthrough
	case streamClosed:
		s.stateLock.Unlock()
		return 0, ErrStreamClosed
	case streamReset:
		s.stateLock.Unlock()
		return 0, ErrConnectionReset
	}
	s.stateLock.Unlock()

	// If there is no data available, block
	window := atomic.LoadUint32(&s.sendWindow)
	if window == 0 {
		goto WAIT
	}

	// Determine the flags if any
	flags = s.sendFlags()

	// Send up to our send window. Patched for tunnelworks: and at most
	// maxDataFrame, so that a large Write takes turns with other streams
	// frame by frame (see writeQueue).
	max = min(min(window, uint32(len(b))), maxDataFrame)
	max = min(max, frameCap(window)) // patch 15: two frames in a small window
	body = b[:max]

	// Send the header
	s.sendHdr.encode(typeData, flags, s.id, max)
	// Patched for tunnelworks: written from this goroutine, not handed to
	// sendLoop (see Session.writeData).
	if err = s.session.writeData(&s.flow, s.sendHdr, body); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.sendHdr = header(make([]byte, headerSize))
		}
		return 0, err
	}

	// Reduce our send window
	atomic.AddUint32(&s.sendWindow, ^uint32(max-1))

	// Unlock
	return int(max), err

WAIT:
	// Patched for tunnelworks: as in Read, return on shutdown.
	if s.session.IsClosed() {
		return 0, ErrSessionShutdown
	}
	var timeout <-chan time.Time
	var timer *time.Timer
	writeDeadline := s.writeDeadline.Load().(time.Time)
	if !writeDeadline.IsZero() {
		delay := time.Until(writeDeadline)
		timer = time.NewTimer(delay)
		timeout = timer.C
	}
	select {
	case <-s.session.shutdownCh:
		if timer != nil {
			timer.Stop()
		}
		return 0, ErrSessionShutdown
	case <-s.sendNotifyCh:
	case <-timeout:
		return 0, ErrTimeout
	}
	if timer != nil {
		if !timer.Stop() {
			<-timeout
		}
	}
	goto START
}

// sendFlags determines any flags that are appropriate
// based on the current stream state
func (s *Stream) sendFlags() uint16 {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()
	var flags uint16
	switch s.state {
	case streamInit:
		flags |= flagSYN
		s.state = streamSYNSent
	case streamSYNReceived:
		flags |= flagACK
		s.state = streamEstablished
	}
	return flags
}

// sendWindowUpdate potentially sends a window update enabling
// further writes to take place. Must be invoked with the lock.
func (s *Stream) sendWindowUpdate() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()

	// Determine the delta update
	max := s.windowMax() // patched: shared by bulk receivers (patch 12)
	var bufLen uint32
	s.recvLock.Lock()
	if s.recvBuf != nil {
		bufLen = uint32(s.recvBuf.Len())
	}
	max = s.loneWindowLocked(max, bufLen)           // patched (patch 22)
	delta := creditDelta(max, bufLen, s.recvWindow) // patched (patch 12): never below 0

	// Determine the flags if any
	flags := s.sendFlags()

	// Check if we can omit the update
	if delta < (max/2) && flags == 0 {
		s.recvLock.Unlock()
		return nil
	}

	// Update our window
	s.recvWindow += delta
	s.recvLock.Unlock()

	// Send the header
	s.controlHdr.encode(typeWindowUpdate, flags, s.id, delta)
	if flags == 0 && s.session.sendUpdateNoWait(&s.ctlFlow, s.controlHdr) {
		// Patched (patch 21): written by us or left as a copy for
		// whoever holds the connection, not handed to sendLoop. An update
		// with flags still goes through sendLoop, as upstream.
		return nil
	}
	if err := s.session.waitForSendErr(s.controlHdr, nil, s.controlErr); err != nil {
		if errors.Is(err, ErrSessionShutdown) || errors.Is(err, ErrConnectionWriteTimeout) {
			// Message left in ready queue, header re-use is unsafe.
			s.controlHdr = header(make([]byte, headerSize))
		}
		return err
	}
	return nil
}

// sendClose is used to send a FIN. Patched for tunnelworks (patch 19):
// it goes in the stream's own turn after its data frames, some of which
// may still wait in the session's write queue, not through sendLoop,
// which could send it ahead of them.
func (s *Stream) sendClose() error {
	s.controlHdrLock.Lock()
	defer s.controlHdrLock.Unlock()

	flags := s.sendFlags()
	flags |= flagFIN
	s.controlHdr.encode(typeWindowUpdate, flags, s.id, 0)
	return s.session.writeData(&s.flow, s.controlHdr, nil)
}

// Close is used to close the stream
func (s *Stream) Close() error {
	closeStream := false
	s.stateLock.Lock()
	switch s.state {
	// Opened means we need to signal a close
	case streamSYNSent:
		fallthrough
	case streamSYNReceived:
		fallthrough
	case streamEstablished:
		s.state = streamLocalClose
		goto SEND_CLOSE

	case streamLocalClose:
	case streamRemoteClose:
		s.state = streamClosed
		closeStream = true
		goto SEND_CLOSE

	case streamClosed:
	case streamReset:
	default:
		panic("unhandled state")
	}
	s.stateLock.Unlock()
	return nil
SEND_CLOSE:
	// This shouldn't happen (the more realistic scenario to cancel the
	// timer is via processFlags) but just in case this ever happens, we
	// cancel the timer to prevent dangling timers.
	if s.closeTimer != nil {
		s.closeTimer.Stop()
		s.closeTimer = nil
	}

	// If we have a StreamCloseTimeout set we start the timeout timer.
	// We do this only if we're not already closing the stream since that
	// means this was a graceful close.
	//
	// This prevents memory leaks if one side (this side) closes and the
	// remote side poorly behaves and never responds with a FIN to complete
	// the close. After the specified timeout, we clean our resources up no
	// matter what.
	if !closeStream && s.session.config.StreamCloseTimeout > 0 {
		s.closeTimer = time.AfterFunc(
			s.session.config.StreamCloseTimeout, s.closeTimeout)
	}

	s.stateLock.Unlock()
	s.sendClose()
	s.notifyWaiting()
	if closeStream {
		s.session.closeStream(s.id)
	}
	return nil
}

// Reset aborts the stream: the peer's Read and Write return
// ErrConnectionReset (data it has not read yet is dropped), as do ours, at
// once, including calls blocked now. The reset frame goes out after every
// data frame this stream's writes have handed to the connection, so it
// cannot overtake them; frames still waiting in the session's write queue
// (patch 19) are dropped. Reset also works after Close (the FIN is already
// sent). It does nothing on a stream already reset, fully closed, or
// whose session has shut down. It may return before the frame is written:
// if a Write of this stream is inside the connection's Write, the frame is
// sent once that returns.
//
// Patched for tunnelworks (see PATCHED.md); the frame is the one upstream
// sends on a close timeout or a full backlog.
func (s *Stream) Reset() error {
	s.stateLock.Lock()
	switch s.state {
	case streamReset, streamClosed:
		// Reset already, by either side; or closed both ways (the peer has
		// handled our FIN and freed the stream) or by session shutdown.
		s.stateLock.Unlock()
		return nil
	}
	s.state = streamReset
	if s.closeTimer != nil {
		s.closeTimer.Stop()
		s.closeTimer = nil
	}
	s.stateLock.Unlock()
	// Wake our blocked Read and Write: they see streamReset.
	s.notifyWaiting()
	s.session.closeStream(s.id)

	// sendLock orders the frame after this stream's data: a Write that
	// holds it has handed its frames to conn when it lets go. A Write
	// waiting for window lets go at once (it sees the reset); one inside
	// conn.Write may take as long as the connection, so do not wait for it.
	if s.sendLock.TryLock() {
		defer s.sendLock.Unlock()
		return s.sendReset()
	}
	go func() {
		s.sendLock.Lock()
		defer s.sendLock.Unlock()
		_ = s.sendReset()
	}()
	return nil
}

// sendReset queues a RST frame for the stream. sendLock must be held.
// The stream's data frames still queued are dropped first (patch 19): the
// peer would drop them, and they would otherwise go after the RST.
func (s *Stream) sendReset() error {
	s.session.writes.drop(&s.flow)
	s.session.writes.drop(&s.ctlFlow) // patch 21
	hdr := header(make([]byte, headerSize))
	hdr.encode(typeWindowUpdate, flagRST, s.id, 0)
	return s.session.sendNoWait(hdr)
}

// closeTimeout is called after StreamCloseTimeout during a close to
// close this stream.
func (s *Stream) closeTimeout() {
	// Close our side forcibly
	s.forceClose()

	// Free the stream from the session map
	s.session.closeStream(s.id)

	// Send a RST so the remote side closes too.
	s.sendLock.Lock()
	defer s.sendLock.Unlock()
	_ = s.sendReset()
}

// forceClose is used for when the session is exiting
func (s *Stream) forceClose() {
	s.stateLock.Lock()
	s.state = streamClosed
	s.stateLock.Unlock()
	s.notifyWaiting()
}

// shutdownClose is forceClose for a session that shuts down. Patched for
// tunnelworks (see PATCHED.md): a reset stream stays reset, and a stream the
// peer had not finished reads ErrSessionShutdown, not io.EOF, once its
// buffer is empty.
func (s *Stream) shutdownClose() {
	s.stateLock.Lock()
	switch s.state {
	case streamReset:
	case streamRemoteClose, streamClosed:
		s.state = streamClosed
	default:
		s.state = streamClosed
		s.shutdownErr = ErrSessionShutdown
	}
	s.stateLock.Unlock()
	s.notifyWaiting()
}

// processFlags is used to update the state of the stream
// based on set flags, if any. Lock must be held
func (s *Stream) processFlags(flags uint16) error {
	s.stateLock.Lock()
	defer s.stateLock.Unlock()

	// Close the stream without holding the state lock
	closeStream := false
	defer func() {
		if closeStream {
			if s.closeTimer != nil {
				// Stop our close timeout timer since we gracefully closed
				s.closeTimer.Stop()
			}

			s.session.closeStream(s.id)
		}
	}()

	if flags&flagACK == flagACK {
		if s.state == streamSYNSent {
			s.state = streamEstablished
		}
		asyncNotify(s.establishCh)
		s.session.establishStream(s.id)
	}
	if flags&flagFIN == flagFIN {
		switch s.state {
		case streamSYNSent:
			fallthrough
		case streamSYNReceived:
			fallthrough
		case streamEstablished:
			s.state = streamRemoteClose
			s.notifyWaiting()
		case streamLocalClose:
			s.state = streamClosed
			closeStream = true
			s.notifyWaiting()
		default:
			s.session.logger.Printf("[ERR] yamux: unexpected FIN flag in state %d", s.state)
			return ErrUnexpectedFlag
		}
	}
	if flags&flagRST == flagRST {
		s.state = streamReset
		closeStream = true
		s.notifyWaiting()
		// Patch 19: what we queued for it, the peer would only count as
		// stray.
		s.session.writes.drop(&s.flow)
		s.session.writes.drop(&s.ctlFlow) // patch 21
	}
	return nil
}

// notifyWaiting notifies all the waiting channels
func (s *Stream) notifyWaiting() {
	asyncNotify(s.recvNotifyCh)
	asyncNotify(s.sendNotifyCh)
	asyncNotify(s.establishCh)
}

// incrSendWindow updates the size of our send window
func (s *Stream) incrSendWindow(hdr header, flags uint16) error {
	if err := s.processFlags(flags); err != nil {
		return err
	}

	// Increase window, unblock a sender
	atomic.AddUint32(&s.sendWindow, hdr.Length())
	asyncNotify(s.sendNotifyCh)
	return nil
}

// readData is used to handle a data frame
func (s *Stream) readData(hdr header, flags uint16, conn io.Reader) error {
	if err := s.processFlags(flags); err != nil {
		return err
	}

	// Check that our recv window is not exceeded
	length := hdr.Length()
	if length == 0 {
		return nil
	}

	// Patched for tunnelworks (see PATCHED.md): a small frame may go
	// straight to the reader's destination.
	if s.session.noteData(s, length) && flags == 0 && s.hasDeliver.Load() {
		if handled, err := s.deliverDirect(length, conn); handled {
			return err
		}
	}

	// Copy into buffer
	s.recvLock.Lock()

	if length > s.recvWindow {
		s.session.logger.Printf("[ERR] yamux: receive window exceeded (stream: %d, remain: %d, recv: %d)", s.id, s.recvWindow, length)
		s.recvLock.Unlock()
		return ErrRecvWindowExceeded
	}

	if s.recvBuf == nil {
		s.recvBuf = newRecvBuffer(s.session.recvChunks)
	}
	// Patched: read into chunks (patch 11); upstream io.Copy's into a
	// bytes.Buffer that reallocates as it grows. A short read is an error
	// either way (the connection failed).
	copiedLength, err := s.recvBuf.readFrom(conn, int(length))
	if err != nil {
		s.session.logger.Printf("[ERR] yamux: Failed to read stream data: %v", err)
		s.recvLock.Unlock()
		return err
	}

	// Decrement the receive window
	s.recvWindow -= uint32(copiedLength)
	s.recvLock.Unlock()

	// Unblock any readers
	asyncNotify(s.recvNotifyCh)
	return nil
}

// SetDeadline sets the read and write deadlines
func (s *Stream) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	if err := s.SetWriteDeadline(t); err != nil {
		return err
	}
	return nil
}

// SetReadDeadline sets the deadline for blocked and future Read calls.
func (s *Stream) SetReadDeadline(t time.Time) error {
	s.readDeadline.Store(t)
	asyncNotify(s.recvNotifyCh)
	return nil
}

// SetWriteDeadline sets the deadline for blocked and future Write calls
func (s *Stream) SetWriteDeadline(t time.Time) error {
	s.writeDeadline.Store(t)
	asyncNotify(s.sendNotifyCh)
	return nil
}

// Shrink is used to compact the amount of buffers utilized
// This is useful when using Yamux in a connection pool to reduce
// the idle memory utilization.
func (s *Stream) Shrink() {
	s.recvLock.Lock()
	if s.recvBuf != nil && s.recvBuf.Len() == 0 {
		s.recvBuf = nil
	}
	s.recvLock.Unlock()
}
