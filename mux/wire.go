package mux

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
)

// The wire format of the session protocol. Everything here parses bytes
// from the network and is fuzzed (wire_test.go).
//
// Hello, sent by each side once, right after the TLS handshake (the client
// writes first; the server reads the client's, then answers):
//
//	"TUNL" | version (1 byte) | body length (2 bytes, big endian) | JSON body
//
// Refusal, which a server sends in place of its hello when it will not
// serve this client (then closes), and after a control message
// refusalNotice when it ends a session for such a reason:
//
//	"TUNR" | version (1 byte, 1) | code (1 byte, a RefusalCode) |
//	text length (2 bytes, big endian, at most 512) | text (UTF-8)
//
// Stream header, the first bytes the opening side writes on a stream:
//
//	kind (1 byte, 1 = open) | name length (1 byte) | service name |
//	source length (1 byte) | source ("ip:port" of the local application, may be empty)
//
// Between peers that both announce CapResume in their hellos, a stream
// may be opened resumable (it may move to a later session, see Resume):
//
//	kind 3 | as kind 1 | token (16 bytes, the opener's random name for it)
//
// and moved to this session by its opener:
//
//	kind 4 | token (16 bytes) | bytes the opener has delivered from the
//	stream to its application (8 bytes, big endian)
//
// whose reply, when the code is ok, has a message of 8 bytes: what the
// accepting side has delivered.
//
// Stream reply, the first bytes the accepting side writes back:
//
//	code (1 byte) | message length (1 byte) | message
//
// Control stream: each side opens one stream with the header
// kind 2 | 0, and writes on it 4-byte big-endian messages. A second control
// stream from the same peer is reset. The messages are:
//
//	0x00000000  drain notice: "I am draining; open nothing more here"
//	0xFFFFFFFF  replaced notice: "a newer session from your certificate
//	            replaced this one" (the server sends it before its drain notice)
//	0xFFFFFFFE  refusal notice: followed by a refusal (above); "I am ending
//	            this session for this reason" (the receiver closes it)
//	0xFFFFFFFD  delivery notice (only to a peer with CapResume): followed
//	            by a stream ID (4 bytes) and the bytes we have delivered
//	            from that resumable stream to our application (8 bytes)
//	0xFFFFFFFC  heavy notice (only to a peer with CapHeavy): followed by
//	            the ID (4 bytes) of a resumable stream the peer opened:
//	            "its bytes toward you keep my writes waiting for the
//	            path: a transfer" (the opener may move it to another lane)
//
// None of these values is ever a yamux stream ID (yamux never uses 0 and opens no
// ID above 0xFFFFFFFD): an older peer, which read every message as the ID
// of a stream to abort, ignores both. A receiver ignores values it does not
// know.

// ProtocolVersion is the version of the session protocol spoken here.
// A peer with another version is refused with a clear error on both sides.
const ProtocolVersion = 1

var (
	helloMagic   = [4]byte{'T', 'U', 'N', 'L'}
	refusalMagic = [4]byte{'T', 'U', 'N', 'R'}
)

const (
	// maxHelloBody bounds a hello: a full list of services (maxHelloServices
	// names of at most maxServiceName bytes) fits.
	maxHelloBody     = 16384
	maxHelloServices = 128
	maxServiceName   = 64
	refusalVersion   = 1
	maxRefusalText   = 512
	headerOpen       = 1
	headerControl    = 2
	headerResumable  = 3
	headerResume     = 4
	// maxCaps bounds the capabilities a peer's hello may list.
	maxCaps = 16
	// maxInstance bounds a hello's instance name.
	maxInstance = 64
)

// CapResume, in a hello's caps, says the agent speaks resumable streams.
const CapResume = "resume/1"

// CapLanes, in a hello's caps, says the agent speaks lanes: a client may
// hold several sessions of one class (Hello.Lane tells them apart). A
// server without it keeps one session per certificate and class, and
// would replace one lane with the next.
const CapLanes = "lanes/1"

// CapHeavy, in a hello's caps, says the agent takes heavy notices (see
// the control stream above): the accepting side of a resumable stream
// sees a transfer toward the opener that keeps its writes waiting for
// the path, which the opener, only reading, cannot see.
const CapHeavy = "heavy/1"

// MaxLanes bounds the sessions of one class a client may hold at once
// (Hello.Lane is 0 to MaxLanes-1).
const MaxLanes = 8

// Token names a resumable stream: chosen at random by its opener, known
// only to the two agents, and needed (with the same certificate) to move
// the stream to a new session.
type Token [16]byte

// Hello is what each agent says about itself before the session starts.
type Hello struct {
	Version int    `json:"-"`
	Role    string `json:"role"`  // "client", "server", or "probe" (validate -online: no session)
	Agent   string `json:"agent"` // the agent's version, for messages
	// Class is the traffic class the client dedicates this session to
	// ("control" or "bulk"): one TLS connection per class keeps small
	// control messages from queueing behind bulk data.
	Class string `json:"class,omitempty"`
	// Lane tells apart the client's sessions of one class, to a server
	// that announced CapLanes: 0 is the class's first session (a client
	// that holds one per class sends only 0), up to MaxLanes-1.
	Lane int `json:"lane,omitempty"`
	// Services are the traffic classes of the services this side offers
	// the peer (only those the peer may open; at most maxHelloServices),
	// by name: the side that owns a service knows its protocol, and the
	// peer's forwards to it that name no class ride that class's session.
	Services     map[string]string `json:"services,omitempty"`
	Capabilities []string          `json:"caps,omitempty"`
	// Instance names the agent's stream state: random per process, and
	// handed to the successor of a handover with that state. A peer whose
	// instance changed has lost the resumable streams of the old one.
	Instance string `json:"instance,omitempty"`
}

// Has says whether the hello lists the capability.
func (h Hello) Has(capability string) bool { return slices.Contains(h.Capabilities, capability) }

// ErrNotTunnel means the peer completed TLS but did not speak this protocol.
var ErrNotTunnel = errors.New("peer does not speak the tunnel protocol")

func encodeHello(h Hello) ([]byte, error) {
	body, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("encode hello: %w", err)
	}
	if len(body) > maxHelloBody {
		return nil, fmt.Errorf("encode hello: %d bytes is over the %d byte limit", len(body), maxHelloBody)
	}
	buf := make([]byte, 0, 7+len(body))
	buf = append(buf, helloMagic[:]...)
	buf = append(buf, ProtocolVersion)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(body)))
	return append(buf, body...), nil
}

// readHello reads the peer's hello, or its refusal (a *RefusedError with
// ByPeer set).
func readHello(r io.Reader) (Hello, error) {
	var head [7]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	if [4]byte(head[:4]) == refusalMagic {
		return Hello{}, readRefusalRest(r, head[4:])
	}
	if [4]byte(head[:4]) != helloMagic {
		return Hello{}, fmt.Errorf("%w (hello starts with %q)", ErrNotTunnel, head[:4])
	}
	h := Hello{Version: int(head[4])}
	n := binary.BigEndian.Uint16(head[5:])
	if n > maxHelloBody {
		return Hello{}, fmt.Errorf("%w: hello body of %d bytes is over the %d byte limit", ErrNotTunnel, n, maxHelloBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return Hello{}, fmt.Errorf("read hello body: %w", err)
	}
	if h.Version != ProtocolVersion {
		// The body of another version may not be JSON we understand: report
		// the version, which is what the operator must fix.
		return h, nil
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return Hello{}, fmt.Errorf("%w: malformed hello body: %v", ErrNotTunnel, err)
	}
	return h, nil
}

// encodeHeader encodes an open; a non-nil token makes it resumable.
func encodeHeader(service, source string, token *Token) ([]byte, error) {
	if err := checkName(service); err != nil {
		return nil, err
	}
	if len(source) > maxSource {
		source = ""
	}
	kind := byte(headerOpen)
	if token != nil {
		kind = headerResumable
	}
	buf := make([]byte, 0, 3+len(service)+len(source)+len(Token{}))
	buf = append(buf, kind, byte(len(service)))
	buf = append(buf, service...)
	buf = append(buf, byte(len(source)))
	buf = append(buf, source...)
	if token != nil {
		buf = append(buf, token[:]...)
	}
	return buf, nil
}

func encodeResumeHeader(token Token, delivered uint64) []byte {
	buf := make([]byte, 0, 1+len(token)+8)
	buf = append(buf, headerResume)
	buf = append(buf, token[:]...)
	return binary.BigEndian.AppendUint64(buf, delivered)
}

// maxSource bounds the source address text ("[v6%zone]:port" fits).
const maxSource = 80

// header is a decoded stream header.
type header struct {
	service, source string
	control         bool // the peer's control stream
	resumable       bool // an open of a resumable stream named token
	resume          bool // a move of the stream named token to this session
	token           Token
	delivered       uint64 // resume: what the opener has delivered
}

// errMalformedHeader is a stream header that arrived but does not parse
// (as opposed to one that never arrived).
var errMalformedHeader = errors.New("malformed stream header")

func readHeader(r io.Reader) (header, error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return header{}, fmt.Errorf("read stream header: %w", err)
	}
	if head[0] == headerControl && head[1] == 0 {
		return header{control: true}, nil
	}
	if head[0] == headerResume {
		// The first byte of the token is in head already.
		var rest [len(Token{}) - 1 + 8]byte
		if _, err := io.ReadFull(r, rest[:]); err != nil {
			return header{}, fmt.Errorf("read stream header: %w", cutShort(err))
		}
		h := header{resume: true}
		h.token[0] = head[1]
		copy(h.token[1:], rest[:len(Token{})-1])
		h.delivered = binary.BigEndian.Uint64(rest[len(Token{})-1:])
		return h, nil
	}
	if head[0] != headerOpen && head[0] != headerResumable {
		return header{}, fmt.Errorf("%w: unknown kind %d", errMalformedHeader, head[0])
	}
	buf := make([]byte, int(head[1])+1) // the name and the source length
	if _, err := io.ReadFull(r, buf); err != nil {
		return header{}, fmt.Errorf("read stream header: %w", cutShort(err))
	}
	h := header{service: string(buf[:head[1]])}
	if err := checkName(h.service); err != nil {
		return header{}, fmt.Errorf("%w: %w", errMalformedHeader, err)
	}
	if n := int(buf[head[1]]); n > 0 {
		if n > maxSource {
			return header{}, fmt.Errorf("%w: source of %d bytes", errMalformedHeader, n)
		}
		src := make([]byte, n)
		if _, err := io.ReadFull(r, src); err != nil {
			return header{}, fmt.Errorf("read stream header: %w", cutShort(err))
		}
		h.source = string(src)
	}
	if head[0] == headerResumable {
		h.resumable = true
		if _, err := io.ReadFull(r, h.token[:]); err != nil {
			return header{}, fmt.Errorf("read stream header: %w", cutShort(err))
		}
	}
	return h, nil
}

// cutShort says that a header which had begun ended early: an EOF past
// its first bytes is a truncated header, not a stream that never began.
func cutShort(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func checkName(name string) error {
	if name == "" || len(name) > maxServiceName {
		return fmt.Errorf("service name must be 1 to %d bytes, got %d", maxServiceName, len(name))
	}
	for _, c := range []byte(name) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("service name %q has a character other than letters, digits, '.', '_', '-'", name)
		}
	}
	return nil
}

// Code is the accepting side's answer to a stream open.
type Code byte

const (
	CodeOK             Code = 0
	CodeDenied         Code = 1
	CodeUnknownService Code = 2
	CodeDialFailed     Code = 3
	CodeBadHeader      Code = 4
	CodeBusy           Code = 5
	// CodeNoStream answers a resume of a stream this side does not hold
	// (it ended, its resume window passed, or the agent restarted).
	CodeNoStream Code = 6
)

func (c Code) String() string {
	switch c {
	case CodeOK:
		return "ok"
	case CodeDenied:
		return "denied"
	case CodeUnknownService:
		return "unknown service"
	case CodeDialFailed:
		return "dial failed"
	case CodeBadHeader:
		return "bad stream header"
	case CodeBusy:
		return "busy"
	case CodeNoStream:
		return "no such stream"
	}
	return fmt.Sprintf("code %d", byte(c))
}

func encodeReply(code Code, msg string) []byte {
	if len(msg) > 255 {
		msg = msg[:255]
	}
	buf := make([]byte, 0, 2+len(msg))
	buf = append(buf, byte(code), byte(len(msg)))
	return append(buf, msg...)
}

func readReply(r io.Reader) (Code, string, error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, "", err
	}
	msg := make([]byte, head[1])
	if _, err := io.ReadFull(r, msg); err != nil {
		return 0, "", err
	}
	return Code(head[0]), string(msg), nil
}

// RefusalCode says why a server refused a client: a fixed set, so it can
// be a log key and a metric label.
type RefusalCode byte

const (
	RefusalOther      RefusalCode = 0 // a reason this side has no code for
	RefusalNotAllowed RefusalCode = 1 // no service or forward names the certificate
	RefusalRevoked    RefusalCode = 2 // a CRL revokes the certificate
	RefusalExpired    RefusalCode = 3 // the certificate (or a CA above it) expired
	RefusalCACert     RefusalCode = 4 // a CA certificate presented as a client's own
	RefusalCRLStale   RefusalCode = 5 // a CRL covering it is stale and crl_stale = "refuse"
	RefusalLimit      RefusalCode = 6 // max_sessions or max_sessions_per_identity reached
	RefusalBadHello   RefusalCode = 7 // the hello did not pass (version, role, class)
)

// String is the code's name, fit for a log key or a metric label;
// unknown codes (a newer peer's) are all "other".
func (c RefusalCode) String() string {
	switch c {
	case RefusalNotAllowed:
		return "not_allowed"
	case RefusalRevoked:
		return "revoked"
	case RefusalExpired:
		return "expired"
	case RefusalCACert:
		return "ca_certificate"
	case RefusalCRLStale:
		return "crl_stale"
	case RefusalLimit:
		return "limit"
	case RefusalBadHello:
		return "bad_hello"
	}
	return "other"
}

// RefusedError is a server's refusal of a client: what the server sends
// (ByPeer false) or what the client received (ByPeer true).
type RefusedError struct {
	Code   RefusalCode
	Msg    string // operator words; never names a service
	ByPeer bool
}

func (e *RefusedError) Error() string {
	if e.ByPeer {
		return "the server refused us: " + e.Msg
	}
	return "we refused the client: " + e.Msg
}

// Definite reports whether retrying cannot succeed until someone changes
// a certificate, a CRL or the server's config: the client then refuses its
// local connections at once instead of holding them for a session.
func (e *RefusedError) Definite() bool {
	switch e.Code {
	case RefusalNotAllowed, RefusalRevoked, RefusalExpired, RefusalCACert:
		return true
	}
	return false
}

func encodeRefusal(code RefusalCode, msg string) []byte {
	msg = cleanText(msg, maxRefusalText)
	buf := make([]byte, 0, 8+len(msg))
	buf = append(buf, refusalMagic[:]...)
	buf = append(buf, refusalVersion, byte(code))
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(msg)))
	return append(buf, msg...)
}

// readRefusal reads a whole refusal, magic included.
func readRefusal(r io.Reader) error {
	var head [5]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return fmt.Errorf("read refusal: %w", err)
	}
	if [4]byte(head[:4]) != refusalMagic {
		return fmt.Errorf("%w (refusal starts with %q)", ErrNotTunnel, head[:4])
	}
	return readRefusalRest(r, head[4:])
}

// readRefusalRest reads a refusal after its magic; rest holds the bytes
// already read past the magic (at most 3). It returns the *RefusedError,
// or why it could not be read.
func readRefusalRest(r io.Reader, rest []byte) error {
	var head [4]byte // version, code, length
	n := copy(head[:], rest)
	if _, err := io.ReadFull(r, head[n:]); err != nil {
		return fmt.Errorf("read refusal: %w", cutShort(err))
	}
	if head[0] != refusalVersion {
		return &RefusedError{Code: RefusalOther, Msg: fmt.Sprintf("(a refusal of version %d, we read version %d)", head[0], refusalVersion), ByPeer: true}
	}
	size := binary.BigEndian.Uint16(head[2:])
	if size > maxRefusalText {
		return fmt.Errorf("%w: refusal text of %d bytes is over the %d byte limit", ErrNotTunnel, size, maxRefusalText)
	}
	text := make([]byte, size)
	if _, err := io.ReadFull(r, text); err != nil {
		return fmt.Errorf("read refusal: %w", cutShort(err))
	}
	return &RefusedError{Code: RefusalCode(head[1]), Msg: cleanText(string(text), maxRefusalText), ByPeer: true}
}

// cleanText makes the peer's words safe for one log line: valid UTF-8,
// no control characters, at most n bytes.
func cleanText(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == utf8.RuneError {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
	for len(s) > n {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}
