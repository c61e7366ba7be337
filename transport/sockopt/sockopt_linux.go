package sockopt

import (
	"fmt"

	"golang.org/x/sys/unix"
)

func setAll(fd uintptr, v6 bool, o Options) error {
	s := int(fd)
	set := func(what string, level, opt, value int) error {
		if err := unix.SetsockoptInt(s, level, opt, value); err != nil {
			return fmt.Errorf("set %s=%d: %w", what, value, err)
		}
		return nil
	}
	if o.UserTimeout > 0 {
		if err := set("TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(o.UserTimeout.Milliseconds())); err != nil {
			return err
		}
	}
	if o.NotSentLowat > 0 {
		if err := set("TCP_NOTSENT_LOWAT", unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, o.NotSentLowat); err != nil {
			return err
		}
	}
	if v6 {
		if o.TTL > 0 {
			if err := set("IPV6_UNICAST_HOPS", unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, o.TTL); err != nil {
				return err
			}
		}
		if o.MinTTL > 0 {
			if err := set("IPV6_MINHOPCOUNT", unix.IPPROTO_IPV6, unix.IPV6_MINHOPCOUNT, o.MinTTL); err != nil {
				return err
			}
		}
		if o.DSCP >= 0 {
			return set("IPV6_TCLASS", unix.IPPROTO_IPV6, unix.IPV6_TCLASS, o.DSCP<<2)
		}
		return nil
	}
	if o.TTL > 0 {
		if err := set("IP_TTL", unix.IPPROTO_IP, unix.IP_TTL, o.TTL); err != nil {
			return err
		}
	}
	if o.MinTTL > 0 {
		if err := set("IP_MINTTL", unix.IPPROTO_IP, unix.IP_MINTTL, o.MinTTL); err != nil {
			return err
		}
	}
	if o.DSCP >= 0 {
		return set("IP_TOS", unix.IPPROTO_IP, unix.IP_TOS, o.DSCP<<2)
	}
	return nil
}
