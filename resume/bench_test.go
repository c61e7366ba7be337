package resume

import (
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The cost of resumable streams, beside plain ones in the same run: both
// agents in this process, over loopback TLS and yamux (no relay). Figures
// and the command are in bench/README.md.
//
//	go test -run XXX -bench . -count 3 ./resume/

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var modes = []struct {
	name      string
	resumable bool
}{{"plain", false}, {"resumable", true}}

func benchRig(b *testing.B) *client {
	r := newRig(b, time.Minute)
	r.direct = true
	return r.newClient("client-a")
}

// BenchmarkBulk: one stream into a sink; CPU seconds per GB of both agents.
func BenchmarkBulk(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			cl := benchRig(b)
			app := cl.dial(b, "sink", m.resumable)
			chunk := make([]byte, 32<<10)
			b.SetBytes(int64(len(chunk)))
			cpu := cpuTime()
			b.ResetTimer()
			for range b.N {
				if _, err := app.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			_ = app.(*net.TCPConn).CloseWrite()
			if _, err := io.Copy(io.Discard, app); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			gb := float64(b.N) * float64(len(chunk)) / 1e9
			b.ReportMetric((cpuTime()-cpu).Seconds()/gb, "cpu-s/GB")
		})
	}
}

// BenchmarkRoundTrip: a 64-byte ping-pong through an echo.
func BenchmarkRoundTrip(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			cl := benchRig(b)
			app := cl.dial(b, "echo", m.resumable)
			msg := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := app.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(app, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkIdleStreams: heap per idle stream (both agents' sides), after
// one message each way.
func BenchmarkIdleStreams(b *testing.B) {
	const n = 500
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			cl := benchRig(b)
			var perStream float64
			for range b.N {
				// The last round's streams gone first, on both sides.
				for cl.table.Stats().Streams > 0 || cl.r.serverTable().Stats().Streams > 0 || cl.session(b).NumStreams() > 0 {
					time.Sleep(10 * time.Millisecond)
				}
				runtime.GC()
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				apps := make([]net.Conn, n)
				for i := range apps {
					apps[i] = cl.dial(b, "echo", m.resumable)
					if _, err := apps[i].Write([]byte{1}); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(apps[i], make([]byte, 1)); err != nil {
						b.Fatal(err)
					}
				}
				time.Sleep(2 * notifyDelay) // delivery notices sent, replay buffers empty
				runtime.GC()
				runtime.GC() // pooled buffers too
				runtime.ReadMemStats(&after)
				perStream = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / n
				for _, a := range apps {
					a.Close()
				}
			}
			b.ReportMetric(perStream, "heap-B/stream")
		})
	}
}

// BenchmarkResumeAfterCut: the tunnel connection is reset; how long from
// the new session's arrival to the first byte of a ping-pong that was
// waiting, and from the cut itself.
func BenchmarkResumeAfterCut(b *testing.B) {
	r := newRig(b, time.Minute)
	cl := r.newClient("client-a")
	app := cl.dialEcho(b)
	msg := make([]byte, 64)
	var fromUp, fromCut time.Duration
	for range b.N {
		if _, err := app.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(app, msg); err != nil {
			b.Fatal(err)
		}
		old := cl.session(b)
		cut := time.Now()
		r.relay.cut()
		if _, err := app.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(app, msg); err != nil {
			b.Fatalf("%v\nclient %+v\nserver %+v\npipes: %v", err, cl.table.Stats(), r.serverTable().Stats(), r.pipeErrors())
		}
		got := time.Now()
		cl.mu.Lock()
		up, sess := cl.upAt, cl.sess
		cl.mu.Unlock()
		if sess == old {
			b.Fatal("the reply came on the old session")
		}
		fromUp += got.Sub(up)
		fromCut += got.Sub(cut)
	}
	b.ReportMetric(float64(fromUp.Microseconds())/float64(b.N), "µs-from-session-up")
	b.ReportMetric(float64(fromCut.Microseconds())/float64(b.N), "µs-from-cut")
}

// BenchmarkRoundTripParallel: 8 streams of one session, each a 64-byte
// ping-pong at once; ns/op is per round trip of any stream.
func BenchmarkRoundTripParallel(b *testing.B) {
	const streams = 8
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			cl := benchRig(b)
			apps := make([]net.Conn, streams)
			for i := range apps {
				apps[i] = cl.dial(b, "echo", m.resumable)
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, app := range apps {
				rounds := b.N / streams
				if i < b.N%streams {
					rounds++
				}
				wg.Go(func() {
					msg := make([]byte, 64)
					for range rounds {
						if _, err := app.Write(msg); err != nil {
							b.Error(err)
							return
						}
						if _, err := io.ReadFull(app, msg); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// BenchmarkRoundTripBesideBulk: a 64-byte ping-pong while another stream
// of the same session carries bulk data into a sink.
func BenchmarkRoundTripBesideBulk(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			cl := benchRig(b)
			bulk := cl.dial(b, "sink", m.resumable)
			app := cl.dial(b, "echo", m.resumable)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				chunk := make([]byte, 32<<10)
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := bulk.Write(chunk); err != nil {
						b.Error(err)
						return
					}
				}
			})
			msg := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := app.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(app, msg); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
		})
	}
}
