package config

import (
	"net"
	"strconv"
)

// Traffic classes: each gets its own TLS connection and yamux session, so
// small control messages never queue behind bulk data.
const (
	ClassControl = "control"
	ClassBulk    = "bulk"
)

// controlPorts are the single well-known control ports of DefaultClass;
// 2601-2609 is checked as a range.
var controlPorts = map[int]bool{179: true, 639: true, 646: true, 830: true, 3784: true, 4784: true, 6633: true, 6653: true}

// DefaultClass is the class of a forward (from its listen port) or a
// service (from its target port) that does not name one: [ClassControl]
// for the well-known ports of routing and control protocols, [ClassBulk]
// for every other port (and for 0):
//
//	179        BGP
//	639        MSDP
//	646        LDP
//	830        NETCONF over SSH
//	2601-2609  quagga/FRR vty (zebra, ripd, ripngd, ospfd, bgpd, ospf6d, ...)
//	3784, 4784 BFD (single hop, multihop)
//	6633, 6653 OpenFlow
func DefaultClass(port int) string {
	if controlPorts[port] || port >= 2601 && port <= 2609 {
		return ClassControl
	}
	return ClassBulk
}

func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
