package resume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnelworks/tunnel/forward"
)

// Direct delivery (yamux's SetDeliver through mux, resume and forward's
// pipe): small frames go from the session's receive goroutine straight to
// the local socket while the pipe waits. These tests check that every byte
// still arrives once and in order, and that direct delivery happened.

// pingPong sends rounds messages of random sizes (now and then one larger
// than the largest frame delivered directly) and checks each echo.
func pingPong(app net.Conn, rounds int, seed uint64) error {
	rng := rand.New(rand.NewPCG(seed, seed))
	back := make([]byte, 24<<10)
	for i := range rounds {
		n := 1 + rng.IntN(2000)
		if rng.IntN(10) == 0 {
			n = 17<<10 + rng.IntN(4<<10)
		}
		msg := make([]byte, n)
		for j := range msg {
			msg[j] = byte(rng.Uint32())
		}
		if _, err := app.Write(msg); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if _, err := io.ReadFull(app, back[:n]); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		if !bytes.Equal(msg, back[:n]) {
			return fmt.Errorf("round %d: echo differs", i)
		}
	}
	return nil
}

// echoStream starts a rig and a client, and dials the rig's echo service.
func echoStream(t *testing.T, resumable bool) (*rig, net.Conn) {
	t.Helper()
	r := newRig(t, time.Minute)
	return r, r.newClient("client-a").dial(t, "echo", resumable)
}

func TestDirectDeliveryPingPong(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r, app := echoStream(t, m.resumable)
			if err := pingPong(app, 500, 1); err != nil {
				t.Fatalf("%v\npipes: %v", err, r.pipeErrors())
			}
			if n := r.delivered.bytes.Load(); n == 0 {
				t.Fatal("no byte was delivered directly")
			} else {
				t.Logf("%d bytes delivered directly", n)
			}
		})
	}
}

// Small messages and large blocks on one stream, written while the echo
// comes back, with pauses that let the pipes park, and a reader that
// stalls now and then: the echo is the same bytes in the same order.
func TestDirectDeliveryMixedSizes(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r, app := echoStream(t, m.resumable)

			rng := rand.New(rand.NewPCG(2, 2))
			var chunks [][]byte
			var data []byte
			for len(data) < 8<<20 {
				n := 1 + rng.IntN(300)
				if rng.IntN(8) == 0 {
					n = 32<<10 + rng.IntN(256<<10)
				}
				c := make([]byte, n)
				for j := range c {
					c[j] = byte(rng.Uint32())
				}
				chunks = append(chunks, c)
				data = append(data, c...)
			}

			var echoed atomic.Int64
			errs := make(chan error, 1)
			go func() {
				var sent int64
				for i, c := range chunks {
					if _, err := app.Write(c); err != nil {
						errs <- err
						return
					}
					sent += int64(len(c))
					if i%5 == 0 {
						// Let the echo catch up: the pipes park.
						for echoed.Load() < sent {
							time.Sleep(100 * time.Microsecond)
						}
					}
				}
				errs <- app.(*net.TCPConn).CloseWrite()
			}()
			got := make([]byte, 0, len(data))
			buf := make([]byte, 64<<10)
			var rerr error
			for i := 0; ; i++ {
				if i%16 == 0 {
					// A slow reader now and then: the pipe's writes
					// wait for room, then frames arrive and find room.
					time.Sleep(2 * time.Millisecond)
				}
				n, err := app.Read(buf[:1+rng.IntN(len(buf))])
				got = append(got, buf[:n]...)
				echoed.Add(int64(n))
				if err != nil {
					if err != io.EOF {
						rerr = err
					}
					break
				}
			}
			r.checkEcho(t, <-errs, rerr, got, data)
			if n := r.delivered.bytes.Load(); n == 0 {
				t.Fatal("no byte was delivered directly")
			} else {
				t.Logf("%d bytes delivered directly", n)
			}
		})
	}
}

// One bulk stream each way (16 MiB through the echo, 32 KiB writes): each
// direction is the only busy stream of its session, so bulk frames go
// from the session's receive goroutine straight to the local socket while
// the pipe waits with its buffer in hand; the echo is the same bytes in
// the same order.
func TestDirectDeliveryBulk(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			r, app := echoStream(t, m.resumable)

			data := make([]byte, 16<<20)
			rng := rand.New(rand.NewPCG(3, 3))
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			errs := make(chan error, 1)
			go func() {
				for off := 0; off < len(data); off += 32 << 10 {
					if _, err := app.Write(data[off : off+32<<10]); err != nil {
						errs <- err
						return
					}
				}
				errs <- app.(*net.TCPConn).CloseWrite()
			}()
			got, rerr := io.ReadAll(app)
			r.checkEcho(t, <-errs, rerr, got, data)
			large := r.delivered.largeFrames.Load()
			if large == 0 {
				t.Fatal("no bulk frame was delivered directly")
			}
			t.Logf("%d bytes delivered directly, %d calls with a frame over 16 KiB", r.delivered.bytes.Load(), large)
		})
	}
}

// checkEcho fails the test on the writer's or the reader's error, or when
// the echo is not what was sent.
func (r *rig) checkEcho(t *testing.T, werr, rerr error, got, want []byte) {
	t.Helper()
	if werr != nil {
		t.Fatalf("write: %v", werr)
	}
	if rerr != nil {
		t.Fatalf("read: %v\npipes: %v", rerr, r.pipeErrors())
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo: %d bytes, want %d, or not the same", len(got), len(want))
	}
}

// A ping-pong goes on across a handover to a successor process (Freeze,
// Export, Restore): bytes delivered directly just before the freeze are
// counted as delivered, none after it, so nothing is lost or repeated.
func TestDirectDeliveryAcrossHandover(t *testing.T) {
	r := newRig(t, 30*time.Second)
	old := r.newClient("client-a")
	app, local := tcpPair(t)
	rs, err := old.table.Open(context.Background(), old.session(t), "echo", "", local.LocalAddr(), local.RemoteAddr(), Options{Window: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var oldDirect directCount
	piped := make(chan forward.Result, 1)
	go func() {
		piped <- forward.Pipe(context.Background(), rs.Local(local), countedStream{rs, &oldDirect}, nil, 0)
	}()

	var rounds atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var pingErr error
	wg.Go(func() {
		rng := rand.New(rand.NewPCG(3, 3))
		back := make([]byte, 4096)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := 1 + rng.IntN(len(back))
			msg := make([]byte, n)
			for j := range msg {
				msg[j] = byte(rng.Uint32())
			}
			if _, err := app.Write(msg); err != nil {
				pingErr = err
				return
			}
			_ = app.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.ReadFull(app, back[:n]); err != nil {
				pingErr = err
				return
			}
			if !bytes.Equal(msg, back[:n]) {
				pingErr = errors.New("echo differs")
				return
			}
			rounds.Add(1)
		}
	})
	waitRounds := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for rounds.Load() < n {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%d rounds, want %d: %v", rounds.Load(), n, pingErr)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitRounds(300)

	old.table.Freeze()
	// A pipe parked on the local socket ends with the interrupted wait's
	// timeout rather than ErrHandedOver (as on main; the agent checks
	// whether the table is frozen).
	if res := <-piped; res.Err == nil {
		t.Fatal("frozen pipe ended cleanly")
	}
	if oldDirect.bytes.Load() == 0 {
		t.Error("the frozen pipe delivered no byte directly")
	}
	inst, handoffs := old.table.Export()
	if len(handoffs) != 1 {
		t.Fatalf("exported %d streams", len(handoffs))
	}
	f, err := local.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	inherited, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer inherited.Close()
	old.shutdown()
	local.Close()

	succ := r.startClient(old.mat, NewTable(Config{Instance: inst}))
	rs2, err := succ.table.Restore(handoffs[0].State, inherited)
	if err != nil {
		t.Fatal(err)
	}
	var newDirect directCount
	piped2 := make(chan forward.Result, 1)
	go func() {
		piped2 <- forward.Pipe(context.Background(), rs2.Local(inherited), countedStream{rs2, &newDirect}, nil, 0)
	}()
	waitRounds(rounds.Load() + 300)
	close(stop)
	wg.Wait()
	if pingErr != nil {
		t.Fatalf("ping-pong: %v\npipes: %v", pingErr, r.pipeErrors())
	}
	_ = app.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(io.Discard, app); err != nil {
		t.Fatalf("end: %v", err)
	}
	if res := <-piped2; res.Err != nil {
		t.Fatalf("successor's pipe: %v", res.Err)
	}
	if newDirect.bytes.Load() == 0 {
		t.Error("the successor's pipe delivered no byte directly")
	}
	t.Logf("directly: %d bytes before the handover, %d after", oldDirect.bytes.Load(), newDirect.bytes.Load())
}
