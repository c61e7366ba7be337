package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Status is what /status returns and `status` prints.
type Status struct {
	Agent     string          `json:"agent"`
	Version   string          `json:"version"`
	Started   time.Time       `json:"started"`
	Uptime    string          `json:"uptime"`
	Healthy   bool            `json:"healthy"`
	LastError string          `json:"last_error,omitempty"`
	Sessions  []SessionStatus `json:"sessions"`
	// Draining are sessions a reconnect replaced, still draining beside
	// their successors (server; at most drain_timeout each).
	Draining []SessionStatus `json:"draining,omitempty"`
	Forwards []ForwardStatus `json:"forwards"`
	Services []ForwardStatus `json:"services"`
	Expiries []ExpiryStatus  `json:"expiries"`
	Resume   *ResumeStats    `json:"resume,omitempty"`
}

type SessionStatus struct {
	// Peer is the certificate's readable name, which need not be unique;
	// Key (its SPKI pin, sha256:BASE64) tells two peers of one name apart.
	Peer  string `json:"peer"`
	Key   string `json:"key,omitempty"`
	Class string `json:"class"`
	// Lane tells apart a client's sessions of one class (bulk_connections);
	// 0, the first, is left out.
	Lane    int       `json:"lane,omitempty"`
	Remote  string    `json:"remote"`
	Since   time.Time `json:"since"`
	Streams int       `json:"streams"`
	// ReceiveBuffered: bytes the peer sent that the local side has not
	// read yet (at most the streams' windows).
	ReceiveBuffered int `json:"receive_buffered_bytes"`
	// WriteQueued: bytes the local side wrote that wait, copied, for the
	// session's connection (at most about 1 MiB: past that a writer
	// waits).
	WriteQueued int `json:"write_queued_bytes"`
	// LeastRTTMicros: the least round trip of the pings so far of every
	// session to the same peer at the same host (the path's), in µs (0
	// before the first answer).
	LeastRTTMicros int64 `json:"least_rtt_us"`
	// TCPMinRTTMicros: the kernel's least round trip of the session's
	// connection over its last 5 minutes, in µs (0 where the system does
	// not tell). Unlike least_rtt_us it rises when the path lengthens;
	// windows are sized by the longer of the two.
	TCPMinRTTMicros int64 `json:"tcp_min_rtt_us,omitempty"`
	// StreamWindow: the most a stream of the session may have in flight
	// toward us now, in bytes: the class's window, or less while bulk
	// streams share it beside messages or are sized to the path.
	StreamWindow int `json:"stream_window_bytes"`
	// LoneWindowLent: window beyond the class's that the session's only
	// bulk receiver holds now (a fast path lets it grow), in bytes.
	LoneWindowLent int64 `json:"lone_window_lent_bytes"`
	// TCP is what the kernel holds for the session's connection (left
	// out where the system does not tell).
	TCP *TCPQueues `json:"tcp,omitempty"`
}

// TCPQueues are a session connection's kernel queues, in bytes.
type TCPQueues struct {
	// ReceiveBuffer: the most the kernel may hold of the peer's bytes.
	// Linux grows it with the connection's traffic and never shrinks it.
	ReceiveBuffer int `json:"receive_buffer_bytes"`
	Unread        int `json:"unread_bytes"` // received, not yet read by the agent
	SendBuffer    int `json:"send_buffer_bytes"`
	SendQueue     int `json:"send_queue_bytes"` // written, not yet acknowledged by the peer
}

type ForwardStatus struct {
	Name         string `json:"name"`
	Listen       string `json:"listen,omitempty"`
	Target       string `json:"target,omitempty"`
	Class        string `json:"class,omitempty"`
	ClassFrom    string `json:"class_from,omitempty"` // "explicit", "service" (the peer's), "default" (the port's)
	StreamsOpen  int64  `json:"streams_open"`
	StreamsTotal int64  `json:"streams_total"`
	BytesToPeer  int64  `json:"bytes_to_peer"`
	BytesFrom    int64  `json:"bytes_from_peer"`
	// Refused is a forward's local connections closed without a stream
	// (max_conns, no session, the session would not take it).
	Refused int64 `json:"refused,omitempty"`
	// NotApplied says why a forward does not run as the config file says
	// (its new listener could not be opened; Listen is where it runs).
	NotApplied string `json:"not_applied,omitempty"`
}

type ExpiryStatus struct {
	What     string    `json:"what"`
	Name     string    `json:"name"`
	When     time.Time `json:"when"`
	DaysLeft int       `json:"days_left"`
}

// Server serves the admin endpoints until its context ends.
type Server struct {
	Metrics *Metrics
	Healthy func() bool
	Status  func() Status
	Log     hclog.Logger
}

// Handler routes /metrics, /healthz and /status.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.Healthy() {
			fmt.Fprintln(w, "ok")
			return
		}
		http.Error(w, "not healthy", http.StatusServiceUnavailable)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Status())
	})
	return mux
}

// Serve serves on ln until ctx ends, then stops accepting and finishes
// the requests of connections already accepted (2 s at most).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var fresh freshConns
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ConnState: fresh.track}
	served, shutdown := make(chan struct{}), make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(shutdown)
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// Stop accepting, then let the connections accepted before read
		// their request: Shutdown drops a request it reads once it has
		// begun. After a handover the port's next connections go to the
		// successor.
		_ = ln.Close()
		<-served
		fresh.wait(sctx)
		_ = srv.Shutdown(sctx)
	})
	s.Log.Info("admin listening", "addr", ln.Addr().String())
	err := srv.Serve(ln)
	close(served)
	if !stop() {
		<-shutdown // ctx ended: our own close, not an error
		return nil
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin listener: %w", err)
	}
	return nil
}

// freshConns tracks the connections that have not sent a request yet.
type freshConns struct {
	mu sync.Mutex
	m  map[net.Conn]bool
}

func (f *freshConns) track(c net.Conn, st http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[net.Conn]bool{}
	}
	if st == http.StateNew {
		f.m[c] = true
	} else {
		delete(f.m, c)
	}
}

// wait returns once every fresh connection has sent its request or
// closed, or when ctx ends.
func (f *freshConns) wait(ctx context.Context) {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		f.mu.Lock()
		n := len(f.m)
		f.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
