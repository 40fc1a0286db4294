package iscsi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cinderport/cinderport/jobs"
)

// lost handles the failure of connection c (read or write error, digest
// error, protocol error, unanswered ping, command timeout): it is closed,
// and unless the session is closing, a recovery goroutine logs in again
// and reissues the commands that were in flight.
func (s *Session) lost(c *conn, cause error) {
	s.mu.Lock()
	if s.conn != c {
		s.mu.Unlock()
		return
	}
	s.conn = nil
	closing := s.closing
	if !closing {
		s.wg.Add(1)
	}
	s.broadcast()
	s.mu.Unlock()
	c.nc.Close()
	c.out.close()
	if closing {
		return
	}
	s.log.Warn().Err(cause).Str("portal", c.path.Portal).Msg("iscsi connection lost: reinstating the session")
	go func() {
		defer s.wg.Done()
		s.recover(c, cause)
	}()
}

// recover waits until c's reader and writer are gone (nothing touches the
// tasks' buffers any more), logs in again and reissues c's commands in
// their original order. Logging in with the same ISID and a zero TSIH
// reinstates the session: the target ends the old one and its tasks first.
func (s *Session) recover(c *conn, cause error) {
	<-c.done
	s.mu.Lock()
	var pending []*task
	for itt, t := range s.tasks {
		if t.c == c {
			delete(s.tasks, itt)
			pending = append(pending, t)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(pending, func(a, b *task) int { return int(int32(a.cmdSN - b.cmdSN)) })
	live := pending[:0]
	for _, t := range pending {
		if t.issues >= maxIssues {
			t.fail(fmt.Errorf("iscsi: command abandoned after %d connection losses: %w", t.issues, cause))
			continue
		}
		live = append(live, t)
	}
	pending = live

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.ReconnectTimeout)
	defer cancel()
	delay := 100 * time.Millisecond
	for {
		nc, st, err := s.connect(ctx)
		if err == nil {
			s.mu.Lock()
			if s.closing {
				s.mu.Unlock()
				nc.nc.Close()
				failAll(pending, ErrClosed)
				return
			}
			s.reconnects++
			s.install(nc, st)
			s.mu.Unlock()
			s.event("reconnect")
			s.log.Info().Str("portal", nc.path.Portal).Int("reissued", len(pending)).Msg("iscsi session reinstated")
			for _, t := range pending {
				if err := s.issue(s.ctx, t); err != nil {
					t.fail(err)
				}
			}
			return
		}
		if s.ctx.Err() != nil {
			failAll(pending, ErrClosed)
			return
		}
		// A target that is briefly gone is retried like a refused
		// connection: Cinder's tgt helper re-creates the target of an
		// in-use volume when it extends it online.
		if ctx.Err() != nil || jobs.IsPermanent(err) && !errors.Is(err, ErrNoTarget) {
			err = fmt.Errorf("iscsi: connection lost (%v) and not re-established: %w", cause, err)
			s.mu.Lock()
			s.fatal = err
			s.broadcast()
			s.mu.Unlock()
			failAll(pending, err)
			s.event("lost")
			return
		}
		s.log.Debug().Err(err).Dur("retry_in", delay).Msg("iscsi reconnect failed")
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

func failAll(ts []*task, err error) {
	for _, t := range ts {
		t.fail(err)
	}
}

// errPingTimeout and errCommandTimeout make a silent connection a lost one.
var (
	errPingTimeout    = errors.New("iscsi: the target did not answer a NOP ping")
	errCommandTimeout = errors.New("iscsi: a command went unanswered too long")
)

// keepalive pings a silent connection (NOP-Out) and drops one whose ping or
// oldest command goes unanswered too long, so that a dead network becomes
// a reconnect instead of a hang.
func (s *Session) keepalive() {
	defer s.wg.Done()
	tick := time.NewTicker(max(s.cfg.NOPInterval/2, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		c := s.conn
		if c == nil || s.closing {
			s.mu.Unlock()
			continue
		}
		now := time.Now()
		var cause error
		switch {
		case !c.pingSent.IsZero() && now.Sub(c.pingSent) > s.cfg.NOPTimeout:
			cause = errPingTimeout
		case s.oldest(c, now) > s.cfg.CommandTimeout:
			cause = errCommandTimeout
		case c.pingSent.IsZero() && now.Sub(c.lastRecv) > s.cfg.NOPInterval:
			c.pingITT = s.newITT()
			c.pingSent = now
			var o outPDU
			header(&o.bhs, opNOPOut, true, flagFinal)
			encodeLUN(o.bhs[:], c.path.LUN)
			put32(o.bhs[:], 16, c.pingITT)
			put32(o.bhs[:], 20, reservedTag)
			put32(o.bhs[:], 24, s.cmdSN)
			put32(o.bhs[:], 28, s.expStatSN)
			c.out.push(o)
		}
		s.mu.Unlock()
		if cause != nil {
			s.lost(c, cause)
		}
	}
}

// oldest is the age of c's oldest command in flight. s.mu held.
func (s *Session) oldest(c *conn, now time.Time) time.Duration {
	var d time.Duration
	for _, t := range s.tasks {
		if t.c == c {
			d = max(d, now.Sub(t.sent))
		}
	}
	return d
}
