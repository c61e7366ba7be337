package ssl

import (
	"testing"
	"time"
)

// Things valid for a short period are warned about in the last third of
// it, not for the whole of a long expiry_warning.
func TestExpiryWindow(t *testing.T) {
	const day = 24 * time.Hour
	for _, tc := range []struct {
		period, window, want time.Duration
	}{
		{365 * day, 30 * day, 30 * day},  // a yearly certificate: the configured window
		{90 * day, 30 * day, 30 * day},   // a third exactly
		{7 * day, 30 * day, 7 * day / 3}, // the default CRL: its last 56 hours
		{day, 30 * day, 8 * time.Hour},   // a day-long certificate
		{7 * day, time.Hour, time.Hour},  // a window shorter than a third stays
		{0, 30 * day, 30 * day},          // period unknown
	} {
		if got := (Expiry{Period: tc.period}).Window(tc.window); got != tc.want {
			t.Errorf("period %s, window %s: warn %s before; want %s", tc.period, tc.window, got, tc.want)
		}
	}
}
