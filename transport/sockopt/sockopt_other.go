//go:build !linux

package sockopt

import "errors"

// setAll on systems other than Linux: TTL, minimum TTL, DSCP,
// TCP_USER_TIMEOUT and TCP_NOTSENT_LOWAT are not set. Asking for the GTSM
// options is an error (silently skipping them would defeat their purpose);
// the rest are performance hints and are skipped.
func setAll(fd uintptr, v6 bool, o Options) error {
	if o.TTL > 0 || o.MinTTL > 0 {
		return errors.New("ttl and min_ttl are supported on Linux only")
	}
	return nil
}
