package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Users

// Register creates a user, their primary key and the signup grant in one
// transaction.
func (s *Store) Register(ctx context.Context, u *storage.User, key *storage.APIKey, credits int64) error {
	if u == nil || storage.NormalizeEmail(u.Email) == "" || credits < 0 {
		return fmt.Errorf("storage: register needs a user with an email and non-negative credits: %w", storage.ErrInvalid)
	}
	if key != nil && len(key.Hash) == 0 {
		return fmt.Errorf("storage: key without hash: %w", storage.ErrInvalid)
	}
	now := s.now().UTC()
	nu := *u
	var nk storage.APIKey
	if key != nil {
		nk = *key
	}
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		if err := insertUser(ctx, tx, &nu, now); err != nil {
			return nil, err
		}
		changes := []storage.Change{{Kind: storage.ChangeUser, UserID: nu.ID}}
		if key != nil {
			nk.UserID = nu.ID
			if err := insertKey(ctx, tx, &nk, now); err != nil {
				return nil, err
			}
			changes = append(changes, storage.Change{Kind: storage.ChangeKey, UserID: nu.ID, KeyID: nk.ID})
		}
		if _, err := tx.Exec(ctx, `INSERT INTO gw_accounts (user_id, credits) VALUES ($1, $2)`, nu.ID, credits); err != nil {
			return nil, err
		}
		if credits > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO gw_ledger (user_id, kind, amount, balance_after, note, time)
				VALUES ($1, $2, $3, $3, 'signup', $4)`, nu.ID, storage.LedgerGrant, credits, now); err != nil {
				return nil, err
			}
		}
		return changes, nil
	})
	if err != nil {
		return err
	}
	*u = nu
	if key != nil {
		*key = nk
	}
	return nil
}

func insertUser(ctx context.Context, tx pgx.Tx, u *storage.User, now time.Time) error {
	u.CreatedAt, u.UpdatedAt = now, now
	if u.RegistrationDate.IsZero() {
		u.RegistrationDate = now
	}
	// The id comes from the sequence and goes into the document in the
	// same statement.
	if err := tx.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence('gw_users', 'id'))`).Scan(&u.ID); err != nil {
		return err
	}
	doc, err := json.Marshal(u)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO gw_users (id, email, doc) VALUES ($1, $2, $3)`, u.ID, storage.NormalizeEmail(u.Email), string(doc))
	if isDuplicate(err) {
		return fmt.Errorf("storage: email already registered: %w", storage.ErrDuplicate)
	}
	return err
}

func (s *Store) GetUser(ctx context.Context, id int64) (*storage.User, error) {
	return getDoc[storage.User](ctx, s, `SELECT doc::text FROM gw_users WHERE id = $1`, id)
}

func (s *Store) UserByEmail(ctx context.Context, email string) (*storage.User, error) {
	return getDoc[storage.User](ctx, s, `SELECT doc::text FROM gw_users WHERE email = $1`, storage.NormalizeEmail(email))
}

func (s *Store) UpdateUser(ctx context.Context, id int64, fn func(*storage.User) error) (*storage.User, error) {
	var u storage.User
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		if err := scanDoc(tx.QueryRow(ctx, `SELECT doc::text FROM gw_users WHERE id = $1 FOR UPDATE`, id), &u); err != nil {
			return nil, err
		}
		created := u.CreatedAt
		if err := fn(&u); err != nil {
			return nil, err
		}
		u.ID, u.CreatedAt, u.UpdatedAt = id, created, s.now().UTC()
		email := storage.NormalizeEmail(u.Email)
		if email == "" {
			return nil, fmt.Errorf("storage: user email cannot be empty: %w", storage.ErrInvalid)
		}
		doc, err := json.Marshal(&u)
		if err != nil {
			return nil, err
		}
		_, err = tx.Exec(ctx, `UPDATE gw_users SET email = $2, doc = $3 WHERE id = $1`, id, email, string(doc))
		if isDuplicate(err) {
			return nil, fmt.Errorf("storage: email already registered: %w", storage.ErrDuplicate)
		}
		return []storage.Change{{Kind: storage.ChangeUser, UserID: id}}, err
	})
	if err != nil {
		return nil, err
	}
	return &u, nil
}

// DeleteUser removes the user with their keys, subscriptions and limits
// (by cascade). Ledger, account, usage and audit history stay.
func (s *Store) DeleteUser(ctx context.Context, id int64) error {
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		keys, err := collectKeys(ctx, tx, `WHERE k.user_id = $1 FOR UPDATE`, id)
		if err != nil {
			return nil, err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM gw_users WHERE id = $1`, id)
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			return nil, storage.ErrNotFound
		}
		var old [][]byte
		for _, k := range keys {
			old = append(old, storage.AllHashes(k)...)
		}
		return []storage.Change{{Kind: storage.ChangeUser, UserID: id, OldHashes: old}}, nil
	})
}

func (s *Store) ListUsers(ctx context.Context, offset, limit int) ([]*storage.User, int, error) {
	var total int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM gw_users`).Scan(&total); err != nil {
		return nil, 0, mapErr(err)
	}
	lim := any(nil) // LIMIT NULL: no limit
	if limit > 0 {
		lim = limit
	}
	out, err := listDocs[storage.User](ctx, s, `SELECT doc::text FROM gw_users ORDER BY id OFFSET $1 LIMIT $2`, max(offset, 0), lim)
	return out, total, err
}

// Keys

// keyColumns are what readKey scans, from gw_keys aliased k.
const keyColumns = `k.doc::text, k.requests_used, k.last_used_at, k.spend_window, k.spend_used`

func readKey(row pgx.Row) (*storage.APIKey, error) {
	var doc string
	var used int64
	var last *time.Time
	var spend storage.Spend
	if err := row.Scan(&doc, &used, &last, &spend.Window, &spend.Used); err != nil {
		return nil, err
	}
	var k storage.APIKey
	if err := json.Unmarshal([]byte(doc), &k); err != nil {
		return nil, fmt.Errorf("storage: corrupt key record: %w", err)
	}
	k.RequestsUsed, k.LastUsedAt = used, nil
	k.Spend = storage.Spend{Window: windowTime(spend.Window), Used: spend.Used}
	if last != nil {
		t := last.UTC()
		k.LastUsedAt = &t
	}
	return &k, nil
}

// collectKeys reads the keys selected by where (on gw_keys k), by id.
func collectKeys(ctx context.Context, q querier, where string, args ...any) ([]*storage.APIKey, error) {
	rows, err := q.Query(ctx, `SELECT `+keyColumns+` FROM gw_keys k `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*storage.APIKey
	for rows.Next() {
		k, err := readKey(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// keyDoc is the key's JSON without its counters (they are columns).
func keyDoc(k *storage.APIKey) (string, error) {
	rest := *k
	rest.RequestsUsed, rest.LastUsedAt = 0, nil
	doc, err := json.Marshal(&rest)
	return string(doc), err
}

// indexHashes makes k found by the hashes it must be found by at now. A
// hash another key still holds gives ErrDuplicate; one whose grace ended
// is taken over.
func indexHashes(ctx context.Context, tx pgx.Tx, k *storage.APIKey, now time.Time) error {
	hashes := storage.IndexedHashes(k, now)
	if _, err := tx.Exec(ctx, `DELETE FROM gw_key_hashes WHERE key_id = $1 OR (hash = ANY($2) AND expires_at <= $3)`,
		k.ID, hashes, now); err != nil {
		return err
	}
	for _, h := range hashes {
		var expires *time.Time
		if string(h) != string(k.Hash) {
			expires = &k.PrevHashExpiresAt
		}
		_, err := tx.Exec(ctx, `INSERT INTO gw_key_hashes (hash, key_id, expires_at) VALUES ($1, $2, $3)`, h, k.ID, expires)
		if isDuplicate(err) {
			return fmt.Errorf("storage: key hash already indexed: %w", storage.ErrDuplicate)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func insertKey(ctx context.Context, tx pgx.Tx, k *storage.APIKey, now time.Time) error {
	if len(k.Hash) == 0 {
		return fmt.Errorf("storage: key without hash: %w", storage.ErrInvalid)
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gw_users WHERE id = $1)`, k.UserID).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("storage: key for unknown user %d: %w", k.UserID, storage.ErrNotFound)
	}
	if err := tx.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence('gw_keys', 'id'))`).Scan(&k.ID); err != nil {
		return err
	}
	k.CreatedAt, k.UpdatedAt = now, now
	doc, err := keyDoc(k)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO gw_keys (id, user_id, key_name, doc, requests_used, last_used_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		k.ID, k.UserID, k.KeyName, doc, k.RequestsUsed, k.LastUsedAt)
	if isDuplicate(err) {
		return fmt.Errorf("storage: key name %q already used: %w", k.KeyName, storage.ErrDuplicate)
	}
	if err != nil {
		return err
	}
	return indexHashes(ctx, tx, k, now)
}

func (s *Store) CreateKey(ctx context.Context, k *storage.APIKey) error {
	nk := *k
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		if err := insertKey(ctx, tx, &nk, s.now().UTC()); err != nil {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangeKey, UserID: nk.UserID, KeyID: nk.ID}}, nil
	})
	if err != nil {
		return err
	}
	*k = nk
	return nil
}

func (s *Store) GetKey(ctx context.Context, id int64) (*storage.APIKey, error) {
	return oneKey(collectKeys(ctx, s.pool, `WHERE k.id = $1`, id))
}

// KeyByHash finds a key by its hash, or by its previous hash while the
// rotation grace lasts.
func (s *Store) KeyByHash(ctx context.Context, hash []byte) (*storage.APIKey, error) {
	if len(hash) == 0 {
		return nil, storage.ErrNotFound
	}
	now := s.now()
	k, err := oneKey(collectKeys(ctx, s.pool,
		`JOIN gw_key_hashes h ON h.key_id = k.id WHERE h.hash = $1 AND (h.expires_at IS NULL OR h.expires_at > $2)`, hash, now))
	if err != nil {
		return nil, err
	}
	switch {
	case string(k.Hash) == string(hash):
	case string(k.PrevHash) == string(hash) && now.Before(k.PrevHashExpiresAt):
	default:
		return nil, storage.ErrNotFound
	}
	return k, nil
}

func oneKey(keys []*storage.APIKey, err error) (*storage.APIKey, error) {
	if err != nil {
		return nil, mapErr(err)
	}
	if len(keys) == 0 {
		return nil, storage.ErrNotFound
	}
	return keys[0], nil
}

func (s *Store) ListKeys(ctx context.Context, userID int64) ([]*storage.APIKey, error) {
	keys, err := collectKeys(ctx, s.pool, `WHERE k.user_id = $1 ORDER BY k.id DESC`, userID)
	return keys, mapErr(err)
}

func (s *Store) AllKeys(ctx context.Context) ([]*storage.APIKey, error) {
	keys, err := collectKeys(ctx, s.pool, `ORDER BY k.id`)
	return keys, mapErr(err)
}

// UpdateKey applies fn to the key under its row lock. A change of
// RequestsUsed by fn is added to the counter (settlements of other
// requests keep counting meanwhile).
func (s *Store) UpdateKey(ctx context.Context, id int64, fn func(*storage.APIKey) error) (*storage.APIKey, error) {
	var k *storage.APIKey
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		var err error
		if k, err = oneKey(collectKeys(ctx, tx, `WHERE k.id = $1 FOR UPDATE`, id)); err != nil {
			return nil, err
		}
		old := *k
		old.Hash, old.PrevHash = append([]byte(nil), k.Hash...), append([]byte(nil), k.PrevHash...)
		if err := fn(k); err != nil {
			return nil, err
		}
		now := s.now().UTC()
		k.ID, k.UserID, k.CreatedAt, k.UpdatedAt = id, old.UserID, old.CreatedAt, now
		if len(k.Hash) == 0 {
			return nil, fmt.Errorf("storage: key without hash: %w", storage.ErrInvalid)
		}
		doc, err := keyDoc(k)
		if err != nil {
			return nil, err
		}
		err = tx.QueryRow(ctx, `UPDATE gw_keys SET key_name = $2, doc = $3, requests_used = requests_used + $4
			WHERE id = $1 RETURNING requests_used`, id, k.KeyName, doc, k.RequestsUsed-old.RequestsUsed).Scan(&k.RequestsUsed)
		if isDuplicate(err) {
			return nil, fmt.Errorf("storage: key name %q already used: %w", k.KeyName, storage.ErrDuplicate)
		}
		if err != nil {
			return nil, err
		}
		if err := indexHashes(ctx, tx, k, now); err != nil {
			return nil, err
		}
		var gone [][]byte
		newSet := storage.IndexedHashes(k, now)
		for _, h := range storage.AllHashes(&old) {
			if !containsHash(newSet, h) {
				gone = append(gone, h)
			}
		}
		return []storage.Change{{Kind: storage.ChangeKey, UserID: k.UserID, KeyID: id, OldHashes: gone}}, nil
	})
	if err != nil {
		return nil, err
	}
	return k, nil
}

func containsHash(set [][]byte, h []byte) bool {
	for _, x := range set {
		if string(x) == string(h) {
			return true
		}
	}
	return false
}

func (s *Store) DeleteKey(ctx context.Context, id int64) error {
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		k, err := oneKey(collectKeys(ctx, tx, `WHERE k.id = $1 FOR UPDATE`, id))
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM gw_keys WHERE id = $1`, id); err != nil {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangeKey, UserID: k.UserID, KeyID: id, OldHashes: storage.AllHashes(k)}}, nil
	})
}

// Plans

func (s *Store) CreatePlan(ctx context.Context, p *storage.Plan) error {
	if p == nil || strings.TrimSpace(p.Name) == "" {
		return fmt.Errorf("storage: plan needs a name: %w", storage.ErrInvalid)
	}
	np := *p
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		if err := tx.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence('gw_plans', 'id'))`).Scan(&np.ID); err != nil {
			return nil, err
		}
		now := s.now().UTC()
		np.CreatedAt, np.UpdatedAt = now, now
		doc, err := json.Marshal(&np)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO gw_plans (id, doc) VALUES ($1, $2)`, np.ID, string(doc)); err != nil {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangePlan, PlanID: np.ID}}, nil
	})
	if err != nil {
		return err
	}
	*p = np
	return nil
}

func (s *Store) GetPlan(ctx context.Context, id int64) (*storage.Plan, error) {
	return getDoc[storage.Plan](ctx, s, `SELECT doc::text FROM gw_plans WHERE id = $1`, id)
}

func (s *Store) ListPlans(ctx context.Context) ([]*storage.Plan, error) {
	return listDocs[storage.Plan](ctx, s, `SELECT doc::text FROM gw_plans ORDER BY id`)
}

func (s *Store) UpdatePlan(ctx context.Context, id int64, fn func(*storage.Plan) error) (*storage.Plan, error) {
	var p storage.Plan
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		if err := scanDoc(tx.QueryRow(ctx, `SELECT doc::text FROM gw_plans WHERE id = $1 FOR UPDATE`, id), &p); err != nil {
			return nil, err
		}
		created := p.CreatedAt
		if err := fn(&p); err != nil {
			return nil, err
		}
		if strings.TrimSpace(p.Name) == "" {
			return nil, fmt.Errorf("storage: plan needs a name: %w", storage.ErrInvalid)
		}
		p.ID, p.CreatedAt, p.UpdatedAt = id, created, s.now().UTC()
		doc, err := json.Marshal(&p)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `UPDATE gw_plans SET doc = $2 WHERE id = $1`, id, string(doc)); err != nil {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangePlan, PlanID: id}}, nil
	})
	if err != nil {
		return nil, err
	}
	return &p, nil
}

func (s *Store) AssignPlan(ctx context.Context, userID, planID int64, start, end time.Time) (*storage.UserPlan, error) {
	if !end.After(start) {
		return nil, fmt.Errorf("storage: plan end must be after its start: %w", storage.ErrInvalid)
	}
	up := storage.UserPlan{UserID: userID, PlanID: planID, StartDate: start.UTC(), EndDate: end.UTC(), IsActive: true}
	err := s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		// The user's row lock orders concurrent assignments.
		var found int
		if err := tx.QueryRow(ctx, `SELECT 1 FROM gw_users WHERE id = $1 FOR UPDATE`, userID).Scan(&found); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, fmt.Errorf("storage: unknown user %d: %w", userID, storage.ErrNotFound)
			}
			return nil, err
		}
		var plan bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gw_plans WHERE id = $1)`, planID).Scan(&plan); err != nil {
			return nil, err
		}
		if !plan {
			return nil, fmt.Errorf("storage: unknown plan %d: %w", planID, storage.ErrNotFound)
		}
		if _, err := tx.Exec(ctx, `UPDATE gw_user_plans SET is_active = false WHERE user_id = $1 AND is_active`, userID); err != nil {
			return nil, err
		}
		if err := tx.QueryRow(ctx, `INSERT INTO gw_user_plans (user_id, plan_id, start_date, end_date, is_active)
			VALUES ($1, $2, $3, $4, true) RETURNING id`, userID, planID, up.StartDate, up.EndDate).Scan(&up.ID); err != nil {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangeLimits, UserID: userID, PlanID: planID}}, nil
	})
	if err != nil {
		return nil, err
	}
	return &up, nil
}

func (s *Store) ActiveUserPlan(ctx context.Context, userID int64) (*storage.UserPlan, error) {
	plans, err := s.userPlans(ctx, `WHERE user_id = $1 AND is_active ORDER BY id DESC LIMIT 1`, userID)
	if err != nil {
		return nil, err
	}
	if len(plans) == 0 {
		return nil, storage.ErrNotFound
	}
	return &plans[0], nil
}

// UserPlans returns every subscription row of a user, oldest first.
func (s *Store) UserPlans(ctx context.Context, userID int64) ([]storage.UserPlan, error) {
	return s.userPlans(ctx, `WHERE user_id = $1 ORDER BY id`, userID)
}

func (s *Store) userPlans(ctx context.Context, where string, args ...any) ([]storage.UserPlan, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, user_id, plan_id, start_date, end_date, is_active FROM gw_user_plans `+where, args...)
	if err != nil {
		return nil, mapErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storage.UserPlan, error) {
		var p storage.UserPlan
		err := r.Scan(&p.ID, &p.UserID, &p.PlanID, &p.StartDate, &p.EndDate, &p.IsActive)
		p.StartDate, p.EndDate = p.StartDate.UTC(), p.EndDate.UTC()
		return p, err
	})
	return out, mapErr(err)
}

// Limits

func (s *Store) SetUserLimits(ctx context.Context, userID int64, l storage.RateLimits) error {
	doc, err := json.Marshal(&l)
	if err != nil {
		return err
	}
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		tag, err := tx.Exec(ctx, `INSERT INTO gw_user_limits (user_id, doc) SELECT id, $2 FROM gw_users WHERE id = $1
			ON CONFLICT (user_id) DO UPDATE SET doc = EXCLUDED.doc`, userID, string(doc))
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			return nil, fmt.Errorf("storage: unknown user %d: %w", userID, storage.ErrNotFound)
		}
		return []storage.Change{{Kind: storage.ChangeLimits, UserID: userID}}, nil
	})
}

// SetUserBudget sets a user's budget (a nil Limit and the never period
// remove the row).
func (s *Store) SetUserBudget(ctx context.Context, userID int64, b storage.Budget) error {
	reset, err := storage.ParseBudgetReset(string(b.Reset))
	if err != nil || (b.Limit != nil && *b.Limit < 0) {
		return fmt.Errorf("storage: invalid budget: %w", storage.ErrInvalid)
	}
	return s.update(ctx, func(tx pgx.Tx) ([]storage.Change, error) {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM gw_users WHERE id = $1 FOR KEY SHARE)`, userID).Scan(&exists); err != nil {
			return nil, err
		}
		if !exists {
			return nil, fmt.Errorf("storage: unknown user %d: %w", userID, storage.ErrNotFound)
		}
		var err error
		if b.Limit == nil && reset == storage.ResetNever {
			_, err = tx.Exec(ctx, `DELETE FROM gw_user_budgets WHERE user_id = $1`, userID)
		} else {
			_, err = tx.Exec(ctx, `INSERT INTO gw_user_budgets (user_id, spend_limit, reset) VALUES ($1, $2, $3)
				ON CONFLICT (user_id) DO UPDATE SET spend_limit = EXCLUDED.spend_limit, reset = EXCLUDED.reset`,
				userID, b.Limit, string(reset))
		}
		if err != nil {
			return nil, err
		}
		return []storage.Change{{Kind: storage.ChangeLimits, UserID: userID}}, nil
	})
}

// UserBudget returns the user's budget and spend.
func (s *Store) UserBudget(ctx context.Context, userID int64) (storage.Budget, storage.Spend, error) {
	if s.closed.Load() {
		return storage.Budget{}, storage.Spend{}, storage.ErrClosed
	}
	var limit *int64
	var reset *string
	var sp storage.Spend
	err := s.pool.QueryRow(ctx, `SELECT b.spend_limit, b.reset, coalesce(a.spend_window, '0001-01-01 00:00:00+00'), coalesce(a.spend_used, 0)
		FROM gw_users u LEFT JOIN gw_user_budgets b ON b.user_id = u.id LEFT JOIN gw_accounts a ON a.user_id = u.id
		WHERE u.id = $1`, userID).Scan(&limit, &reset, &sp.Window, &sp.Used)
	if errors.Is(err, pgx.ErrNoRows) {
		return storage.Budget{}, storage.Spend{}, fmt.Errorf("storage: unknown user %d: %w", userID, storage.ErrNotFound)
	}
	if err != nil {
		return storage.Budget{}, storage.Spend{}, mapErr(err)
	}
	b := storage.Budget{Limit: limit, Reset: storage.ResetNever}
	if reset != nil {
		b.Reset = storage.BudgetReset(*reset)
	}
	sp.Window = windowTime(sp.Window)
	return b, sp, nil
}

func (s *Store) UserLimits(ctx context.Context, userID int64) (storage.RateLimits, error) {
	l, err := getDoc[storage.RateLimits](ctx, s, `SELECT doc::text FROM gw_user_limits WHERE user_id = $1`, userID)
	if err != nil {
		return storage.RateLimits{}, err
	}
	return *l, nil
}

// Helpers

// querier is what both the pool and a transaction offer.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// scanDoc decodes the one JSON document row holds (ErrNotFound if none).
func scanDoc(row pgx.Row, v any) error {
	var doc string
	if err := row.Scan(&doc); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return storage.ErrNotFound
		}
		return mapErr(err)
	}
	if err := json.Unmarshal([]byte(doc), v); err != nil {
		return fmt.Errorf("storage: corrupt record: %w", err)
	}
	return nil
}

func getDoc[T any](ctx context.Context, s *Store, sql string, args ...any) (*T, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	v := new(T)
	if err := scanDoc(s.pool.QueryRow(ctx, sql, args...), v); err != nil {
		return nil, err
	}
	return v, nil
}

func listDocs[T any](ctx context.Context, s *Store, sql string, args ...any) ([]*T, error) {
	if s.closed.Load() {
		return nil, storage.ErrClosed
	}
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, mapErr(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*T, error) {
		v := new(T)
		return v, scanDoc(r, v)
	})
	return out, mapErr(err)
}

func isDuplicate(err error) bool {
	return err != nil && errors.Is(mapErr(err), storage.ErrDuplicate)
}
