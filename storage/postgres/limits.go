package postgres

import (
	"context"
	"fmt"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Rate limits and plan quotas are counted in the database (migration 0006):
// Reserve with limits checks and counts them with the account row locked,
// in its one call, so that every node admits exactly what one would.

// limitValues is storage.LimitState (or the limits of a LimitRequest)
// flattened as the database functions take it: level by level, requests
// per window then tokens per window.
type limitValues [storage.NumLevels * 2 * storage.NumWindows]int64

func flatten(s *storage.LimitState) limitValues {
	var v limitValues
	for l := range s {
		o := l * 2 * storage.NumWindows
		copy(v[o:], s[l].Requests[:])
		copy(v[o+storage.NumWindows:], s[l].Tokens[:])
	}
	return v
}

// unflatten reads counts answered by the database (nil: none).
func unflatten(v []int64) *storage.LimitState {
	s := new(storage.LimitState)
	if len(v) != len(limitValues{}) {
		return s
	}
	for l := range s {
		o := l * 2 * storage.NumWindows
		copy(s[l].Requests[:], v[o:])
		copy(s[l].Tokens[:], v[o+storage.NumWindows:])
	}
	return s
}

// exceeded is the refusal of the limit at index breach (1-based, as the
// database answers it) of lim.
func exceeded(lim *storage.LimitRequest, breach int32, counts []int64) *storage.LimitExceeded {
	i := int(breach) - 1
	per := 2 * storage.NumWindows
	e := &storage.LimitExceeded{
		Level:  storage.LimitLevel(i / per),
		Window: i % per % storage.NumWindows,
		Tokens: i%per >= storage.NumWindows,
		State:  *unflatten(counts),
	}
	if e.Tokens {
		e.Limit = lim.Limits[e.Level].Tokens[e.Window]
	} else {
		e.Limit = lim.Limits[e.Level].Requests[e.Window]
	}
	return e
}

// limitArgs are the arguments the database functions take for lim: the
// time (unix seconds), its UTC day (yyyymmdd) and the limits.
func limitArgs(lim *storage.LimitRequest) (now int64, day int32, limits []int64) {
	v := flatten((*storage.LimitState)(&lim.Limits))
	return lim.Now.Unix(), dayNum(lim.Now), v[:]
}

// CountLimits counts a request that reserves nothing against the rate
// limits of its user and key in one call of gw_count_limits.
func (s *Store) CountLimits(ctx context.Context, userID, keyID int64, lim *storage.LimitRequest) (storage.LimitState, error) {
	if s.closed.Load() {
		return storage.LimitState{}, storage.ErrClosed
	}
	if lim == nil {
		return storage.LimitState{}, fmt.Errorf("storage: nil limits: %w", storage.ErrInvalid)
	}
	now, day, limits := limitArgs(lim)
	var counts []int64
	var breach int32
	var status string
	err := s.pool.QueryRow(ctx, `SELECT counts, breach, status FROM gw_count_limits($1, $2, $3, $4, $5)`,
		userID, keyID, now, day, limits).Scan(&counts, &breach, &status)
	if err != nil {
		return storage.LimitState{}, mapErr(err)
	}
	if status == "limited" {
		e := exceeded(lim, breach, counts)
		return e.State, e
	}
	return *unflatten(counts), nil
}

// Interface guard.
var _ storage.LimitCounter = (*Store)(nil)
