//go:build linux

package handover

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The channel is a SOCK_SEQPACKET socket pair, in two parts. First the
// parent sends one message per listener, its descriptor attached
// (SCM_RIGHTS), then an end message with the count. Once the successor
// has its listeners it may ask for the rest (request): the parent runs its
// export, then sends the connections and the state the same way, and an
// end (or fail, if export failed). Last the successor says ready, with
// its PID. Messages keep their boundaries, so no framing; one side writes
// while the other reads, so the pair never fills for long.

const (
	kindListener = "listener"
	kindConn     = "conn"
	kindState    = "state"
	kindEnd      = "end"
	kindRequest  = "request" // the successor asks for the connections and the state
	kindFail     = "fail"    // the parent cannot send them
	kindReady    = "ready"
	kindEarly    = "early" // the early state, inline
)

// maxMessage bounds one message (a listener's address or a connection's
// name, in JSON).
const maxMessage = 4 * maxName

type message struct {
	Kind    string `json:"kind"`
	Network string `json:"network,omitempty"`
	Addr    string `json:"addr,omitempty"`
	Name    string `json:"name,omitempty"`
	Size    int    `json:"size,omitempty"`  // state: bytes
	Count   int    `json:"count,omitempty"` // end: files sent in this part
	Error   string `json:"error,omitempty"` // fail
	PID     int    `json:"pid,omitempty"`   // ready
	Data    []byte `json:"data,omitempty"`  // early
}

// item is one file to send; its descriptor is duplicated when sent.
type item struct {
	m   message
	src syscall.Conn
}

type sendResult struct {
	listeners, conns, stateBytes, pid int
	exported                          bool // export ran
}

// send is the parent's side: the listeners, then the rest when asked,
// then the successor's PID (until c is closed or its read deadline
// passes). An item closed since it was queued is left out.
func (h *Handover) send(c *net.UnixConn, listeners []item, early []byte, export func() error) sendResult {
	var r sendResult
	if early != nil && writeMessage(c, message{Kind: kindEarly, Data: early}, nil) != nil {
		return r
	}
	if !sendPart(c, listeners, &r, h.log) {
		return r
	}
	for asked := false; ; {
		m, files, err := readMessage(c)
		closeAll(files)
		if err != nil {
			return r
		}
		switch {
		case m.Kind == kindReady:
			r.pid = m.PID
			return r
		case m.Kind != kindRequest || asked:
			h.log.Warn("the new process sent an unexpected message", "kind", m.Kind)
			return r
		}
		asked = true
		if export != nil {
			r.exported = true
			if err := export(); err != nil {
				_ = writeMessage(c, message{Kind: kindFail, Error: err.Error()}, nil)
				return r
			}
		}
		items, f, err := h.takeQueued()
		if err != nil {
			_ = writeMessage(c, message{Kind: kindFail, Error: err.Error()}, nil)
			return r
		}
		ok := sendPart(c, items, &r, h.log)
		if f != nil {
			f.Close()
		}
		if !ok {
			return r
		}
	}
}

// sendPart writes items and their end message.
func sendPart(c *net.UnixConn, items []item, r *sendResult, log hclog.Logger) bool {
	n := 0
	for _, it := range items {
		fd, err := dup(it.src)
		if err != nil {
			log.Warn("not passed on: closed before the upgrade", "kind", it.m.Kind, "name", it.m.Name, "addr", it.m.Addr, "error", err)
			continue
		}
		err = writeMessage(c, it.m, []int{fd})
		syscall.Close(fd) // the message holds its own reference
		if err != nil {
			return false
		}
		n++
		switch it.m.Kind {
		case kindListener:
			r.listeners++
		case kindConn:
			r.conns++
		case kindState:
			r.stateBytes = it.m.Size
		}
	}
	return writeMessage(c, message{Kind: kindEnd, Count: n}, nil) == nil
}

// dup duplicates c's descriptor (close-on-exec).
func dup(c syscall.Conn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

func writeMessage(c *net.UnixConn, m message, fds []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("send %s: %w", m.Kind, err)
	}
	return nil
}

// readMessage reads one message and the files attached to it.
func readMessage(c *net.UnixConn) (message, []*os.File, error) {
	var m message
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4)) // one descriptor
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return m, nil, err
	}
	files, err := rights(oob[:oobn])
	switch {
	case err != nil:
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		err = errors.New("message truncated")
	default:
		err = json.Unmarshal(buf[:n], &m)
	}
	if err != nil {
		closeAll(files)
		return m, nil, fmt.Errorf("bad message: %w", err)
	}
	return m, files, nil
}

func rights(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			closeAll(files)
			return nil, err
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "inherited"))
		}
	}
	return files, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// receive reads the first part the previous process sends (its
// listeners), within timeout. The connection stays open for the rest and
// for Ready's answer.
func receive(f *os.File, timeout time.Duration) (*inheritance, *net.UnixConn, error) {
	c, err := unixConn(f)
	f.Close()
	if err != nil {
		return nil, nil, err
	}
	in := &inheritance{listeners: map[string][]*os.File{}, conns: map[string]*os.File{}}
	if err := receivePart(c, timeout, func(m message, f *os.File) error { return in.add(m, f) }); err != nil {
		in.close()
		c.Close()
		return nil, nil, err
	}
	return in, c, nil
}

// receivePart reads one part, up to its end message, within timeout,
// giving each file to add (which keeps it unless it fails).
func receivePart(c *net.UnixConn, timeout time.Duration, add func(message, *os.File) error) error {
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	for n := 0; ; n++ {
		m, files, err := readMessage(c)
		if err != nil {
			return fmt.Errorf("after %d files: %w", n, err)
		}
		switch {
		case m.Kind == kindEarly && len(files) == 0:
			if err := add(m, nil); err != nil {
				return err
			}
			n--
			continue
		case m.Kind == kindFail:
			closeAll(files)
			return fmt.Errorf("the previous process could not pass on its streams: %s", m.Error)
		case m.Kind == kindEnd:
			closeAll(files)
			if len(files) > 0 || m.Count != n {
				return fmt.Errorf("got %d files, the previous process sent %d", n, m.Count)
			}
			return nil
		case len(files) != 1:
			closeAll(files)
			return fmt.Errorf("%s message with %d files", m.Kind, len(files))
		}
		if err := add(m, files[0]); err != nil {
			files[0].Close()
			return err
		}
	}
}

// takeBack empties the successor's end of a failed upgrade's pair
// (ours closed: it ends at EOF), closing every file in it.
func takeBack(theirs *net.UnixConn) {
	_ = theirs.SetReadDeadline(time.Now().Add(replyWait))
	for {
		_, files, err := readMessage(theirs)
		closeAll(files)
		if err != nil {
			return
		}
	}
}

// unixConn makes a *net.UnixConn of f's socket (a second descriptor; f
// stays the caller's).
func unixConn(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("handover channel is a %T, not a unix socket", c)
	}
	return uc, nil
}

// inheritance is what the previous process passed on, until taken or
// closed by Ready.
type inheritance struct {
	listeners map[string][]*os.File // by network and address, in the order sent
	conns     map[string]*os.File
	state     *os.File
	stateSize int64
	early     []byte
}

func listenerKey(network, addr string) string { return network + " " + addr }

func (in *inheritance) add(m message, f *os.File) error {
	switch m.Kind {
	case kindListener:
		k := listenerKey(m.Network, m.Addr)
		in.listeners[k] = append(in.listeners[k], f)
	case kindConn:
		if in.conns[m.Name] != nil {
			return fmt.Errorf("connection %q sent twice", m.Name)
		}
		in.conns[m.Name] = f
	case kindEarly:
		in.early = m.Data
	case kindState:
		if in.state != nil {
			return errors.New("state sent twice")
		}
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("state: %w", err)
		}
		in.state, in.stateSize = f, st.Size()
	default:
		return fmt.Errorf("unknown message %q", m.Kind)
	}
	return nil
}

func (in *inheritance) numListeners() int {
	n := 0
	for _, l := range in.listeners {
		n += len(l)
	}
	return n
}

// takeListener is the next inherited listener of network and addr, or
// nil; in may be nil (nothing inherited, or ready already).
func (in *inheritance) takeListener(network, addr string) *os.File {
	if in == nil {
		return nil
	}
	k := listenerKey(network, addr)
	l := in.listeners[k]
	if len(l) == 0 {
		return nil
	}
	in.listeners[k] = l[1:]
	return l[0]
}

func (in *inheritance) takeConn(name string, hasParent bool) (*os.File, error) {
	if in == nil {
		if hasParent {
			return nil, errors.New("asked for after Ready, which closed it")
		}
		return nil, ErrNotInherited
	}
	f := in.conns[name]
	if f == nil {
		return nil, ErrNotInherited
	}
	delete(in.conns, name)
	return f, nil
}

func (in *inheritance) takeState(hasParent bool) (*os.File, error) {
	if in == nil {
		if hasParent {
			return nil, errors.New("handover: state asked for after Ready, which closed it")
		}
		return nil, nil
	}
	f := in.state
	in.state = nil
	return f, nil
}

// close closes everything not taken and says how much that was.
func (in *inheritance) close() (listeners, conns, state int) {
	for _, l := range in.listeners {
		listeners += len(l)
		closeAll(l)
	}
	for _, f := range in.conns {
		conns++
		f.Close()
	}
	if in.state != nil {
		state = 1
		in.state.Close()
	}
	in.listeners, in.conns, in.state = nil, nil, nil
	return listeners, conns, state
}

// stateFile holds blob for the successor: a sealed memfd (it reads
// exactly what was written, whatever this process does next), or where
// memfd_create is refused an unlinked temporary file. Never the
// environment or a pipe, which a few MiB would fill.
func stateFile(blob []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("tunnel-handover-state", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return tempStateFile(blob)
	}
	f := os.NewFile(uintptr(fd), "handover-state")
	if _, err := f.Write(blob); err != nil {
		f.Close()
		return nil, err
	}
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	var serr error
	err = raw.Control(func(s uintptr) {
		_, serr = unix.FcntlInt(s, unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE|unix.F_SEAL_SEAL)
	})
	if err = errors.Join(err, serr); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal: %w", err)
	}
	return f, nil
}

func tempStateFile(blob []byte) (*os.File, error) {
	f, err := os.CreateTemp("", "tunnel-handover-*")
	if err != nil {
		return nil, err
	}
	err = os.Remove(f.Name())
	if err == nil {
		_, err = f.Write(blob)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readState reads the whole of f from its start (its offset is shared
// with the previous process's descriptor: read by position).
func readState(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, st.Size()), b); err != nil {
		return nil, err
	}
	return b, nil
}
