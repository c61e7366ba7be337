package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
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
	Forwards  []ForwardStatus `json:"forwards"`
	Services  []ForwardStatus `json:"services"`
	Expiries  []ExpiryStatus  `json:"expiries"`
	Resume    *ResumeStats    `json:"resume,omitempty"`
}

type SessionStatus struct {
	// Peer is the certificate's readable name, which need not be unique;
	// Key (its SPKI pin, sha256:BASE64) tells two peers of one name apart.
	Peer    string    `json:"peer"`
	Key     string    `json:"key,omitempty"`
	Class   string    `json:"class"`
	Remote  string    `json:"remote"`
	Since   time.Time `json:"since"`
	Streams int       `json:"streams"`
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

// Serve listens on addr and serves until ctx ends. ready gets the bound address.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	s.Log.Info("admin listening", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin listener: %w", err)
	}
	return nil
}
