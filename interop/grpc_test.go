package interop

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// grpcTimeout bounds each gRPC subtest.
const grpcTimeout = 60 * time.Second

// concurrentConns is how many gRPC connections run side by side.
const concurrentConns = 8

// echoService is grpc-go's interop TestService with content that the client
// can check: UnaryCall and FullDuplexCall echo the request payload,
// StreamingOutputCall sends pattern(i, size) for response i.
type echoService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (echoService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	return &testpb.Empty{}, nil
}

func (echoService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: req.GetPayload().GetBody()}}, nil
}

func (echoService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for i, p := range req.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: pattern(i, int(p.GetSize()))}}); err != nil {
			return err
		}
	}
	return nil
}

func (echoService) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: req.GetPayload().GetBody()}}); err != nil {
			return err
		}
	}
}

// pattern is the deterministic body of streamed response i.
func pattern(i, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(i*131 + j*7 + j>>8)
	}
	return b
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// startGRPCServer serves echoService on an ephemeral loopback port.
func startGRPCServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("grpc listen: %v", err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, echoService{})
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Stop()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("grpc server: %v", err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("grpc server did not stop within %s", stopTimeout)
		}
	})
	return ln.Addr().String()
}

func dialGRPC(t *testing.T, addr string) (*grpc.ClientConn, testgrpc.TestServiceClient) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc client for %s: %v", addr, err)
	}
	return cc, testgrpc.NewTestServiceClient(cc)
}

// TestGRPC runs grpc-go's TestService behind the tunnel: the gRPC client
// talks to the tunnel client's forward, the tunnel server dials the gRPC
// server. HTTP/2 framing, flow control and streaming all cross one yamux
// stream per gRPC connection.
func TestGRPC(t *testing.T) {
	grpcAddr := startGRPCServer(t)
	dir := pkiDir(t)
	tn := startTunnel(t, dir,
		fmt.Sprintf(`service "grpc" {
  target = %q
  allow  = ["client-a"]
}
`, grpcAddr),
		`forward "grpc" {
  listen  = "127.0.0.1:0"
  service = "grpc"
}
`)
	fwd := tn.client.must(forwardListening("grpc"))

	seed := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", seed)

	cc, tc := dialGRPC(t, fwd)

	t.Run("empty", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		if _, err := tc.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatalf("EmptyCall: %v", err)
		}
	})

	t.Run("unary", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		r := rand.New(rand.NewPCG(seed, 1))
		sizes := []int{0, 1, 1 << 10, 16<<10 - 1, 64 << 10, 1 << 20, 3 << 20}
		for range 200 {
			sizes = append(sizes, r.IntN(32<<10))
		}
		for i, n := range sizes {
			body := randomBytes(r, n)
			resp, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
			if err != nil {
				t.Fatalf("UnaryCall %d (%d bytes): %v", i, n, err)
			}
			if got := resp.GetPayload().GetBody(); !bytes.Equal(got, body) {
				t.Fatalf("UnaryCall %d: got %d bytes back, want the %d sent", i, len(got), n)
			}
		}
	})

	t.Run("status", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		_, err := tc.UnimplementedCall(ctx, &testpb.Empty{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("UnimplementedCall: got %v, want code Unimplemented", err)
		}
	})

	t.Run("server-streaming", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		const n = 200
		req := &testpb.StreamingOutputCallRequest{}
		for i := range n {
			req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: int32(1 + i*311%(64<<10))})
		}
		stream, err := tc.StreamingOutputCall(ctx, req)
		if err != nil {
			t.Fatalf("StreamingOutputCall: %v", err)
		}
		for i := range n {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("StreamingOutputCall: response %d: %v", i, err)
			}
			if want := pattern(i, int(req.ResponseParameters[i].Size)); !bytes.Equal(resp.GetPayload().GetBody(), want) {
				t.Fatalf("StreamingOutputCall: response %d: wrong content (%d bytes, want %d)", i, len(resp.GetPayload().GetBody()), len(want))
			}
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("StreamingOutputCall: after %d responses got %v, want EOF", n, err)
		}
	})

	t.Run("bidi-ping-pong", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		r := rand.New(rand.NewPCG(seed, 2))
		stream, err := tc.FullDuplexCall(ctx)
		if err != nil {
			t.Fatalf("FullDuplexCall: %v", err)
		}
		for i := range 500 {
			body := randomBytes(r, r.IntN(4<<10))
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
				t.Fatalf("ping %d: send: %v", i, err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("ping %d: recv: %v", i, err)
			}
			if !bytes.Equal(resp.GetPayload().GetBody(), body) {
				t.Fatalf("ping %d: wrong echo", i)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatalf("CloseSend: %v", err)
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after CloseSend got %v, want EOF", err)
		}
	})

	t.Run("bidi-pipelined", func(t *testing.T) {
		// The sender does not wait for replies: flow control on both
		// directions of the one yamux stream is exercised at once.
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		const n = 3000
		r := rand.New(rand.NewPCG(seed, 3))
		bodies := make([][]byte, n)
		for i := range bodies {
			bodies[i] = randomBytes(r, r.IntN(16<<10))
		}
		stream, err := tc.FullDuplexCall(ctx)
		if err != nil {
			t.Fatalf("FullDuplexCall: %v", err)
		}
		sent := make(chan error, 1)
		go func() {
			for i, b := range bodies {
				if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: b}}); err != nil {
					sent <- fmt.Errorf("send %d: %w", i, err)
					return
				}
			}
			sent <- stream.CloseSend()
		}()
		for i := range n {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("recv %d: %v", i, err)
			}
			if !bytes.Equal(resp.GetPayload().GetBody(), bodies[i]) {
				t.Fatalf("recv %d: wrong echo (%d bytes, want %d)", i, len(resp.GetPayload().GetBody()), len(bodies[i]))
			}
		}
		if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after %d echoes got %v, want EOF", n, err)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("concurrent-connections", func(t *testing.T) {
		// Each gRPC connection is its own TCP connection and so its own
		// yamux stream: these run side by side on the one session.
		ctx, cancel := context.WithTimeout(context.Background(), grpcTimeout)
		defer cancel()
		const conns, calls = concurrentConns, 50
		var wg sync.WaitGroup
		errs := make(chan error, conns)
		for c := range conns {
			conn, client := dialGRPC(t, fwd)
			wg.Go(func() {
				defer conn.Close()
				r := rand.New(rand.NewPCG(seed, uint64(100+c)))
				stream, err := client.FullDuplexCall(ctx)
				if err != nil {
					errs <- fmt.Errorf("conn %d: FullDuplexCall: %w", c, err)
					return
				}
				for i := range calls {
					body := randomBytes(r, r.IntN(64<<10))
					resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
					if err != nil {
						errs <- fmt.Errorf("conn %d: UnaryCall %d: %w", c, i, err)
						return
					}
					if !bytes.Equal(resp.GetPayload().GetBody(), body) {
						errs <- fmt.Errorf("conn %d: UnaryCall %d: wrong echo", c, i)
						return
					}
					if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
						errs <- fmt.Errorf("conn %d: stream send %d: %w", c, i, err)
						return
					}
					echo, err := stream.Recv()
					if err != nil {
						errs <- fmt.Errorf("conn %d: stream recv %d: %w", c, i, err)
						return
					}
					if !bytes.Equal(echo.GetPayload().GetBody(), body) {
						errs <- fmt.Errorf("conn %d: stream echo %d: wrong content", c, i)
						return
					}
				}
				if err := stream.CloseSend(); err != nil {
					errs <- fmt.Errorf("conn %d: CloseSend: %w", c, err)
					return
				}
				if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
					errs <- fmt.Errorf("conn %d: after CloseSend got %v, want EOF", c, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	if err := cc.Close(); err != nil {
		t.Errorf("close grpc client: %v", err)
	}
	// Every gRPC connection was one forwarded stream; stop only once the
	// client has seen them all end, so that none ends by the stop.
	tn.client.waitCount(regexp.MustCompile(`tunnel-client: stream closed: .*\bforward=grpc\b`), 1+concurrentConns)
	tn.server.waitCount(regexp.MustCompile(`tunnel-server: stream closed: .*\bservice=grpc\b`), 1+concurrentConns)
	tn.stop()
	if n := tn.server.count("stream failed"); n > 0 {
		t.Errorf("tunnel-server logged %d failed stream(s)", n)
	}
	if n := tn.client.count("stream failed"); n > 0 {
		t.Errorf("tunnel-client logged %d failed stream(s)", n)
	}
}
