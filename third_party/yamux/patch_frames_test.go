package yamux

// Tests for the tunnelworks patch "data frames up to 64 KiB" (patch 15,
// see PATCHED.md).

import (
	"bytes"
	"io"
	"testing"
)

// TestLargeWriteIn64KiBFrames: a Write of 200 KiB within the window
// leaves as three frames of 64 KiB and the rest, and arrives whole. An
// upstream receiver takes such frames as it takes any frame within the
// window (TestWriteQueue_LargeWriteInFrames checks the bound itself).
func TestLargeWriteIn64KiBFrames(t *testing.T) {
	client, server, rec := recordedPair(t)
	cs, ss := openPair(t, client, server)
	data := pattern(200 << 10) // within the initial window
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(ss); got <- b }()
	if _, err := cs.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("read %d bytes, not the %d written", len(b), len(data))
	}
	var lengths []uint32
	for _, f := range rec.recorded() {
		if f.typ == typeData && f.length > 0 {
			lengths = append(lengths, f.length)
		}
	}
	want := []uint32{64 << 10, 64 << 10, 64 << 10, 8 << 10}
	if len(lengths) != len(want) {
		t.Fatalf("data frames of %v bytes, want %v", lengths, want)
	}
	for i := range want {
		if lengths[i] != want[i] {
			t.Fatalf("data frames of %v bytes, want %v", lengths, want)
		}
	}
}
