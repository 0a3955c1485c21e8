-- Schema version 9: fewer index entries per settlement.
--
-- A settlement writes a ledger entry (a charge, without an idempotency key)
-- and a usage record; each index on their tables is one more entry to
-- write (and, with full_page_writes, often one more page image in the
-- WAL). Two of them served no query a settlement's rows need:
--
--  1. The ledger's UNIQUE (user_id, idempotency_key) indexed every entry,
--     also the charges, whose key is null (nulls never conflict). It
--     becomes a partial unique index of the entries that have a key (the
--     top-ups, grants and adjustments added with one): gw_add_credits
--     looks a key up with idempotency_key = p_idem, which implies the
--     index's predicate, and nothing writes ON CONFLICT on it.
--  2. The usage records' primary key on id: no query looks a record up by
--     id. The list orders by (time, id) (gw_usage_time), the per-user and
--     per-key views use gw_usage_user and gw_usage_key, and the pruning
--     job deletes old records by ctid through gw_usage_time (the version
--     8 build deleted them by id; a node of that build still running
--     prunes with a scan of the table per batch until it is replaced).
--     The ids still come from the identity column, so they stay unique;
--     REPLICA IDENTITY FULL keeps the table's deletes publishable should
--     the database be replicated logically (it costs nothing otherwise).
--
-- The key and account rows (every settlement batch updates them) and the
-- totals and rollups (upserted with every batch) are updated in place on
-- their page when it has room (a HOT update: no new index entries, as no
-- indexed column changes). A fillfactor below 100 keeps room on the key
-- and account pages, which are few; it applies to pages filled from now
-- on. The totals and rollups keep the default: their rows are written
-- once an hour or day and then kept, so room left on every page would be
-- space lost for the whole retention.
--
-- Building the partial index reads the ledger once, inside this
-- migration's transaction: writes to the ledger (settlements, top-ups)
-- wait for it.

CREATE UNIQUE INDEX IF NOT EXISTS gw_ledger_idempotency ON gw_ledger (user_id, idempotency_key)
	WHERE idempotency_key IS NOT NULL;
ALTER TABLE gw_ledger DROP CONSTRAINT IF EXISTS gw_ledger_user_id_idempotency_key_key;

ALTER TABLE gw_usage DROP CONSTRAINT IF EXISTS gw_usage_pkey;
ALTER TABLE gw_usage REPLICA IDENTITY FULL;

ALTER TABLE gw_accounts SET (fillfactor = 70);
ALTER TABLE gw_keys SET (fillfactor = 70);
