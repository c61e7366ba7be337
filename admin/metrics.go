// Package admin is the agents' optional admin listener: Prometheus metrics
// on /metrics, /healthz for probes, /status as JSON for `status`.
package admin

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are one agent's Prometheus collectors, in their own registry (no
// globals: two agents in one test process do not collide).
type Metrics struct {
	Registry *prometheus.Registry
	Resume   *ResumeCollector // resumable streams; see WatchResume

	Sessions          *prometheus.GaugeVec   // class
	SessionsUp        *prometheus.CounterVec // class: sessions established, first or re-connect
	SessionsEnded     *prometheus.CounterVec // class, reason
	HandshakeFailures *prometheus.CounterVec // reason
	StreamsOpen       *prometheus.GaugeVec   // kind, name
	StreamsOpened     *prometheus.CounterVec // kind, name
	StreamsFailed     *prometheus.CounterVec // kind, name, reason
	StreamsRefused    *prometheus.CounterVec // kind: a fixed set (mux.RefusedKinds)
	AwaitingHeader    prometheus.Gauge       // streams the peer opened whose header has not arrived
	StrayFrames       prometheus.Counter     // frames peers sent for streams no longer held
	Bytes             *prometheus.CounterVec // kind, name, direction
	PingRTT           prometheus.Histogram
	CertExpiry        *prometheus.GaugeVec // what, name

	mu    sync.Mutex
	stats map[[2]string]*Counts     // by kind, name: the numbers /status shows
	open  map[*StreamBytes]struct{} // every open stream's own bytes

	receiveBuffered atomic.Pointer[func() int] // WatchReceiveBuffered
	kernelHeld      atomic.Pointer[func() int] // WatchKernelHeld
	writeQueued     atomic.Pointer[func() int] // WatchWriteQueued
	streamStarted   atomic.Pointer[func()]     // OnStreamStarted
}

// Counts are one forward's or service's stream numbers, for /status.
type Counts struct {
	Open, Total, ToPeer, FromPeer atomic.Int64
	Refused                       atomic.Int64 // a forward's local connections closed without a stream (LocalRefused)
}

// NewMetrics registers every collector, plus Go runtime and process metrics.
func NewMetrics(agent string) *Metrics {
	constLabels := prometheus.Labels{"agent": agent}
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Resume:   newResumeCollector(constLabels),
		Sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tunnel_sessions", Help: "Tunnel sessions up, by traffic class.", ConstLabels: constLabels,
		}, []string{"class"}),
		SessionsUp: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_sessions_established_total", Help: "Tunnel sessions established (first connections and reconnects).", ConstLabels: constLabels,
		}, []string{"class"}),
		SessionsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_sessions_ended_total", Help: "Tunnel sessions ended, by reason.", ConstLabels: constLabels,
		}, []string{"class", "reason"}),
		HandshakeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_handshake_failures_total", Help: "TLS handshakes or hellos that failed, by reason.", ConstLabels: constLabels,
		}, []string{"reason"}),
		StreamsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tunnel_streams_open", Help: "Streams open now, by forward or service.", ConstLabels: constLabels,
		}, []string{"kind", "name"}),
		StreamsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_streams_opened_total", Help: "Streams opened, by forward or service.", ConstLabels: constLabels,
		}, []string{"kind", "name"}),
		StreamsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_streams_failed_total", Help: "Streams that ended with an error or were refused, by reason.", ConstLabels: constLabels,
		}, []string{"kind", "name", "reason"}),
		StreamsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_streams_refused_total", Help: "Streams the peer opened that were refused, by kind (bad_header, header_timeout, second_control, stream_limit, backlog_full, unknown_service, denied, dial_failed, token_held).", ConstLabels: constLabels,
		}, []string{"kind"}),
		AwaitingHeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tunnel_streams_awaiting_header", Help: "Streams the peer opened whose header has not arrived yet.", ConstLabels: constLabels,
		}),
		StrayFrames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tunnel_stray_frames_total", Help: "Frames peers sent for streams the session no longer holds, dropped (a few follow any reset; many say a confused or hostile peer).", ConstLabels: constLabels,
		}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tunnel_stream_bytes_total", Help: "Bytes carried, by forward or service and direction (to_peer, from_peer).", ConstLabels: constLabels,
		}, []string{"kind", "name", "direction"}),
		PingRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tunnel_ping_rtt_seconds", Help: "Round trip time of liveness pings through the tunnel.", ConstLabels: constLabels,
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		CertExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tunnel_certificate_expiry_timestamp_seconds", Help: "When our certificate, each CA and each CRL's next update expire (Unix time).", ConstLabels: constLabels,
		}, []string{"what", "name"}),
	}
	received := watchedGauge(prometheus.GaugeOpts{
		Name: "tunnel_receive_buffer_bytes", Help: "Bytes received from peers on tunnelled streams, held until the local side reads them (each stream holds at most its window; a session's only bulk receiver on a fast path up to its lone window, 4 MiB).", ConstLabels: constLabels,
	}, &m.receiveBuffered)
	queued := watchedGauge(prometheus.GaugeOpts{
		Name: "tunnel_write_queue_bytes", Help: "Bytes of tunnelled streams copied into the sessions' write queues, waiting for the connection (each session holds at most about 1 MiB).", ConstLabels: constLabels,
	}, &m.writeQueued)
	kernel := watchedGauge(prometheus.GaugeOpts{
		Name: "tunnel_tcp_queued_bytes", Help: "Bytes the kernel holds for the agent's tunnel connections: received and not yet read, or sent and not yet acknowledged by the peer (each connection at most its socket buffers, which Linux grows with traffic up to net.ipv4.tcp_rmem and tcp_wmem).", ConstLabels: constLabels,
	}, &m.kernelHeld)
	m.Registry.MustRegister(received, queued, kernel, m.Sessions, m.SessionsUp, m.SessionsEnded, m.HandshakeFailures, m.StreamsOpen,
		m.StreamsOpened, m.StreamsFailed, m.StreamsRefused, m.AwaitingHeader, m.StrayFrames, m.Bytes, m.PingRTT, m.CertExpiry, m.Resume,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ResumeStats are the counts of an agent's resumable streams.
type ResumeStats struct {
	Streams       int    `json:"streams"`        // resumable streams held
	Suspended     int    `json:"suspended"`      // of which waiting for a session
	ReplayBytes   int64  `json:"replay_bytes"`   // held in replay buffers
	Resumed       uint64 `json:"resumed"`        // moved to a new session
	Moved         uint64 `json:"moved"`          // live, moved to another lane (heavy)
	Evicted       uint64 `json:"evicted"`        // idle, reset to make room under the bound per certificate
	Expired       uint64 `json:"expired"`        // reset: no session within the window
	PeerLost      uint64 `json:"peer_lost"`      // reset: the peer no longer held them
	Refused       uint64 `json:"refused"`        // the peer's resumes we refused
	ReplayedBytes uint64 `json:"replayed_bytes"` // resent after resumes
}

// watchedGauge is a gauge read, once per scrape, from the function a
// Watch… call stored in f; 0 until one has.
func watchedGauge(opts prometheus.GaugeOpts, f *atomic.Pointer[func() int]) prometheus.GaugeFunc {
	return prometheus.NewGaugeFunc(opts, func() float64 {
		if g := f.Load(); g != nil {
			return float64((*g)())
		}
		return 0
	})
}

// WatchReceiveBuffered exports the bytes held in the sessions' receive
// buffers, read once per scrape.
func (m *Metrics) WatchReceiveBuffered(bytes func() int) { m.receiveBuffered.Store(&bytes) }

// WatchWriteQueued exports the bytes waiting in the sessions' write
// queues, read once per scrape.
func (m *Metrics) WatchWriteQueued(bytes func() int) { m.writeQueued.Store(&bytes) }

// WatchKernelHeld makes tunnel_tcp_queued_bytes read bytes on each scrape:
// what the kernel holds for the agent's tunnel connections.
func (m *Metrics) WatchKernelHeld(bytes func() int) { m.kernelHeld.Store(&bytes) }

// WatchResume exports stats, read once per scrape.
func (m *Metrics) WatchResume(stats func() ResumeStats) { m.Resume.stats.Store(&stats) }

// ResumeCollector exports an agent's ResumeStats.
type ResumeCollector struct {
	stats atomic.Pointer[func() ResumeStats]
	descs []resumeDesc
}

type resumeDesc struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(ResumeStats) float64
}

func newResumeCollector(labels prometheus.Labels) *ResumeCollector {
	d := func(name, help string, kind prometheus.ValueType, v func(ResumeStats) float64) resumeDesc {
		return resumeDesc{prometheus.NewDesc(name, help, nil, labels), kind, v}
	}
	g, c := prometheus.GaugeValue, prometheus.CounterValue
	return &ResumeCollector{descs: []resumeDesc{
		d("tunnel_streams_resumable", "Resumable streams held (live or suspended).", g, func(s ResumeStats) float64 { return float64(s.Streams) }),
		d("tunnel_streams_suspended", "Resumable streams waiting for a tunnel session to resume on.", g, func(s ResumeStats) float64 { return float64(s.Suspended) }),
		d("tunnel_resume_buffer_bytes", "Bytes held in replay buffers: sent, not yet confirmed delivered by the peer.", g, func(s ResumeStats) float64 { return float64(s.ReplayBytes) }),
		d("tunnel_streams_resumed_total", "Streams moved to a new tunnel session after their session was lost.", c, func(s ResumeStats) float64 { return float64(s.Resumed) }),
		d("tunnel_streams_moved_total", "Live streams moved to another session of their class: bulk streams that turned heavy, off the lane where every stream starts.", c, func(s ResumeStats) float64 { return float64(s.Moved) }),
		d("tunnel_streams_resume_expired_total", "Suspended streams reset because no session came back within their resume window.", c, func(s ResumeStats) float64 { return float64(s.Expired) }),
		d("tunnel_streams_resume_lost_total", "Suspended streams reset because the peer no longer held them (it restarted without a handover).", c, func(s ResumeStats) float64 { return float64(s.PeerLost) }),
		d("tunnel_streams_resume_evicted_total", "Idle resumable streams (suspended, or ended and awaiting the peer's confirmation) reset to make room for a new one when a peer certificate held as many as its bound.", c, func(s ResumeStats) float64 { return float64(s.Evicted) }),
		d("tunnel_resume_refused_total", "The peer's resumes refused (no such stream for its certificate).", c, func(s ResumeStats) float64 { return float64(s.Refused) }),
		d("tunnel_resume_replayed_bytes_total", "Bytes resent from replay buffers after resumes.", c, func(s ResumeStats) float64 { return float64(s.ReplayedBytes) }),
	}}
}

func (r *ResumeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range r.descs {
		ch <- d.desc
	}
}

func (r *ResumeCollector) Collect(ch chan<- prometheus.Metric) {
	f := r.stats.Load()
	if f == nil {
		return
	}
	s := (*f)()
	for _, d := range r.descs {
		ch <- prometheus.MustNewConstMetric(d.desc, d.kind, d.value(s))
	}
}

// Counts returns the /status numbers of a forward or service.
func (m *Metrics) Counts(kind, name string) *Counts {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.countsLocked(kind, name)
}

func (m *Metrics) countsLocked(kind, name string) *Counts {
	if m.stats == nil {
		m.stats = map[[2]string]*Counts{}
	}
	c, ok := m.stats[[2]string{kind, name}]
	if !ok {
		c = &Counts{}
		m.stats[[2]string{kind, name}] = c
	}
	return c
}

// OpenStreams is how many streams are open now, of every forward and
// service.
func (m *Metrics) OpenStreams() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for _, c := range m.stats {
		n += c.Open.Load()
	}
	return n
}

// Carrying is how many streams are open now, of every forward and
// service, and the bytes all streams have carried so far, both ways
// together (per forward, not per stream: cheap with many streams).
func (m *Metrics) Carrying() (open, bytes int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.stats {
		open += c.Open.Load()
		bytes += c.ToPeer.Load() + c.FromPeer.Load()
	}
	return open, bytes
}

// StreamBytes is one stream's bytes so far, each way.
type StreamBytes struct {
	toPeer, fromPeer atomic.Int64
}

// Load reads both counts.
func (b *StreamBytes) Load() (toPeer, fromPeer int64) {
	return b.toPeer.Load(), b.fromPeer.Load()
}

// EachOpenStream calls f with each open stream's bytes, under the
// metrics' lock (f must not call back into m).
func (m *Metrics) EachOpenStream(f func(*StreamBytes)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for b := range m.open {
		f(b)
	}
}

// OnStreamStarted has f called as each stream starts, before its first
// byte moves (nil: nothing is called).
func (m *Metrics) OnStreamStarted(f func()) {
	if f == nil {
		m.streamStarted.Store(nil)
		return
	}
	m.streamStarted.Store(&f)
}

// Names lists the names of kind that have carried streams, sorted.
func (m *Metrics) Names(kind string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k := range m.stats {
		if k[0] == kind {
			out = append(out, k[1])
		}
	}
	sort.Strings(out)
	return out
}

// StreamMeter counts one stream's bytes as they move, so /metrics shows
// long transfers while they run, not only when they end.
type StreamMeter struct {
	toPeer, fromPeer prometheus.Counter
	counts           *Counts
	own              *StreamBytes
}

// StreamStarted counts a new stream and resolves its labels once; the
// per-read cost is then two atomic adds.
func (m *Metrics) StreamStarted(kind, name string) StreamMeter {
	if f := m.streamStarted.Load(); f != nil {
		(*f)()
	}
	m.StreamsOpened.WithLabelValues(kind, name).Inc()
	m.StreamsOpen.WithLabelValues(kind, name).Inc()
	own := &StreamBytes{}
	m.mu.Lock()
	c := m.countsLocked(kind, name)
	if m.open == nil {
		m.open = map[*StreamBytes]struct{}{}
	}
	m.open[own] = struct{}{}
	m.mu.Unlock()
	c.Open.Add(1)
	c.Total.Add(1)
	return StreamMeter{
		toPeer:   m.Bytes.WithLabelValues(kind, name, "to_peer"),
		fromPeer: m.Bytes.WithLabelValues(kind, name, "from_peer"),
		counts:   c,
		own:      own,
	}
}

// Local connection refusal reasons (LocalRefused): a forward closed a
// connection it accepted without a stream.
const (
	RefusedMaxConns   = "max_conns"   // the forward at its max_conns
	RefusedNoSession  = "no_session"  // no session to the peer (the client: none within session_wait; the server: the forward's client not connected)
	RefusedOpenFailed = "open_failed" // the session would not take the stream (draining, at a bound, gone)
)

// LocalRefused counts a connection forward name accepted and closed
// without a stream, in tunnel_streams_failed_total; reason is one of the
// Refused constants. Nil-safe.
func (m *Metrics) LocalRefused(name, reason string) {
	if m == nil {
		return
	}
	m.StreamsFailed.WithLabelValues("forward", name, reason).Inc()
	m.Counts("forward", name).Refused.Add(1)
}

// StreamEnded counts the end of a stream; reason is "" when it ended cleanly.
func (m *Metrics) StreamEnded(kind, name, reason string, meter StreamMeter) {
	m.StreamsOpen.WithLabelValues(kind, name).Dec()
	meter.counts.Open.Add(-1)
	m.mu.Lock()
	delete(m.open, meter.own)
	m.mu.Unlock()
	if reason != "" {
		m.StreamsFailed.WithLabelValues(kind, name, reason).Inc()
	}
}

// AToB counts bytes from the local side to the peer.
func (s StreamMeter) AToB(n int) {
	s.toPeer.Add(float64(n))
	s.counts.ToPeer.Add(int64(n))
	s.own.toPeer.Add(int64(n))
}

// BToA counts bytes from the peer to the local side.
func (s StreamMeter) BToA(n int) {
	s.fromPeer.Add(float64(n))
	s.counts.FromPeer.Add(int64(n))
	s.own.fromPeer.Add(int64(n))
}
