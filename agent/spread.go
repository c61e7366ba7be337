package agent

import (
	"errors"
	"sync"

	"github.com/tunnelworks/tunnel/mux"
	"github.com/tunnelworks/tunnel/resume"
)

// Where the client's heavy streams ride. A movable stream starts on lane
// 0 of its class and, once heavy, moves to another lane (moveHeavy): the
// light streams on lane 0 then never queue behind its bytes in one TCP
// connection, nor wait for a CPU that two connections' worth of bulk
// keeps busy (Go polls the network only when a P runs out of work:
// bench/README.md, "nineteenth part"). With all heavy streams on the
// other lanes, bulk_connections = 2 gives them one TLS connection, one
// core of crypto on each side.
//
// With bulk_spread = true, while the agent carries no light stream at
// all, nobody can wait behind the bulk, and heavy streams spread over
// every lane of their class, lane 0 too, as evenly as the lanes' counts
// allow. The first stream to open afterwards (every stream starts light)
// sends them off lane 0 again before it has waited long: its first
// messages may wait behind lane 0's bulk for as long as the moves take.
// Off by default: on the 2-CPU test machine spreading grew the transfer
// lane's TCP receive buffer (autotuned, never shrunk), and beside a
// lane with a larger buffer a ping was slower, the bulk faster
// (bench/README.md, "nineteenth" and "twentieth part").

// heavyStreams are the client's streams that turned heavy, with the
// lock that lets one balancing run at a time.
type heavyStreams struct {
	mu      sync.Mutex
	streams map[*resume.Stream]struct{}
	// balance is held while streams move to balance the lanes or leave
	// lane 0: two at once would move the same streams back and forth.
	balance sync.Mutex
}

func (h *heavyStreams) add(s *resume.Stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.streams == nil {
		h.streams = map[*resume.Stream]struct{}{}
	}
	h.streams[s] = struct{}{}
}

// forget drops s (its pipe ended); any other stream is ignored.
func (h *heavyStreams) forget(s tunnelStream) {
	rs, ok := s.(*resume.Stream)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.streams, rs)
}

// none says whether no stream is heavy (cheap: it runs at every open).
func (h *heavyStreams) none() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.streams) == 0
}

// list is the heavy streams that have not ended, pruning those that have.
func (h *heavyStreams) list() []*resume.Stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*resume.Stream, 0, len(h.streams))
	for s := range h.streams {
		if s.Ended() {
			delete(h.streams, s)
			continue
		}
		out = append(out, s)
	}
	return out
}

// onlyHeavy says whether every stream the agent carries now is heavy:
// its open pipes (forwards' and services', as /status counts them) are
// all heavy streams of ours.
func (c *Client) onlyHeavy() bool {
	return c.metrics.OpenStreams() <= int64(len(c.heavy.list()))
}

// lanesOf is a class's lanes as heavy streams load them: per lane, the
// heavy streams on it (-1 for a lane without a session up), its session
// and its lane key.
type lanesOf struct {
	load     []int
	sessions []*mux.Session
	keys     []string
}

func (c *Client) laneLoad(class string, heavy []*resume.Stream) *lanesOf {
	ks := c.keeperList()[class]
	l := &lanesOf{load: make([]int, len(ks)), sessions: make([]*mux.Session, len(ks)), keys: make([]string, len(ks))}
	for i, k := range ks {
		l.sessions[i], l.keys[i] = k.current.get(), k.key()
		if l.sessions[i] == nil || l.sessions[i].Closed() {
			l.load[i] = -1
		}
	}
	for _, s := range heavy {
		if cl, lane := splitLaneKey(s.Class()); cl == class && lane < len(l.load) && l.load[lane] >= 0 {
			l.load[lane]++
		}
	}
	return l
}

// least is the least loaded lane up from lane from on; -1 if none.
func (l *lanesOf) least(from int) int {
	to := -1
	for lane := from; lane < len(l.load); lane++ {
		if l.load[lane] >= 0 && (to < 0 || l.load[lane] < l.load[to]) {
			to = lane
		}
	}
	return to
}

// busiest is the most loaded lane up; -1 if none.
func (l *lanesOf) busiest() int {
	hi := -1
	for lane, n := range l.load {
		if n >= 0 && (hi < 0 || n > l.load[hi]) {
			hi = lane
		}
	}
	return hi
}

// balanceHeavy spreads class's heavy streams over all its lanes while
// nothing else rides the agent: a stream moves from the busiest lane to
// the least busy one until they differ by one at most. It stops at the
// first move that fails, or as soon as another stream opens.
func (c *Client) balanceHeavy(class string) {
	c.heavy.balance.Lock()
	defer c.heavy.balance.Unlock()
	for c.onlyHeavy() {
		heavy := c.heavy.list()
		l := c.laneLoad(class, heavy)
		hi, lo := l.busiest(), l.least(0)
		if hi < 0 || l.load[hi]-l.load[lo] <= 1 {
			return
		}
		if !c.moveOne(heavy, class, hi, l.sessions[lo], l.keys[lo]) {
			return
		}
	}
}

// moveOne moves one heavy stream of class from lane to sess (lane key
// key); false if none moved.
func (c *Client) moveOne(heavy []*resume.Stream, class string, lane int, sess *mux.Session, key string) bool {
	for _, s := range heavy {
		if cl, l := splitLaneKey(s.Class()); cl != class || l != lane {
			continue
		}
		if err := s.Move(sess, key); err == nil {
			return true
		}
	}
	return false
}

// lightArrived: a stream opened (it starts light). Heavy streams that
// share lane 0 because nothing else rode the agent leave it, all at once
// (one by one, the last left long after on a busy host), each to the
// least busy other lane; the lane-0 list is taken once a balancing in
// progress is done.
func (c *Client) lightArrived() {
	if c.heavy.none() {
		return
	}
	c.resume.Spawn(func() {
		c.heavy.balance.Lock()
		defer c.heavy.balance.Unlock()
		heavy := c.heavy.list()
		byClass := map[string]*lanesOf{}
		var moves sync.WaitGroup
		for _, s := range heavy {
			class, lane := splitLaneKey(s.Class())
			if lane != 0 {
				continue
			}
			l := byClass[class]
			if l == nil {
				l = c.laneLoad(class, heavy)
				byClass[class] = l
			}
			to := l.least(1)
			if to < 0 {
				continue // no other lane up: it stays
			}
			l.load[to]++
			sess, key := l.sessions[to], l.keys[to]
			moves.Go(func() {
				if err := s.Move(sess, key); err != nil && !errors.Is(err, resume.ErrNotMoved) {
					c.limited.Warn("move:"+class, "could not move a heavy stream off the first lane of its class for a new stream; it carries on where it was", "class", class, "lane", to, "error", err)
				}
			})
		}
		moves.Wait()
	})
}
