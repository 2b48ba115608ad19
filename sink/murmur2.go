package sink

import "hash"

// murmur2 is the 32-bit MurmurHash2 that Kafka's Java client (and franz-go,
// librdkafka's murmur2 partitioner) hash record keys with, as a hash.Hash32
// for sarama's custom partitioner. It buffers the key, since MurmurHash2
// mixes in the length first and cannot stream. Not safe for concurrent use;
// sarama builds one per topic partitioner.
type murmur2 struct {
	buf []byte
}

var _ hash.Hash32 = (*murmur2)(nil)

func newMurmur2() hash.Hash32 { return &murmur2{buf: make([]byte, 0, 64)} }

func (h *murmur2) Write(p []byte) (int, error) { h.buf = append(h.buf, p...); return len(p), nil }
func (h *murmur2) Sum(b []byte) []byte {
	s := h.Sum32()
	return append(b, byte(s>>24), byte(s>>16), byte(s>>8), byte(s))
}
func (h *murmur2) Reset()         { h.buf = h.buf[:0] }
func (h *murmur2) Size() int      { return 4 }
func (h *murmur2) BlockSize() int { return 4 }
func (h *murmur2) Sum32() uint32  { return murmur2Sum(h.buf) }

// murmur2Sum is Kafka's Utils.murmur2 (seed 0x9747b28c), little-endian
// 4-byte blocks.
func murmur2Sum(b []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for ; len(b) >= 4; b = b[4:] {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
