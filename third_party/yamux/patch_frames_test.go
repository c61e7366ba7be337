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

// frameCap keeps two frames in a small window and lets a large one take
// frames of maxDataFrame.
func TestFrameCap(t *testing.T) {
	for _, c := range []struct{ window, want uint32 }{
		{0, 32 << 10},
		{16 << 10, 32 << 10}, // the window itself bounds the frame
		{64 << 10, 32 << 10}, // a 2 Mbit/s link's lone window: two frames
		{100 << 10, 50 << 10},
		{128 << 10, 64 << 10},
		{1 << 20, 512 << 10}, // half; write bounds the frame by maxDataFrame too
	} {
		if got := frameCap(c.window); got != c.want {
			t.Errorf("frameCap(%d) = %d, want %d", c.window, got, c.want)
		}
	}
}

// TestStreamWindowBudgetAboveWindow: the shared budget is shared, each
// stream at most its own window: a budget of three windows shared by
// four streams offers each three quarters of a window, one of twenty
// windows offers each its whole window (patch 13 offered a quarter of one
// window in both).
func TestStreamWindowBudgetAboveWindow(t *testing.T) {
	c, s := tcpPair(t)
	conf := patchConf()
	conf.MaxStreamWindowSize = 1 << 20
	server, err := Server(s, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	defer c.Close()
	server.shareWindow.Store(4)
	server.sharedBudget.Store(3 << 20)
	if got, want := server.StreamWindow(), uint32(3<<20/4); got != want {
		t.Fatalf("budget 3 MiB over 4 streams: %d each, want %d", got, want)
	}
	server.sharedBudget.Store(20 << 20)
	if got, want := server.StreamWindow(), uint32(1<<20); got != want {
		t.Fatalf("budget 20 MiB over 4 streams: %d each, want %d", got, want)
	}
	if got, want := maxSharedBudget(1<<20), uint32(16<<20); got != want {
		t.Fatalf("maxSharedBudget(1 MiB) = %d, want %d", got, want)
	}
	if got := maxSharedBudget(1<<31 - 1); got != 1<<32-1 {
		t.Fatalf("maxSharedBudget of a 2 GiB window = %d, want the 32-bit limit", got)
	}
}
