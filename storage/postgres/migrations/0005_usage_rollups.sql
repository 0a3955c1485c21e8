-- Schema version 5: usage rollups, as bbolt's schema 8. Usage records are
-- kept for the usage detail retention only; their sums per user, key,
-- model and outcome over each UTC hour (period 'h') and day ('d') are kept
-- for the long one. gw_settle_spend (and so gw_settle) adds each
-- settlement to its two rollups in the same call (no trigger), and the pruning job (under its advisory
-- lock) deletes old records and rollups in batches and groups old charge
-- entries of the ledger (see Store.PruneUsage).

CREATE TABLE gw_usage_rollups (
	period             "char" NOT NULL CHECK (period IN ('h', 'd')),
	start              timestamptz NOT NULL,
	user_id            bigint NOT NULL,
	key_id             bigint NOT NULL,
	model              text NOT NULL,
	outcome            text NOT NULL,
	requests           bigint NOT NULL,
	prompt_tokens      bigint NOT NULL,
	completion_tokens  bigint NOT NULL,
	total_tokens       bigint NOT NULL,
	cached_tokens      bigint NOT NULL,
	cache_write_tokens bigint NOT NULL,
	credits            bigint NOT NULL,
	PRIMARY KEY (period, start, user_id, key_id, model, outcome)
);
CREATE INDEX gw_usage_rollups_user ON gw_usage_rollups (user_id, period, start);

-- gw_usage_outcome classes a usage document as storage.UsageRecord.Outcome.
CREATE FUNCTION gw_usage_outcome(p_doc jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN coalesce((p_doc->>'status')::int, 0) >= 400 THEN 'error'
		WHEN coalesce((p_doc->>'estimated')::boolean, false) THEN 'estimated'
		ELSE 'success' END
$$;

-- The records already stored, summed.
INSERT INTO gw_usage_rollups
	SELECT p.period, date_trunc(CASE p.period WHEN 'h' THEN 'hour' ELSE 'day' END, u.time, 'UTC'),
		u.user_id, u.key_id, coalesce(u.doc->>'model', ''), gw_usage_outcome(u.doc), count(*),
		sum(coalesce((u.doc->>'prompt_tokens')::bigint, 0)), sum(coalesce((u.doc->>'completion_tokens')::bigint, 0)),
		sum(coalesce((u.doc->>'total_tokens')::bigint, 0)), sum(coalesce((u.doc->>'cached_tokens')::bigint, 0)),
		sum(coalesce((u.doc->>'cache_write_tokens')::bigint, 0)), sum(coalesce((u.doc->>'credits')::bigint, 0))
	FROM gw_usage u CROSS JOIN (VALUES ('h'::"char"), ('d'::"char")) p(period)
	GROUP BY 1, 2, 3, 4, 5, 6;

-- requests: how many settled requests a charge entry covers (grouped
-- entries cover several); 0 on the charge entries written before, one each.
ALTER TABLE gw_ledger ADD COLUMN requests bigint NOT NULL DEFAULT 0;

-- The ledger entries up to this id were grouped by the pruning job (all
-- older than the usage detail retention then); it goes on from there, so
-- each run reads only the entries that became old since the last.
CREATE TABLE gw_ledger_grouped (upto bigint NOT NULL);
INSERT INTO gw_ledger_grouped VALUES (0);

-- gw_settle_spend (which gw_settle calls) as in version 3, counting the
-- charge entry's one request and adding the settlement to its hour's and
-- its day's rollup.
CREATE OR REPLACE FUNCTION gw_settle_spend(p_hold bigint, p_cost bigint, p_now timestamptz, p_time timestamptz,
	p_day integer, p_month integer, p_tokens bigint, p_request_id text, p_usage jsonb,
	OUT charged bigint, OUT balance bigint, OUT status text,
	OUT key_tracked boolean, OUT key_window timestamptz, OUT key_before bigint, OUT key_after bigint, OUT key_limit bigint,
	OUT user_tracked boolean, OUT user_window timestamptz, OUT user_before bigint, OUT user_after bigint, OUT user_limit bigint)
	LANGUAGE plpgsql AS $$
DECLARE
	h gw_holds%ROWTYPE;
	v_key boolean := false;
	v_kw timestamptz;
	v_ku bigint;
	v_kr bigint;
	v_uw timestamptz;
	v_uu bigint;
	v_ur bigint;
	v_credits bigint;
	v_reserved bigint;
	v_open boolean;
BEGIN
	DELETE FROM gw_holds WHERE id = p_hold RETURNING * INTO h;
	IF NOT FOUND THEN
		status := 'settled';
		RETURN;
	END IF;
	v_open := h.state = 'open';
	IF h.key_id <> 0 THEN
		SELECT k.spend_window, k.spend_used, k.spend_reserved INTO v_kw, v_ku, v_kr
			FROM gw_keys k WHERE k.id = h.key_id FOR UPDATE;
		v_key := FOUND;
	END IF;
	SELECT a.credits, a.reserved, a.spend_window, a.spend_used, a.spend_reserved
		INTO v_credits, v_reserved, v_uw, v_uu, v_ur
		FROM gw_accounts a WHERE a.user_id = h.user_id FOR UPDATE;
	IF v_open THEN
		v_reserved := v_reserved - h.amount;
	END IF;
	key_tracked := v_key AND h.key_window IS NOT NULL AND h.key_window = v_kw;
	user_tracked := h.user_window IS NOT NULL AND h.user_window = v_uw;
	IF key_tracked AND v_open THEN
		v_kr := v_kr - h.amount;
	END IF;
	IF user_tracked AND v_open THEN
		v_ur := v_ur - h.amount;
	END IF;
	charged := GREATEST(0, LEAST(p_cost, v_credits - v_reserved));
	IF h.key_limit IS NOT NULL THEN
		charged := LEAST(charged, CASE WHEN key_tracked THEN GREATEST(h.key_limit - v_ku - v_kr, 0) ELSE h.amount END);
	END IF;
	IF h.user_limit IS NOT NULL THEN
		charged := LEAST(charged, CASE WHEN user_tracked THEN GREATEST(h.user_limit - v_uu - v_ur, 0) ELSE h.amount END);
	END IF;
	IF v_key THEN
		UPDATE gw_keys SET requests_used = requests_used + 1,
			inflight = inflight - CASE WHEN h.slot AND v_open THEN 1 ELSE 0 END,
			last_used_at = GREATEST(last_used_at, p_now),
			spend_used = spend_used + CASE WHEN key_tracked THEN charged ELSE 0 END,
			spend_reserved = v_kr
		WHERE id = h.key_id;
	END IF;
	balance := v_credits - charged;
	UPDATE gw_accounts SET credits = balance, reserved = v_reserved,
		holds = holds - CASE WHEN v_open THEN 1 ELSE 0 END,
		spend_used = spend_used + CASE WHEN user_tracked THEN charged ELSE 0 END,
		spend_reserved = v_ur
	WHERE user_id = h.user_id;
	IF charged > 0 THEN
		INSERT INTO gw_ledger (user_id, kind, amount, balance_after, key_id, request_id, requests, time)
			VALUES (h.user_id, 'charge', -charged, balance, h.key_id, p_request_id, 1, p_now);
	END IF;
	INSERT INTO gw_usage (user_id, key_id, time, doc)
		VALUES (h.user_id, h.key_id, p_time,
			p_usage || jsonb_build_object('user_id', h.user_id, 'key_id', h.key_id, 'credits', charged));
	INSERT INTO gw_usage_totals VALUES (h.user_id, 'd', p_day, 1, p_tokens), (h.user_id, 'm', p_month, 1, p_tokens)
		ON CONFLICT (user_id, kind, period) DO UPDATE
		SET requests = gw_usage_totals.requests + 1, tokens = gw_usage_totals.tokens + EXCLUDED.tokens;
	INSERT INTO gw_usage_rollups AS r
		SELECT p.period, date_trunc(p.unit, p_time, 'UTC'), h.user_id, h.key_id, coalesce(p_usage->>'model', ''),
			gw_usage_outcome(p_usage), 1,
			coalesce((p_usage->>'prompt_tokens')::bigint, 0), coalesce((p_usage->>'completion_tokens')::bigint, 0),
			coalesce((p_usage->>'total_tokens')::bigint, 0), coalesce((p_usage->>'cached_tokens')::bigint, 0),
			coalesce((p_usage->>'cache_write_tokens')::bigint, 0), charged
		FROM (VALUES ('h'::"char", 'hour'), ('d'::"char", 'day')) p(period, unit)
		ON CONFLICT (period, start, user_id, key_id, model, outcome) DO UPDATE SET
			requests = r.requests + 1,
			prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens,
			completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens,
			total_tokens = r.total_tokens + EXCLUDED.total_tokens,
			cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
			cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
			credits = r.credits + EXCLUDED.credits;
	key_limit := h.key_limit; user_limit := h.user_limit;
	key_window := v_kw; key_before := v_ku; key_after := v_ku + CASE WHEN key_tracked THEN charged ELSE 0 END;
	user_window := v_uw; user_before := v_uu; user_after := v_uu + CASE WHEN user_tracked THEN charged ELSE 0 END;
	status := 'ok';
END $$;
