package tunnelbench

import (
	"bytes"
	"testing"
	"time"
)

func TestBadCommandLine(t *testing.T) {
	for _, args := range [][]string{{"-scenario", "moon"}, {"extra"}, {"-idle", "0"}, {"-nope"}} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}

func TestPercentile(t *testing.T) {
	d := []time.Duration{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5}, {0.99, 10}, {1, 10}, {0.1, 1}} {
		if got := percentile(d, c.q); got != c.want {
			t.Errorf("p%v = %v, want %v", c.q*100, got, c.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

func TestRowTargets(t *testing.T) {
	for _, c := range []struct {
		r    row
		want string
	}{
		{row{base: 10, tunnel: 3, higherBetter: true, ratio: 0.28}, "ok"},
		{row{base: 10, tunnel: 2, higherBetter: true, ratio: 0.28}, "FAIL"},
		{row{base: 10, tunnel: 40, ratio: 5}, "ok"},
		{row{base: 10, tunnel: 60, ratio: 5}, "FAIL"},
		{row{base: -1, tunnel: 39, abs: true, ratio: 40}, "ok"},
		{row{base: -1, tunnel: 41, abs: true, ratio: 40}, "FAIL"},
		{row{base: 1, tunnel: 1}, ""},
	} {
		if got := c.r.pass(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.r, got, c.want)
		}
	}
}
