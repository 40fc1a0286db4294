package blockio

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/cinderport/cinderport/jobs"
)

// NewHash returns a hash for an os_hash_algo name (sha256, sha384, sha512).
func NewHash(algo string) (hash.Hash, error) {
	switch algo {
	case "sha256":
		return sha256.New(), nil
	case "sha384":
		return sha512.New384(), nil
	case "sha512":
		return sha512.New(), nil
	}
	return nil, jobs.Permanentf("unsupported hash algorithm %q", algo)
}

// imageHashes is the md5 (Glance's checksum) and os_hash pair computed over
// an image, resumable from serialized state.
type imageHashes struct {
	algo string
	md5  hash.Hash
	os   hash.Hash
}

func newImageHashes(algo string, resume *jobs.Checkpoint) (*imageHashes, error) {
	os, err := NewHash(algo)
	if err != nil {
		return nil, err
	}
	h := &imageHashes{algo: algo, md5: md5.New(), os: os}
	if resume != nil && resume.Offset > 0 {
		if err := unmarshalState(h.md5, resume.MD5State); err != nil {
			return nil, fmt.Errorf("restore md5 state at offset %d: %w", resume.Offset, err)
		}
		if err := unmarshalState(h.os, resume.HashState); err != nil {
			return nil, fmt.Errorf("restore %s state at offset %d: %w", algo, resume.Offset, err)
		}
	}
	return h, nil
}

func (h *imageHashes) state() (md5State, osState []byte, err error) {
	if md5State, err = h.md5.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return nil, nil, fmt.Errorf("save md5 state: %w", err)
	}
	if osState, err = h.os.(encoding.BinaryMarshaler).MarshalBinary(); err != nil {
		return nil, nil, fmt.Errorf("save %s state: %w", h.algo, err)
	}
	return md5State, osState, nil
}

func (h *imageHashes) digest(n int64) jobs.Digest {
	return jobs.Digest{
		Bytes:     n,
		MD5:       hex.EncodeToString(h.md5.Sum(nil)),
		HashAlgo:  h.algo,
		HashValue: hex.EncodeToString(h.os.Sum(nil)),
	}
}

func unmarshalState(h hash.Hash, state []byte) error {
	u, ok := h.(encoding.BinaryUnmarshaler)
	if !ok {
		return fmt.Errorf("hash %T cannot resume", h)
	}
	return u.UnmarshalBinary(state)
}

// ImageHasher computes md5 and an os_hash over a stream, the two on their
// own goroutines: each Write returns when both hashed it.
type ImageHasher struct {
	h       *imageHashes
	n       int64
	md5In   chan []byte
	osIn    chan []byte
	done    chan struct{}
	stopped bool
}

// NewImageHasher starts the two hashing goroutines; Digest stops them.
func NewImageHasher(algo string) (*ImageHasher, error) {
	h, err := newImageHashes(algo, nil)
	if err != nil {
		return nil, err
	}
	ih := &ImageHasher{h: h, md5In: make(chan []byte), osIn: make(chan []byte), done: make(chan struct{}, 2)}
	for _, s := range []struct {
		in chan []byte
		w  io.Writer
	}{{ih.md5In, h.md5}, {ih.osIn, h.os}} {
		go func() {
			for p := range s.in {
				s.w.Write(p)
				ih.done <- struct{}{}
			}
		}()
	}
	return ih, nil
}

// Write hashes p with both hashes in parallel.
func (ih *ImageHasher) Write(p []byte) (int, error) {
	ih.md5In <- p
	ih.osIn <- p
	<-ih.done
	<-ih.done
	ih.n += int64(len(p))
	return len(p), nil
}

// Digest stops the hasher and returns what it hashed.
func (ih *ImageHasher) Digest() jobs.Digest {
	if !ih.stopped {
		ih.stopped = true
		close(ih.md5In)
		close(ih.osIn)
	}
	return ih.h.digest(ih.n)
}
