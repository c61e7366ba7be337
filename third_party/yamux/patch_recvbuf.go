package yamux

import (
	"io"
	"sync"
)

// Patched for tunnelworks (see PATCHED.md, patch 11): a stream's unread
// bytes live in fixed-size chunks taken from its session's pools, not in
// a bytes.Buffer. Upstream's buffer grows by reallocating (a fresh,
// zeroed array twice the size, and a copy of what is unread) or slides
// its unread bytes down, whenever a frame arrives while the reader is
// behind, which under bulk traffic is often (profile in PATCHED.md).
// Chunks are only appended and consumed: no reallocation, no slide, and
// a drained buffer gives its chunks back, so an idle stream holds none.

const (
	// largeChunk holds a bulk frame of our earlier peers (32 KiB; a 64
	// KiB frame of patch 15 spans two chunks, as larger frames span more).
	largeChunk = 32 << 10
	// smallChunk holds the rest of a frame of at most this many bytes,
	// so a stream with a few small messages unread does not hold 32 KiB.
	smallChunk = 4 << 10
)

// chunkPools are a session's spare receive chunks, by size.
type chunkPools struct {
	small, large sync.Pool
}

func newChunkPools() *chunkPools {
	p := &chunkPools{}
	p.small.New = func() any { b := make([]byte, 0, smallChunk); return &b }
	p.large.New = func() any { b := make([]byte, 0, largeChunk); return &b }
	return p
}

// get is an empty chunk for up to want bytes: a small one when want fits.
func (p *chunkPools) get(want int) *[]byte {
	if want <= smallChunk {
		return p.small.Get().(*[]byte)
	}
	return p.large.Get().(*[]byte)
}

func (p *chunkPools) put(c *[]byte) {
	*c = (*c)[:0]
	if cap(*c) == smallChunk {
		p.small.Put(c)
	} else {
		p.large.Put(c)
	}
}

// recvBuffer is a stream's received, unread bytes: chunks in order, each
// filled up to its length, the first read from off. The stream's
// recvLock guards it.
type recvBuffer struct {
	pools  *chunkPools
	chunks []*[]byte
	off    int
	n      int
}

func newRecvBuffer(pools *chunkPools) *recvBuffer {
	return &recvBuffer{pools: pools}
}

// Len is the number of unread bytes.
func (b *recvBuffer) Len() int { return b.n }

// Cap is the number of bytes the chunks held now could hold.
func (b *recvBuffer) Cap() int {
	c := 0
	for _, ch := range b.chunks {
		c += cap(*ch)
	}
	return c
}

// room is the tail chunk's free space, a new chunk's if it is full;
// want is how many bytes are still to come.
func (b *recvBuffer) room(want int) []byte {
	if len(b.chunks) > 0 {
		tail := *b.chunks[len(b.chunks)-1]
		if len(tail) < cap(tail) {
			return tail[len(tail):cap(tail)]
		}
	}
	b.chunks = append(b.chunks, b.pools.get(want))
	tail := *b.chunks[len(b.chunks)-1]
	return tail[:cap(tail)]
}

// filled records m bytes written into the tail chunk's room.
func (b *recvBuffer) filled(m int) {
	tail := b.chunks[len(b.chunks)-1]
	*tail = (*tail)[:len(*tail)+m]
	b.n += m
}

// Write appends p.
func (b *recvBuffer) Write(p []byte) {
	for len(p) > 0 {
		m := copy(b.room(len(p)), p)
		b.filled(m)
		p = p[m:]
	}
}

// readFrom appends exactly n bytes read from r; on an error the bytes
// read so far stay buffered and count.
func (b *recvBuffer) readFrom(r io.Reader, n int) (int, error) {
	done := 0
	for done < n {
		room := b.room(n - done)
		if len(room) > n-done {
			room = room[:n-done]
		}
		m, err := io.ReadFull(r, room)
		b.filled(m)
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// Read moves unread bytes into p, giving back each chunk it empties.
func (b *recvBuffer) Read(p []byte) int {
	n := 0
	for n < len(p) && len(b.chunks) > 0 {
		head := b.chunks[0]
		m := copy(p[n:], (*head)[b.off:])
		n += m
		b.off += m
		if b.off < len(*head) {
			break
		}
		b.pools.put(head)
		copy(b.chunks, b.chunks[1:])
		b.chunks[len(b.chunks)-1] = nil
		b.chunks = b.chunks[:len(b.chunks)-1]
		b.off = 0
	}
	b.n -= n
	return n
}

// ReceiveBuffered is how many bytes the session's streams have received
// and not yet had read: what the peer makes us hold now, within the
// streams' windows. It takes each stream's lock in turn; for metrics.
func (s *Session) ReceiveBuffered() int {
	s.streamLock.Lock()
	streams := make([]*Stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.streamLock.Unlock()
	n := 0
	for _, st := range streams {
		st.recvLock.Lock()
		if st.recvBuf != nil {
			n += st.recvBuf.Len()
		}
		st.recvLock.Unlock()
	}
	return n
}

// detach moves whole chunks holding up to about max unread bytes (at
// least one chunk) out of the buffer, appended to dst, with the offset of
// the first's unread bytes and how many bytes they hold; the caller gives
// them back with the pools' put once it has written them.
func (b *recvBuffer) detach(dst []*[]byte, max int) ([]*[]byte, int, int) {
	off, n, k := b.off, 0, 0
	for k < len(b.chunks) && (k == 0 || n+len(*b.chunks[k]) <= max) {
		n += len(*b.chunks[k])
		k++
	}
	n -= off
	dst = append(dst, b.chunks[:k]...)
	rest := copy(b.chunks, b.chunks[k:])
	for i := rest; i < len(b.chunks); i++ {
		b.chunks[i] = nil
	}
	b.chunks = b.chunks[:rest]
	b.off = 0
	b.n -= n
	return dst, off, n
}
