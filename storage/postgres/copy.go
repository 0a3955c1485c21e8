package postgres

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Source is a store to copy from: the Store, and the walks of a whole
// database (the embedded bbolt store has them).
type Source interface {
	storage.Store
	UserPlans(ctx context.Context, userID int64) ([]storage.UserPlan, error)
	AccountIDs(ctx context.Context) ([]int64, error)
}

// CopyCounts is what Copy moved.
type CopyCounts struct {
	Users, Keys, Plans, Subscriptions, Limits, Accounts, LedgerEntries, UsageRecords, Rollups, AuditEntries, Webhooks int
}

func (c CopyCounts) String() string {
	return fmt.Sprintf("%d users, %d keys, %d plans, %d subscriptions, %d user limits, %d accounts, %d ledger entries, %d usage records, %d usage rollups, %d audit entries, %d webhooks",
		c.Users, c.Keys, c.Plans, c.Subscriptions, c.Limits, c.Accounts, c.LedgerEntries, c.UsageRecords, c.Rollups, c.AuditEntries, c.Webhooks)
}

// ErrTargetNotEmpty is Copy's refusal of a database that already holds data.
var ErrTargetNotEmpty = errors.New("storage: the target database already holds gateway data; copy only into an empty one")

// Copy copies everything src holds into the empty database at dsn, ids,
// key hashes and encrypted keys as they are, in one transaction: a failure
// leaves the target empty, so the copy can be run again. keyring must be
// made from the secret src's keys were written with (checked on one key).
// After the commit it verifies the target: every balance equals its
// ledger and src's balance, and the audit chain verifies.
func Copy(ctx context.Context, src Source, dsn string, keyring *storage.Keyring) (CopyCounts, error) {
	var n CopyCounts
	if err := Migrate(ctx, dsn); err != nil {
		return n, err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return n, fmt.Errorf("storage: connecting to the target: %w", mapErr(err))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		c := copier{ctx: ctx, src: src, tx: tx, keyring: keyring, n: &n}
		return c.run()
	})
	if err != nil {
		return n, err
	}
	return n, verifyCopy(ctx, src, dsn)
}

type copier struct {
	ctx     context.Context
	src     Source
	tx      pgx.Tx
	keyring *storage.Keyring
	n       *CopyCounts
}

func (c *copier) exec(sql string, args ...any) error {
	_, err := c.tx.Exec(c.ctx, sql, args...)
	return err
}

func (c *copier) run() error {
	var rows int64
	if err := c.tx.QueryRow(c.ctx, `SELECT (SELECT count(*) FROM gw_users) + (SELECT count(*) FROM gw_plans) +
		(SELECT count(*) FROM gw_accounts) + (SELECT count(*) FROM gw_usage) + (SELECT count(*) FROM gw_audit)`).Scan(&rows); err != nil {
		return err
	}
	if rows > 0 {
		return ErrTargetNotEmpty
	}
	for _, step := range []func() error{c.users, c.keys, c.plans, c.accounts, c.usage, c.audit} {
		if err := step(); err != nil {
			return err
		}
	}
	// The sequences go on after every copied id, also those only the
	// history still names (deleted users and keys), so none is reused.
	for table, used := range map[string]string{
		"gw_users":      `SELECT id FROM gw_users UNION ALL SELECT user_id FROM gw_accounts UNION ALL SELECT user_id FROM gw_usage`,
		"gw_keys":       `SELECT id FROM gw_keys UNION ALL SELECT key_id FROM gw_usage UNION ALL SELECT key_id FROM gw_ledger`,
		"gw_plans":      `SELECT id FROM gw_plans UNION ALL SELECT plan_id FROM gw_user_plans`,
		"gw_user_plans": `SELECT id FROM gw_user_plans`,
		"gw_ledger":     `SELECT id FROM gw_ledger`,
		"gw_usage":      `SELECT id FROM gw_usage`,
		"gw_webhooks":   `SELECT id FROM gw_webhooks`,
	} {
		if err := c.exec(`SELECT setval(pg_get_serial_sequence('` + table + `', 'id'), coalesce(max(id), 0) + 1, false) FROM (` + used + `) AS t(id)`); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) users() error {
	users, _, err := c.src.ListUsers(c.ctx, 0, 0)
	if err != nil {
		return err
	}
	for _, u := range users {
		doc, err := json.Marshal(u)
		if err != nil {
			return err
		}
		if err := c.exec(`INSERT INTO gw_users (id, email, doc) VALUES ($1, $2, $3)`, u.ID, storage.NormalizeEmail(u.Email), string(doc)); err != nil {
			return fmt.Errorf("user %d: %w", u.ID, err)
		}
		plans, err := c.src.UserPlans(c.ctx, u.ID)
		if err != nil {
			return err
		}
		for _, p := range plans {
			if err := c.exec(`INSERT INTO gw_user_plans (id, user_id, plan_id, start_date, end_date, is_active) VALUES ($1, $2, $3, $4, $5, $6)`,
				p.ID, p.UserID, p.PlanID, p.StartDate, p.EndDate, p.IsActive); err != nil {
				return err
			}
			c.n.Subscriptions++
		}
		// Users' webhooks (their secrets stay encrypted with the same
		// server secret). The outbox is not copied: let pending alerts be
		// delivered before moving.
		hooks, err := c.src.ListWebhooks(c.ctx, u.ID)
		if err != nil {
			return err
		}
		for _, w := range hooks {
			doc, err := json.Marshal(w)
			if err != nil {
				return err
			}
			if err := c.exec(`INSERT INTO gw_webhooks (id, user_id, events, active, doc) VALUES ($1, $2, $3, $4, $5)`,
				w.ID, w.UserID, w.Events, w.IsActive, string(doc)); err != nil {
				return fmt.Errorf("webhook %d: %w", w.ID, err)
			}
			c.n.Webhooks++
		}
		switch l, err := c.src.UserLimits(c.ctx, u.ID); {
		case err == nil:
			doc, err := json.Marshal(&l)
			if err != nil {
				return err
			}
			if err := c.exec(`INSERT INTO gw_user_limits (user_id, doc) VALUES ($1, $2)`, u.ID, string(doc)); err != nil {
				return err
			}
			c.n.Limits++
		case !errors.Is(err, storage.ErrNotFound):
			return err
		}
		c.n.Users++
	}
	return nil
}

func (c *copier) keys() error {
	keys, err := c.src.AllKeys(c.ctx)
	if err != nil {
		return err
	}
	checked := false
	now := time.Now()
	for _, k := range keys {
		if !checked && k.Encrypted != "" {
			plain, err := c.keyring.Decrypt(k.Encrypted)
			if err != nil || !c.keyring.Equal(c.keyring.Hash(plain), k.Hash) {
				return errors.New("storage: the secret given is not the one the source's keys were written with (key hashes and encrypted keys are copied as they are, so the gateway must keep its secret)")
			}
			checked = true
		}
		doc, err := keyDoc(k)
		if err != nil {
			return err
		}
		if err := c.exec(`INSERT INTO gw_keys (id, user_id, key_name, doc, requests_used, last_used_at, spend_window, spend_used)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			k.ID, k.UserID, k.KeyName, doc, k.RequestsUsed, k.LastUsedAt, k.Spend.Window, k.Spend.Used); err != nil {
			return fmt.Errorf("key %d: %w", k.ID, err)
		}
		if err := indexHashes(c.ctx, c.tx, k, now); err != nil {
			return fmt.Errorf("key %d: %w", k.ID, err)
		}
		c.n.Keys++
	}
	return nil
}

func (c *copier) plans() error {
	plans, err := c.src.ListPlans(c.ctx)
	if err != nil {
		return err
	}
	for _, p := range plans {
		doc, err := json.Marshal(p)
		if err != nil {
			return err
		}
		if err := c.exec(`INSERT INTO gw_plans (id, doc) VALUES ($1, $2)`, p.ID, string(doc)); err != nil {
			return err
		}
		c.n.Plans++
	}
	return nil
}

func (c *copier) accounts() error {
	ids, err := c.src.AccountIDs(c.ctx)
	if err != nil {
		return err
	}
	for _, uid := range ids {
		bal, err := c.src.Balance(c.ctx, uid)
		if err != nil {
			return err
		}
		if err := c.exec(`INSERT INTO gw_accounts (user_id, credits) VALUES ($1, $2)`, uid, bal.Credits); err != nil {
			return err
		}
		// The user's budget and spend (users deleted since have neither).
		switch b, sp, err := c.src.UserBudget(c.ctx, uid); {
		case err == nil:
			if err := c.exec(`UPDATE gw_accounts SET spend_window = $2, spend_used = $3 WHERE user_id = $1`, uid, sp.Window, sp.Used); err != nil {
				return err
			}
			if b.Limit != nil || b.Reset != storage.ResetNever {
				if err := c.exec(`INSERT INTO gw_user_budgets (user_id, spend_limit, reset) VALUES ($1, $2, $3)`, uid, b.Limit, string(b.Reset)); err != nil {
					return err
				}
			}
		case !errors.Is(err, storage.ErrNotFound):
			return err
		}
		entries, err := c.src.Ledger(c.ctx, uid)
		if err != nil {
			return err
		}
		for _, e := range entries {
			var idem *string
			if e.IdempotencyKey != "" {
				idem = &e.IdempotencyKey
			}
			if err := c.exec(`INSERT INTO gw_ledger (id, user_id, kind, amount, balance_after, key_id, request_id, idempotency_key, note, time, requests)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
				e.ID, e.UserID, string(e.Kind), e.Amount, e.BalanceAfter, e.KeyID, e.RequestID, idem, e.Note, e.Time, e.Requests); err != nil {
				return fmt.Errorf("ledger entry %d of user %d: %w", e.ID, uid, err)
			}
			c.n.LedgerEntries++
		}
		c.n.Accounts++
	}
	return nil
}

func (c *copier) usage() error {
	recs, err := c.src.ListUsage(c.ctx, storage.UsageFilter{})
	if err != nil {
		return err
	}
	rows := make([][]any, 0, len(recs))
	for i := len(recs) - 1; i >= 0; i-- { // oldest first: ids follow time
		r := recs[i]
		doc, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		rows = append(rows, []any{r.UserID, r.KeyID, r.Time, string(doc)})
	}
	if _, err := c.tx.CopyFrom(c.ctx, pgx.Identifier{"gw_usage"}, []string{"user_id", "key_id", "time", "doc"}, pgx.CopyFromRows(rows)); err != nil {
		return err
	}
	c.n.UsageRecords = len(rows)
	return c.rollups()
}

// rollups copies the source's rollups (which outlive its records) and
// derives the day and month totals from the daily ones.
func (c *copier) rollups() error {
	for _, p := range []storage.RollupPeriod{storage.RollupHour, storage.RollupDay} {
		rs, err := c.src.UsageRollups(c.ctx, storage.RollupFilter{Period: p})
		if err != nil {
			return err
		}
		rows := make([][]any, 0, len(rs))
		for _, r := range rs {
			rows = append(rows, []any{rollupPeriodChar(p), r.Start, r.UserID, r.KeyID, r.Model, string(r.Outcome), r.Requests,
				r.PromptTokens, r.CompletionTokens, r.TotalTokens, r.CachedTokens, r.CacheWriteTokens, r.Credits})
		}
		if _, err := c.tx.CopyFrom(c.ctx, pgx.Identifier{"gw_usage_rollups"}, rollupColumns, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		c.n.Rollups += len(rows)
	}
	return c.exec(`INSERT INTO gw_usage_totals (user_id, kind, period, requests, tokens)
		SELECT user_id, 'd', to_char(start AT TIME ZONE 'UTC', 'YYYYMMDD')::integer, sum(requests), sum(total_tokens)
		FROM gw_usage_rollups WHERE period = 'd' GROUP BY 1, 3
		UNION ALL
		SELECT user_id, 'm', to_char(start AT TIME ZONE 'UTC', 'YYYYMM')::integer, sum(requests), sum(total_tokens)
		FROM gw_usage_rollups WHERE period = 'd' GROUP BY 1, 3`)
}

func (c *copier) audit() error {
	var buf bytes.Buffer
	if err := c.src.ExportAudit(c.ctx, &buf); err != nil {
		return err
	}
	sc := bufio.NewScanner(&buf)
	sc.Buffer(nil, 64<<20)
	var last storage.AuditEntry
	for sc.Scan() {
		line := sc.Text()
		var e storage.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			return fmt.Errorf("audit entry after %d does not decode: %w", last.ID, err)
		}
		// The entry's JSON as the source stored and hashed it.
		if err := c.exec(`INSERT INTO gw_audit (id, user_id, key_id, action, time, doc) VALUES ($1, $2, $3, $4, $5, $6)`,
			e.ID, e.UserID, e.KeyID, e.Action, e.Time, line); err != nil {
			return err
		}
		last = e
		c.n.AuditEntries++
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return c.exec(`UPDATE gw_audit_head SET last_id = $1, hash = $2`, last.ID, last.Hash)
}

// verifyCopy checks the committed target: its own ledger and audit checks,
// and every balance against the source's.
func verifyCopy(ctx context.Context, src Source, dsn string) error {
	dst, err := Open(ctx, dsn, Options{Node: "gatewayz-migrate"})
	if err != nil {
		return err
	}
	defer dst.Close()
	if err := dst.VerifyLedger(ctx); err != nil {
		return fmt.Errorf("verifying the copy: %w", err)
	}
	if _, err := dst.VerifyAudit(ctx); err != nil {
		return fmt.Errorf("verifying the copy's audit chain: %w", err)
	}
	ids, err := src.AccountIDs(ctx)
	if err != nil {
		return err
	}
	for _, uid := range ids {
		a, err := src.Balance(ctx, uid)
		if err != nil {
			return err
		}
		b, err := dst.Balance(ctx, uid)
		if err != nil {
			return err
		}
		if a.Credits != b.Credits {
			return fmt.Errorf("verifying the copy: user %d has %d credits in the source, %d in the copy", uid, a.Credits, b.Credits)
		}
	}
	return nil
}
