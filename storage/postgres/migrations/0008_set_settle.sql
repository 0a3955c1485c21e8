-- Schema version 8: a batch's settlements, set-based.
--
-- A node settles its concurrent settlements in one transaction and one
-- statement (batch.go), but that statement called gw_settle_held once per
-- settlement, each running about ten statements (the hold, the key and
-- account rows, ledger, usage record, two totals, two rollups): that
-- per-statement work was most of the database's CPU per settlement.
-- gw_settle_batch settles the whole batch with one statement per table:
--
--  1. it locks the batch's key rows, then its account rows, each in id
--     order (the order of every reservation and of batch.go's other
--     batches, so the caller need not lock them first), and reads what a
--     settlement reads of them;
--  2. it deletes the batch's holds in one statement: for each hold id the
--     first call (in batch order) naming the hold's user and key, which is
--     the call that settles it when they run one by one (a repeat, or a
--     call naming another user's or key's hold, finds nothing: 'settled');
--  3. it computes each call's charge in batch order in memory, as
--     gw_settle_spend would with the key and account rows as the calls
--     before it left them: the balance beyond other holds, both spend
--     caps, the spend windows and the rate token windows shifted per hold
--     (clamped at zero, as gw_rate_shifted). There are no statements in
--     this loop, only arithmetic, so it also covers what a set formula
--     would have to leave to a per-call path (a balance running out or a
--     budget capping mid-batch, a clamped rate count, a key used by two
--     users);
--  4. in one statement (whose CTEs write tables none of the others
--     reads), it writes each key row and each account row once with the
--     result, all ledger entries in one INSERT (in batch order, so a
--     user's entries keep increasing ids and each balance_after is the
--     balance after it), all usage records in one INSERT, and the totals
--     and rollups each in one upsert of rows summed per conflict key
--     first (ON CONFLICT cannot touch a row twice in one statement), and
--     answers the calls' rows in batch order.
--
-- The rows' CHECK constraints are checked once per row at the end instead
-- of after each call; every checked column only decreases in a settlement
-- (credits, reserved, holds, held_tokens, inflight, spend_reserved), so the
-- end value is the lowest and a violation at the end is one the calls one
-- by one would have hit. A statement that fails fails the whole batch, and
-- batch.go then runs each call alone, as before.
--
-- Calls the loop does not model (a null argument, arrays of different
-- lengths, a user without an account row, rate arrays not of three
-- windows) settle through gw_settle_held one by one in batch order, with
-- the rows locked as above: that is decided before anything is written.
--
-- The function runs with generic plans (plan_cache_mode): the planner
-- cannot tell the arrays' sizes apart, and with custom plans it planned
-- the hold DELETE anew on every call (about a tenth of the function's
-- time).

-- gw_rate_shifted_at is gw_rate_shifted for one window (p_len seconds
-- long) of one row: tok with p_delta added when win is still the window
-- of p_at (null: none), never below zero.
CREATE FUNCTION gw_rate_shifted_at(win bigint, tok bigint, p_at bigint, p_len bigint, p_delta bigint) RETURNS bigint
	LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN p_at IS NOT NULL AND p_delta <> 0 AND win = p_at / p_len * p_len THEN GREATEST(tok + p_delta, 0) ELSE tok END
$$;

CREATE FUNCTION gw_settle_batch(p_holds bigint[], p_costs bigint[], p_nows timestamptz[], p_times timestamptz[],
	p_days integer[], p_months integer[], p_tokens bigint[], p_request_ids text[], p_usages jsonb[],
	p_users bigint[], p_keys bigint[])
	RETURNS TABLE (charged bigint, balance bigint, status text,
		key_tracked boolean, key_window timestamptz, key_before bigint, key_after bigint, key_limit bigint,
		user_tracked boolean, user_window timestamptz, user_before bigint, user_after bigint, user_limit bigint)
	LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
	n integer := coalesce(cardinality(p_holds), 0);
	v_plain boolean;
	v_users bigint;
	-- The batch's key rows (k_*) and account rows (a_*), in id order, as
	-- the settlements so far left them; rw/rt: the rate windows' starts
	-- and token counts, one array per window. k_n, a_n: settlements
	-- applied; k_slots: request slots ended; a_ended, a_tokens: open holds
	-- ended and their estimated tokens.
	k_id bigint[]; k_win timestamptz[]; k_used bigint[]; k_res bigint[]; k_last timestamptz[];
	k_rw1 bigint[]; k_rw2 bigint[]; k_rw3 bigint[]; k_rt1 bigint[]; k_rt2 bigint[]; k_rt3 bigint[];
	k_n bigint[]; k_slots bigint[];
	a_id bigint[]; a_credits bigint[]; a_reserved bigint[]; a_win timestamptz[]; a_used bigint[]; a_res bigint[];
	a_rw1 bigint[]; a_rw2 bigint[]; a_rw3 bigint[]; a_rt1 bigint[]; a_rt2 bigint[]; a_rt3 bigint[];
	a_n bigint[]; a_ended bigint[]; a_tokens bigint[];
	v_rate_ok boolean;
	-- Per call: the hold it deleted (h_found false: none), the index of
	-- its key row (null: no key row) and of its account row.
	h_found boolean[]; h_amount bigint[]; h_slot boolean[]; h_open boolean[]; h_kw timestamptz[]; h_kl bigint[];
	h_uw timestamptz[]; h_ul bigint[]; h_tokens bigint[]; h_at bigint[]; h_k integer[]; h_a integer[];
	-- Per call: the charge, the balance after it, and the key's and the
	-- user's spend before it (the rest of the answer follows from these).
	r_charged bigint[]; r_balance bigint[]; r_kb bigint[]; r_ub bigint[];
	v_i integer;
	v_k integer;
	v_a integer;
	v_c bigint;
	v_open boolean;
	v_kt boolean;
	v_ut boolean;
	v_at bigint;
	v_delta bigint;
	v_shift boolean;
BEGIN
	IF n = 0 THEN
		RETURN;
	END IF;
	v_plain := cardinality(p_costs) = n AND cardinality(p_nows) = n AND cardinality(p_times) = n
		AND cardinality(p_days) = n AND cardinality(p_months) = n AND cardinality(p_tokens) = n
		AND cardinality(p_request_ids) = n AND cardinality(p_usages) = n AND cardinality(p_users) = n
		AND cardinality(p_keys) = n
		AND array_position(p_holds, NULL) IS NULL AND array_position(p_costs, NULL) IS NULL
		AND array_position(p_nows, NULL) IS NULL AND array_position(p_times, NULL) IS NULL
		AND array_position(p_days, NULL) IS NULL AND array_position(p_months, NULL) IS NULL
		AND array_position(p_tokens, NULL) IS NULL AND array_position(p_request_ids, NULL) IS NULL
		AND array_position(p_usages, NULL) IS NULL AND array_position(p_users, NULL) IS NULL
		AND array_position(p_keys, NULL) IS NULL;
	v_plain := coalesce(v_plain, false); -- a null array
	-- 1. The key rows, then the account rows, locked in id order (the
	-- order of every reservation and batch: the caller need not lock them
	-- first), whichever way the calls go below. The aggregates of one
	-- statement read the rows in the same order, so the arrays line up.
	SELECT coalesce(array_agg(k.id), '{}'), array_agg(k.spend_window), array_agg(k.spend_used), array_agg(k.spend_reserved),
		array_agg(k.last_used_at), array_agg(k.rate_win[1]), array_agg(k.rate_win[2]), array_agg(k.rate_win[3]),
		array_agg(k.rate_tok[1]), array_agg(k.rate_tok[2]), array_agg(k.rate_tok[3]),
		coalesce(bool_and(array_dims(k.rate_win) = '[1:3]' AND array_dims(k.rate_tok) = '[1:3]'), true)
		INTO k_id, k_win, k_used, k_res, k_last, k_rw1, k_rw2, k_rw3, k_rt1, k_rt2, k_rt3, v_rate_ok
		FROM (SELECT g.id, g.spend_window, g.spend_used, g.spend_reserved, g.last_used_at, g.rate_win, g.rate_tok
			FROM gw_keys g WHERE g.id = ANY (p_keys) AND g.id <> 0 ORDER BY g.id FOR UPDATE) k;
	v_plain := v_plain AND v_rate_ok;
	SELECT coalesce(array_agg(c.user_id), '{}'), array_agg(c.credits), array_agg(c.reserved), array_agg(c.spend_window),
		array_agg(c.spend_used), array_agg(c.spend_reserved), array_agg(c.rate_win[1]), array_agg(c.rate_win[2]),
		array_agg(c.rate_win[3]), array_agg(c.rate_tok[1]), array_agg(c.rate_tok[2]), array_agg(c.rate_tok[3]),
		coalesce(bool_and(array_dims(c.rate_win) = '[1:3]' AND array_dims(c.rate_tok) = '[1:3]'), true),
		(SELECT count(DISTINCT u) FROM unnest(p_users) u)
		INTO a_id, a_credits, a_reserved, a_win, a_used, a_res, a_rw1, a_rw2, a_rw3, a_rt1, a_rt2, a_rt3, v_rate_ok, v_users
		FROM (SELECT g.user_id, g.credits, g.reserved, g.spend_window, g.spend_used, g.spend_reserved, g.rate_win, g.rate_tok
			FROM gw_accounts g WHERE g.user_id = ANY (p_users) ORDER BY g.user_id FOR UPDATE) c;
	v_plain := v_plain AND v_rate_ok AND cardinality(a_id) = v_users;
	IF NOT v_plain THEN
		-- What the loop below does not model: the calls one by one.
		FOR v_i IN 1..n LOOP
			RETURN QUERY SELECT s.charged, s.balance, s.status, s.key_tracked, s.key_window, s.key_before, s.key_after,
				s.key_limit, s.user_tracked, s.user_window, s.user_before, s.user_after, s.user_limit
				FROM gw_settle_held(p_holds[v_i], p_costs[v_i], p_nows[v_i], p_times[v_i], p_days[v_i], p_months[v_i],
					p_tokens[v_i], p_request_ids[v_i], p_usages[v_i], p_users[v_i], p_keys[v_i]) s;
		END LOOP;
		RETURN;
	END IF;

	-- 2. The holds, each deleted by the first call naming its user and key,
	-- with each call's key and account row index.
	WITH d AS (
		DELETE FROM gw_holds h
		USING (SELECT DISTINCT ON (b.hold, b.uid, b.kid) b.hold, b.uid, b.kid, b.i
			FROM unnest(p_holds, p_users, p_keys) WITH ORDINALITY b(hold, uid, kid, i)
			ORDER BY b.hold, b.uid, b.kid, b.i) x
		WHERE h.id = x.hold AND h.user_id = x.uid AND h.key_id = x.kid
		RETURNING x.i, h.amount, h.slot, h.state = 'open' AS is_open, h.key_window, h.key_limit, h.user_window,
			h.user_limit, h.tokens, h.counted_at)
	SELECT array_agg(d.i IS NOT NULL ORDER BY g.i), array_agg(d.amount ORDER BY g.i), array_agg(d.slot ORDER BY g.i),
		array_agg(d.is_open ORDER BY g.i), array_agg(d.key_window ORDER BY g.i), array_agg(d.key_limit ORDER BY g.i),
		array_agg(d.user_window ORDER BY g.i), array_agg(d.user_limit ORDER BY g.i), array_agg(d.tokens ORDER BY g.i),
		array_agg(d.counted_at ORDER BY g.i), array_agg(ki.i::integer ORDER BY g.i), array_agg(ai.i::integer ORDER BY g.i)
		INTO h_found, h_amount, h_slot, h_open, h_kw, h_kl, h_uw, h_ul, h_tokens, h_at, h_k, h_a
		FROM generate_series(1, n) g(i)
		LEFT JOIN d ON d.i = g.i
		LEFT JOIN unnest(k_id) WITH ORDINALITY ki(id, i) ON ki.id = p_keys[g.i]
		LEFT JOIN unnest(a_id) WITH ORDINALITY ai(id, i) ON ai.id = p_users[g.i];

	-- 3. Each call's charge, in batch order, as gw_settle_spend computes it.
	k_n := array_fill(0::bigint, ARRAY[cardinality(k_id)]);
	k_slots := k_n;
	a_n := array_fill(0::bigint, ARRAY[cardinality(a_id)]);
	a_ended := a_n;
	a_tokens := a_n;
	r_charged := array_fill(NULL::bigint, ARRAY[n]);
	r_balance := r_charged; r_kb := r_charged; r_ub := r_charged;
	FOR v_i IN 1..n LOOP
		CONTINUE WHEN NOT h_found[v_i];
		v_k := h_k[v_i];
		v_a := h_a[v_i];
		v_open := h_open[v_i];
		v_at := h_at[v_i];
		v_delta := p_tokens[v_i] - h_tokens[v_i];
		v_shift := v_at IS NOT NULL AND v_delta <> 0; -- a hold counted in the rate windows
		IF v_open THEN
			a_reserved[v_a] := a_reserved[v_a] - h_amount[v_i];
		END IF;
		v_kt := v_k IS NOT NULL AND h_kw[v_i] IS NOT NULL AND h_kw[v_i] = k_win[v_k];
		v_ut := h_uw[v_i] IS NOT NULL AND h_uw[v_i] = a_win[v_a];
		IF v_kt AND v_open THEN
			k_res[v_k] := k_res[v_k] - h_amount[v_i];
		END IF;
		IF v_ut AND v_open THEN
			a_res[v_a] := a_res[v_a] - h_amount[v_i];
		END IF;
		v_c := GREATEST(0, LEAST(p_costs[v_i], a_credits[v_a] - a_reserved[v_a]));
		IF h_kl[v_i] IS NOT NULL THEN
			v_c := LEAST(v_c, CASE WHEN v_kt THEN GREATEST(h_kl[v_i] - k_used[v_k] - k_res[v_k], 0) ELSE h_amount[v_i] END);
		END IF;
		IF h_ul[v_i] IS NOT NULL THEN
			v_c := LEAST(v_c, CASE WHEN v_ut THEN GREATEST(h_ul[v_i] - a_used[v_a] - a_res[v_a], 0) ELSE h_amount[v_i] END);
		END IF;
		r_charged[v_i] := v_c;
		IF v_k IS NOT NULL THEN
			r_kb[v_i] := k_used[v_k];
			IF v_kt THEN
				k_used[v_k] := k_used[v_k] + v_c;
			END IF;
			k_n[v_k] := k_n[v_k] + 1;
			IF h_slot[v_i] AND v_open THEN
				k_slots[v_k] := k_slots[v_k] + 1;
			END IF;
			k_last[v_k] := GREATEST(k_last[v_k], p_nows[v_i]);
			IF v_shift THEN
				k_rt1[v_k] := gw_rate_shifted_at(k_rw1[v_k], k_rt1[v_k], v_at, 60, v_delta);
				k_rt2[v_k] := gw_rate_shifted_at(k_rw2[v_k], k_rt2[v_k], v_at, 3600, v_delta);
				k_rt3[v_k] := gw_rate_shifted_at(k_rw3[v_k], k_rt3[v_k], v_at, 86400, v_delta);
			END IF;
		END IF;
		a_credits[v_a] := a_credits[v_a] - v_c;
		r_balance[v_i] := a_credits[v_a];
		r_ub[v_i] := a_used[v_a];
		IF v_ut THEN
			a_used[v_a] := a_used[v_a] + v_c;
		END IF;
		a_n[v_a] := a_n[v_a] + 1;
		IF v_open THEN
			a_ended[v_a] := a_ended[v_a] + 1;
			a_tokens[v_a] := a_tokens[v_a] + h_tokens[v_i];
		END IF;
		IF v_shift THEN
			a_rt1[v_a] := gw_rate_shifted_at(a_rw1[v_a], a_rt1[v_a], v_at, 60, v_delta);
			a_rt2[v_a] := gw_rate_shifted_at(a_rw2[v_a], a_rt2[v_a], v_at, 3600, v_delta);
			a_rt3[v_a] := gw_rate_shifted_at(a_rw3[v_a], a_rt3[v_a], v_at, 86400, v_delta);
		END IF;
	END LOOP;

	-- 4. Each touched row once, each table once, in one statement (each
	-- statement has its own start-up cost): the writes are its CTEs, on
	-- tables none of the others reads; it answers the calls' rows in batch
	-- order ('settled' with nothing else for a call that found no hold, as
	-- gw_settle_held).
	RETURN QUERY WITH
	keys AS (
		UPDATE gw_keys g SET requests_used = g.requests_used + x.n, inflight = g.inflight - x.slots, last_used_at = x.last,
			spend_used = x.used, spend_reserved = x.res, rate_tok = ARRAY[x.t1, x.t2, x.t3]
		FROM unnest(k_id, k_n, k_slots, k_last, k_used, k_res, k_rt1, k_rt2, k_rt3) x(id, n, slots, last, used, res, t1, t2, t3)
		WHERE g.id = x.id AND x.n > 0),
	accounts AS (
		UPDATE gw_accounts g SET credits = x.credits, reserved = x.reserved, holds = g.holds - x.ended,
			held_tokens = g.held_tokens - x.tokens, spend_used = x.used, spend_reserved = x.res, rate_tok = ARRAY[x.t1, x.t2, x.t3]
		FROM unnest(a_id, a_n, a_credits, a_reserved, a_ended, a_tokens, a_used, a_res, a_rt1, a_rt2, a_rt3)
			x(id, n, credits, reserved, ended, tokens, used, res, t1, t2, t3)
		WHERE g.user_id = x.id AND x.n > 0),
	answers AS (
		-- The spend windows do not move in a settlement: whether a hold
		-- is tracked in its key's and user's window is what it was when
		-- the loop charged it.
		SELECT x.*, p_users[x.i] AS uid, p_keys[x.i] AS kid, p_usages[x.i] AS usage,
			CASE WHEN x.found THEN k_win[x.k] END AS kw, CASE WHEN x.found THEN a_win[x.a] END AS uw,
			CASE WHEN x.found THEN x.k IS NOT NULL AND x.hkw IS NOT NULL AND x.hkw = k_win[x.k] END AS kt,
			CASE WHEN x.found THEN x.huw IS NOT NULL AND x.huw = a_win[x.a] END AS ut
		FROM unnest(h_found, r_charged, r_balance, r_kb, h_kl, r_ub, h_ul, h_k, h_a, h_kw, h_uw,
			p_request_ids, p_nows, p_times, p_days, p_months, p_tokens)
			WITH ORDINALITY x(found, charged, balance, kb, kl, ub, ul, k, a, hkw, huw,
				request_id, now, t, day, month, tokens, i)),
	calls AS (
		SELECT y.*, y.kb + CASE WHEN y.kt THEN y.charged ELSE 0 END AS ka,
			y.ub + CASE WHEN y.ut THEN y.charged ELSE 0 END AS ua
		FROM answers y),
	ledger AS (
		INSERT INTO gw_ledger (user_id, kind, amount, balance_after, key_id, request_id, requests, time)
		SELECT c.uid, 'charge', -c.charged, c.balance, c.kid, c.request_id, 1, c.now
		FROM calls c WHERE c.found AND c.charged > 0
		ORDER BY c.i),
	records AS (
		INSERT INTO gw_usage (user_id, key_id, time, doc)
		SELECT c.uid, c.kid, c.t, c.usage || jsonb_build_object('user_id', c.uid, 'key_id', c.kid, 'credits', c.charged)
		FROM calls c WHERE c.found
		ORDER BY c.i),
	totals AS (
		INSERT INTO gw_usage_totals AS t (user_id, kind, period, requests, tokens)
		SELECT c.uid, p.kind, CASE p.kind WHEN 'd' THEN c.day ELSE c.month END, count(*), sum(c.tokens)
		FROM calls c CROSS JOIN (VALUES ('d'::"char"), ('m'::"char")) p(kind)
		WHERE c.found
		GROUP BY 1, 2, 3
		ON CONFLICT (user_id, kind, period) DO UPDATE
		SET requests = t.requests + EXCLUDED.requests, tokens = t.tokens + EXCLUDED.tokens),
	rollups AS (
		INSERT INTO gw_usage_rollups AS r
		SELECT p.period, date_trunc(p.unit, c.t, 'UTC'), c.uid, c.kid, coalesce(c.usage->>'model', ''),
			gw_usage_outcome(c.usage), count(*),
			sum(coalesce((c.usage->>'prompt_tokens')::bigint, 0)), sum(coalesce((c.usage->>'completion_tokens')::bigint, 0)),
			sum(coalesce((c.usage->>'total_tokens')::bigint, 0)), sum(coalesce((c.usage->>'cached_tokens')::bigint, 0)),
			sum(coalesce((c.usage->>'cache_write_tokens')::bigint, 0)), sum(c.charged)
		FROM calls c CROSS JOIN (VALUES ('h'::"char", 'hour'), ('d'::"char", 'day')) p(period, unit)
		WHERE c.found
		GROUP BY 1, 2, 3, 4, 5, 6
		ON CONFLICT (period, start, user_id, key_id, model, outcome) DO UPDATE SET
			requests = r.requests + EXCLUDED.requests,
			prompt_tokens = r.prompt_tokens + EXCLUDED.prompt_tokens,
			completion_tokens = r.completion_tokens + EXCLUDED.completion_tokens,
			total_tokens = r.total_tokens + EXCLUDED.total_tokens,
			cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
			cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
			credits = r.credits + EXCLUDED.credits)
	SELECT c.charged, c.balance, CASE WHEN c.found THEN 'ok' ELSE 'settled' END,
		c.kt, c.kw, c.kb, c.ka, c.kl, c.ut, c.uw, c.ub, c.ua, c.ul
	FROM calls c
	ORDER BY c.i;
END $$;
