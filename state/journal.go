package state

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cinderport/cinderport/jobs"
)

var (
	bucketJobs = []byte("jobs")
	bucketMeta = []byte("meta")
)

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for another process's lock on the file
	// (default 5 s): a second worker on one data dir fails clearly.
	LockTimeout time.Duration
}

// Journal is the bbolt journal. It satisfies jobs.Journal.
type Journal struct {
	db *bolt.DB
}

var _ jobs.Journal = (*Journal)(nil)

// Open opens (or creates) the journal at path.
func Open(path string, opts Options) (*Journal, error) {
	if opts.LockTimeout == 0 {
		opts.LockTimeout = 5 * time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open journal %s: another process (a second worker on this data dir?) holds it", path)
		}
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketJobs, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise journal %s: %w", path, err)
	}
	return &Journal{db: db}, nil
}

// Close closes the journal.
func (j *Journal) Close() error { return j.db.Close() }

// A stored record is an 8-byte big-endian revision followed by JSON.
func decode(v []byte) (jobs.Record, error) {
	var rec jobs.Record
	if len(v) < 8 {
		return rec, errors.New("corrupt journal record")
	}
	if err := json.Unmarshal(v[8:], &rec); err != nil {
		return rec, fmt.Errorf("corrupt journal record: %w", err)
	}
	rec.Rev = binary.BigEndian.Uint64(v[:8])
	return rec, nil
}

// Load implements jobs.Journal.
func (j *Journal) Load(ctx context.Context, jobID string) (jobs.Record, error) {
	var rec jobs.Record
	err := j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketJobs).Get([]byte(jobID))
		if v == nil {
			return fmt.Errorf("journal record of job %s: %w", jobID, jobs.ErrNotFound)
		}
		var err error
		rec, err = decode(v)
		return err
	})
	return rec, err
}

// Save implements jobs.Journal: the write happens only if the stored
// revision still equals rec.Rev (0: no record yet).
func (j *Journal) Save(ctx context.Context, rec jobs.Record) (jobs.Record, error) {
	if rec.JobID == "" {
		return rec, errors.New("journal record without a job id")
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return rec, err
	}
	err = j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		var cur uint64
		if v := b.Get([]byte(rec.JobID)); v != nil {
			if len(v) < 8 {
				return errors.New("corrupt journal record")
			}
			cur = binary.BigEndian.Uint64(v[:8])
		}
		if cur != rec.Rev {
			return fmt.Errorf("journal record of job %s is at revision %d, not %d: %w", rec.JobID, cur, rec.Rev, jobs.ErrConflict)
		}
		v := make([]byte, 8, 8+len(body))
		binary.BigEndian.PutUint64(v, cur+1)
		return b.Put([]byte(rec.JobID), append(v, body...))
	})
	if err != nil {
		return rec, err
	}
	rec.Rev++
	return rec, nil
}

// Delete implements jobs.Journal.
func (j *Journal) Delete(ctx context.Context, jobID string) error {
	return j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketJobs).Delete([]byte(jobID)) })
}

// List implements jobs.Journal.
func (j *Journal) List(ctx context.Context) ([]jobs.Record, error) {
	var out []jobs.Record
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			rec, err := decode(v)
			if err != nil {
				return fmt.Errorf("job %s: %w", k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

// Prune removes finished records (with an outcome) last updated before
// olderThan ago, and returns how many it removed.
func (j *Journal) Prune(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	n := 0
	err := j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketJobs)
		var dead [][]byte
		err := b.ForEach(func(k, v []byte) error {
			rec, err := decode(v)
			if err == nil && rec.Outcome != "" && rec.Updated.Before(cutoff) {
				dead = append(dead, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(dead)
		return nil
	})
	return n, err
}

// Meta returns a host metadata value, or an error wrapping jobs.ErrNotFound.
func (j *Journal) Meta(ctx context.Context, key string) (string, error) {
	var val string
	err := j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("journal metadata %q: %w", key, jobs.ErrNotFound)
		}
		val = string(v)
		return nil
	})
	return val, err
}

// SetMeta stores a host metadata value.
func (j *Journal) SetMeta(ctx context.Context, key, value string) error {
	return j.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte(key), []byte(value)) })
}
