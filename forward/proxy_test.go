package forward

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

func TestProxyHeaderV2(t *testing.T) {
	h, err := ProxyHeaderV2(netip.MustParseAddrPort("192.0.2.1:40000"), netip.MustParseAddrPort("127.0.0.1:179"), "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(h, proxyV2Signature) || h[12] != 0x21 || h[13] != 0x11 {
		t.Fatalf("header start % x", h[:14])
	}
	body := h[16:]
	if int(binary.BigEndian.Uint16(h[14:16])) != len(body) {
		t.Fatal("length field wrong")
	}
	if !bytes.Equal(body[:4], []byte{192, 0, 2, 1}) || !bytes.Equal(body[4:8], []byte{127, 0, 0, 1}) ||
		binary.BigEndian.Uint16(body[8:]) != 40000 || binary.BigEndian.Uint16(body[10:]) != 179 {
		t.Fatalf("addresses % x", body[:12])
	}
	tlv := body[12:]
	if tlv[0] != ProxyIdentityTLV || binary.BigEndian.Uint16(tlv[1:]) != 6 || string(tlv[3:]) != "edge-1" {
		t.Fatalf("identity TLV % x", tlv)
	}
	h6, _ := ProxyHeaderV2(netip.MustParseAddrPort("[2001:db8::1]:1"), netip.MustParseAddrPort("[::1]:2"), "")
	if h6[13] != 0x21 || binary.BigEndian.Uint16(h6[14:16]) != 36 {
		t.Fatalf("v6 header % x", h6[:16])
	}
}
