package yamux

// Tests for the tunnelworks patch "stream cap at accept" (see PATCHED.md).

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestVerifyConfig_MaxStreams(t *testing.T) {
	conf := DefaultConfig()
	conf.MaxStreams = -1
	if err := VerifyConfig(conf); err == nil {
		t.Error("negative MaxStreams accepted")
	}
	for _, n := range []int{0, 1, 1000} {
		conf.MaxStreams = n
		if err := VerifyConfig(conf); err != nil {
			t.Errorf("MaxStreams %d: %v", n, err)
		}
	}
}

// The peer opens more streams than the server's cap: the excess are reset
// and never held; streams the server opened count too; a freed slot can be
// used again; refusals are counted, not logged.
func TestSession_MaxStreams(t *testing.T) {
	const max = 5
	c, s := tcpPair(t)
	serverConf := patchConf()
	serverConf.MaxStreams = max
	serverLog := captureLogs(serverConf)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, serverConf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()

	// The server holds two streams it opened.
	for i := 0; i < 2; i++ {
		if _, err := server.OpenStream(); err != nil {
			t.Fatalf("server open: %v", err)
		}
		if _, err := client.AcceptStream(); err != nil {
			t.Fatalf("client accept: %v", err)
		}
	}

	// Watch the server's stream count while the client opens streams.
	var most atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			if n := int64(server.NumStreams()); n > most.Load() {
				most.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	acceptedCh := make(chan *Stream, 100)
	go func() {
		defer wg.Done()
		for {
			st, err := server.AcceptStream()
			if err != nil {
				return
			}
			acceptedCh <- st
		}
	}()
	defer func() { close(stop); server.Close(); wg.Wait() }()

	const opens = 10
	var streams []*Stream
	for i := 0; i < opens; i++ {
		st, err := client.OpenStream()
		if err != nil {
			t.Fatalf("client open %d: %v", i, err)
		}
		streams = append(streams, st)
	}
	// Streams reach the server in order: the first max-2 fit.
	fit := max - 2
	for i, st := range streams {
		if i < fit {
			if _, err := st.Write([]byte("hi")); err != nil {
				t.Errorf("stream %d within the cap: write: %v", i, err)
			}
			continue
		}
		st := st
		waitFor(t, "refused stream reset", func() bool { return stateOf(st) == streamReset })
		if _, err := st.Read(make([]byte, 1)); err != ErrConnectionReset {
			t.Errorf("stream %d over the cap: read: %v, want %v", i, err, ErrConnectionReset)
		}
		if _, err := st.Write([]byte("x")); err != ErrConnectionReset {
			t.Errorf("stream %d over the cap: write: %v", i, err)
		}
	}
	for i := 0; i < fit; i++ {
		select {
		case <-acceptedCh:
		case <-time.After(patchBound):
			t.Fatalf("accepted %d streams, want %d", i, fit)
		}
	}
	if n := server.NumStreams(); n != max {
		t.Errorf("server holds %d streams, want %d", n, max)
	}
	if over, backlog := server.RefusedStreams(); over != opens-uint64(fit) || backlog != 0 {
		t.Errorf("refused (over limit, backlog full) = (%d, %d), want (%d, 0)", over, backlog, opens-fit)
	}

	// Free one slot: a reset (or a close both ways) releases it.
	if err := streams[0].Reset(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "server frees a slot", func() bool { return server.NumStreams() == max-1 })
	st, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-acceptedCh:
	case <-time.After(patchBound):
		t.Fatal("stream opened into a free slot not accepted")
	}
	if _, err := st.Write([]byte("hi")); err != nil {
		t.Errorf("write: %v", err)
	}
	if n := most.Load(); n > max {
		t.Errorf("server held %d streams, cap %d", n, max)
	}
	noRefusalLogs(t, client, serverLog)
}

// A full accept backlog resets new streams as upstream does, counted
// instead of logged.
func TestSession_BacklogFullCounted(t *testing.T) {
	c, s := tcpPair(t)
	serverConf := patchConf()
	serverConf.AcceptBacklog = 2
	serverLog := captureLogs(serverConf)
	client, err := Client(c, patchConf())
	if err != nil {
		t.Fatal(err)
	}
	server, err := Server(s, serverConf)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	defer server.Close()

	var streams []*Stream
	for i := 0; i < 5; i++ {
		st, err := client.OpenStream()
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		streams = append(streams, st)
	}
	for _, st := range streams[2:] {
		st := st
		waitFor(t, "stream over the backlog reset", func() bool { return stateOf(st) == streamReset })
	}
	if over, backlog := server.RefusedStreams(); over != 0 || backlog != 3 {
		t.Errorf("refused (over limit, backlog full) = (%d, %d), want (0, 3)", over, backlog)
	}
	if n := server.NumStreams(); n != 2 {
		t.Errorf("server holds %d streams, want 2", n)
	}
	noRefusalLogs(t, client, serverLog)
}

// noRefusalLogs fails if the server logged anything about refused streams.
func noRefusalLogs(t *testing.T, client *Session, log *logCapture) {
	t.Helper()
	if _, err := client.Ping(); err != nil { // the server has handled every frame before it
		t.Fatalf("ping: %v", err)
	}
	if l := strings.TrimSpace(log.String()); l != "" && l != "<nil>" {
		t.Errorf("server logged:\n%s", l)
	}
}
