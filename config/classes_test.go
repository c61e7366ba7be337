package config

import "testing"

func TestDefaultClass(t *testing.T) {
	for port, want := range map[int]string{179: ClassControl, 6653: ClassControl, 2605: ClassControl, 443: ClassBulk, 22: ClassBulk, 0: ClassBulk} {
		if got := DefaultClass(port); got != want {
			t.Errorf("DefaultClass(%d) = %s, want %s", port, got, want)
		}
	}
}
