package forward

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
)

// PROXY protocol version 2 (haproxy's proxy-protocol.txt): a binary header
// the target reads before the data, carrying the original client address
// that a tunnel otherwise hides.
var proxyV2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// ProxyIdentityTLV is the custom TLV type (0xE0, the first of the range
// left to applications) carrying the tunnel peer's certificate identity.
const ProxyIdentityTLV = 0xE0

// ProxyHeaderV2 builds a PROXY v2 header for a TCP connection from src to
// dst, with the peer identity in a TLV when not empty.
func ProxyHeaderV2(src, dst netip.AddrPort, identity string) ([]byte, error) {
	if !src.IsValid() || !dst.IsValid() {
		return nil, errors.New("proxy header: source and destination addresses are required")
	}
	s, d := src.Addr().Unmap(), dst.Addr().Unmap()
	var fam byte
	var addrs []byte
	switch {
	case s.Is4() && d.Is4():
		fam = 0x11 // TCP over IPv4
		addrs = append(addrs, s.AsSlice()...)
		addrs = append(addrs, d.AsSlice()...)
	default:
		fam = 0x21 // TCP over IPv6
		s16, d16 := s.As16(), d.As16()
		addrs = append(addrs, s16[:]...)
		addrs = append(addrs, d16[:]...)
	}
	addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
	addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	if identity != "" {
		if len(identity) > 1024 {
			identity = identity[:1024]
		}
		addrs = append(addrs, ProxyIdentityTLV)
		addrs = binary.BigEndian.AppendUint16(addrs, uint16(len(identity)))
		addrs = append(addrs, identity...)
	}
	h := append([]byte{}, proxyV2Signature...)
	h = append(h, 0x21, fam) // version 2, command PROXY
	h = binary.BigEndian.AppendUint16(h, uint16(len(addrs)))
	return append(h, addrs...), nil
}

// addrPort converts a net.Addr of a TCP connection.
func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// WriteProxyHeader sends the PROXY v2 header on conn (to the target),
// naming source (the original client, "ip:port") and conn's own remote
// address as destination.
func WriteProxyHeader(conn net.Conn, source, identity string) error {
	src, err := netip.ParseAddrPort(source)
	if err != nil {
		// The source is not known (an older peer): say so with the
		// connection's own addresses rather than send nothing.
		src = addrPort(conn.LocalAddr())
	}
	h, err := ProxyHeaderV2(src, addrPort(conn.RemoteAddr()), identity)
	if err != nil {
		return err
	}
	_, err = conn.Write(h)
	return err
}
