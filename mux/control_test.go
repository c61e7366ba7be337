package mux

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A heavy notice reaches the handler of the stream it names, on the
// opener's side, and nothing else: not another stream's, not one whose
// handler was removed. A peer that did not announce CapHeavy (or
// resumable streams) is sent none.
func TestHeavyNotice(t *testing.T) {
	cfg := Config{Resumable: true}
	server, client := sessions(t, "client-a", cfg)
	if !server.PeerHello.Has(CapHeavy) || !client.PeerHello.Has(CapHeavy) {
		t.Fatalf("heavy/1 not announced: server read %v, client read %v", server.PeerHello.Capabilities, client.PeerHello.Capabilities)
	}
	accepted := acceptedStreams(t, server, pipeTarget)
	serve(t, client, nil) // it reads the server's control stream
	var cli, srv [2]*Stream
	heard := [2]chan struct{}{make(chan struct{}, 8), make(chan struct{}, 8)}
	for i := range cli {
		st, err := client.OpenResumable(context.Background(), "bulk", "", Token{byte(i + 1)})
		if err != nil {
			t.Fatal(err)
		}
		cli[i], srv[i] = st, <-accepted
		cli[i].OnPeerHeavy(func() { heard[i] <- struct{}{} })
	}
	if sent, err := srv[1].NotifyHeavy(); !sent || err != nil {
		t.Fatalf("notice to a peer that takes them: sent %v, %v", sent, err)
	}
	select {
	case <-heard[1]:
	case <-time.After(10 * time.Second):
		t.Fatal("the opener's handler never heard the notice")
	}
	cli[0].OnPeerHeavy(nil)
	if _, err := srv[0].NotifyHeavy(); err != nil {
		t.Fatal(err)
	}
	// Notices go in order on the control stream: one for stream 1 after
	// it means the one for stream 0 was read, and dropped.
	if _, err := srv[1].NotifyHeavy(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-heard[1]:
	case <-time.After(10 * time.Second):
		t.Fatal("the second notice never heard")
	}
	if len(heard[0]) != 0 || len(heard[1]) != 0 {
		t.Fatalf("handlers heard %d and %d notices more than were sent to them", len(heard[0]), len(heard[1]))
	}

	// A client that does not resume streams announces neither.
	srvOnly := cfg
	server, client = sessionsWith(t, "client-a", srvOnly, Config{})
	if !client.PeerHello.Has(CapHeavy) || server.PeerHello.Has(CapHeavy) {
		t.Fatalf("capabilities: server read %v, client read %v", server.PeerHello.Capabilities, client.PeerHello.Capabilities)
	}
	accepted = acceptedStreams(t, server, pipeTarget)
	st, err := client.Open(context.Background(), "bulk", "")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if sent, err := (<-accepted).NotifyHeavy(); sent || err != nil {
		t.Fatalf("notice to a peer without heavy/1: sent %v, %v", sent, err)
	}
}

// Whole notices are handled on the session's receive loop as they
// arrive, without waking the control reader; a notice cut across two
// frames waits for the control reader, which handles it and what came
// after it, in order.
func TestNoticesOnReceiveLoop(t *testing.T) {
	server, client := sessions(t, "client-a", Config{Resumable: true})
	accepted := acceptedStreams(t, server, pipeTarget)
	serve(t, client, nil)
	st, err := client.OpenResumable(context.Background(), "bulk", "", Token{1})
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	heard := make(chan string, 8)
	st.OnDelivered(func(n uint64) {
		buf := make([]byte, 16<<10)
		stack := string(buf[:runtime.Stack(buf, false)])
		who := "another goroutine"
		for _, f := range []string{"recvLoop", "readControl"} {
			if strings.Contains(stack, f) {
				who = f
				break
			}
		}
		heard <- fmt.Sprint(n, " on ", who)
	})
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-heard:
			if got != want {
				t.Fatalf("heard %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("never heard %q", want)
		}
	}
	// A notice that comes before the control reader has started (a
	// loaded machine) waits for it, as any buffered bytes do: send until
	// one is handled where it arrives. Without direct delivery none is.
	for n := uint64(1); ; n++ {
		if err := srv.SendDelivered(n); err != nil {
			t.Fatal(err)
		}
		var got string
		select {
		case got = <-heard:
		case <-time.After(10 * time.Second):
			t.Fatalf("never heard of notice %d", n)
		}
		if got == fmt.Sprint(n, " on recvLoop") {
			break
		}
		if got != fmt.Sprint(n, " on readControl") || n == 50 {
			t.Fatalf("heard %q for notice %d; want it on recvLoop once the control reader waits", got, n)
		}
		time.Sleep(10 * time.Millisecond) // let the control reader wait again
	}

	cut := deliveredMsg(srv.y.StreamID(), 9)
	next := deliveredMsg(srv.y.StreamID(), 11)
	server.ctlMu.Lock()
	defer server.ctlMu.Unlock()
	if _, err := server.ctl.Write(cut[:10]); err != nil {
		t.Fatal(err)
	}
	if _, err := server.ctl.Write(append(cut[10:], next[:]...)); err != nil {
		t.Fatal(err)
	}
	expect("9 on readControl")
	expect("11 on readControl")
}
