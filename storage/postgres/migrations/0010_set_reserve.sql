-- Schema version 10: a batch's reservations, set-based.
--
-- A node reserves its concurrent requests in one transaction and one
-- statement (batch.go), but that statement called gw_reserve once per
-- reservation, each running about ten statements (the key row, the account
-- row, the rate windows, the plan limits, the amount, two updates, the hold
-- insert): the largest database cost per request left after the
-- settlements went set-based (version 8). gw_reserve_batch reserves the
-- whole batch with one statement per table, as gw_settle_batch settles:
--
--  1. it locks the batch's key rows, then its account rows, each in id
--     order (the order of every reservation and of batch.go's other
--     batches, so the caller need not lock them first), and reads what a
--     reservation reads of them; for the calls with plan limits, the
--     user's usage totals of the call's day and month (a reservation does
--     not change them);
--  2. it decides each call in batch order in memory, as gw_reserve would
--     with the key and account rows as the calls before it left them: a
--     deleted key, the key's request slots, the spend windows (rolled
--     when a call names a newer one) and caps, the rate windows of the key
--     and the user (rolled to the call's time, the request counted even
--     when refused unless counted before), the plan limits
--     (gw_limits_check's order and counts), the flexible amount
--     (gw_reserve_amount of what is available, the open holds and the
--     waiting requests), a missing account. There are no statements in
--     this loop, only arithmetic;
--  3. in one statement it writes each changed key row and account row once
--     with the result, all hold rows in one INSERT (in batch order, so the
--     holds get increasing ids in batch order, as one by one) and answers
--     the calls' rows in batch order.
--
-- The rows' CHECK constraints are checked once per row at the end instead
-- of after each call; with the amounts the loop allows (none negative)
-- every checked column only grows in a reservation or is set to zero (a
-- spend window rolled), so a violation at the end is one the calls one by
-- one would have hit. A statement that fails fails the whole batch, and
-- batch.go then runs each call alone, as before.
--
-- Calls the loop does not model (a null argument other than a spend
-- window or cap, a negative amount, slots or waiting count, arrays of
-- different lengths, limits that are not 24 values a call or hold a null,
-- rate arrays not of three windows) reserve through gw_reserve one by one
-- in batch order, with the rows locked as above: that is decided before
-- anything is written.

CREATE FUNCTION gw_reserve_batch(p_users bigint[], p_keys bigint[], p_credits bigint[], p_mins bigint[], p_waiting bigint[],
	p_maxes bigint[], p_key_windows timestamptz[], p_key_limits bigint[], p_user_windows timestamptz[], p_user_limits bigint[],
	p_nows bigint[], p_days integer[], p_tokens bigint[], p_counted boolean[], p_limited boolean[], p_limits bigint[],
	p_node bigint)
	RETURNS TABLE (hold_id bigint, held bigint, balance bigint, reserved_total bigint, open_holds bigint,
		status text, budget_used bigint, budget_reserved bigint, counts bigint[], breach integer)
	LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
	n integer := coalesce(cardinality(p_users), 0);
	v_plain boolean;
	v_rate_ok boolean;
	-- The batch's key rows (k_*) and account rows (a_*), in id order, as
	-- the reservations so far left them; *_rate: nine values a row, the
	-- rate windows' starts, request counts and token counts (rate_win,
	-- rate_req, rate_tok); *_touch: a row some call changed.
	k_id bigint[]; k_used bigint[]; k_infl bigint[]; k_sw timestamptz[]; k_su bigint[]; k_sr bigint[];
	k_rate bigint[]; k_touch boolean[];
	a_id bigint[]; a_credits bigint[]; a_res bigint[]; a_holds bigint[]; a_ht bigint[];
	a_sw timestamptz[]; a_su bigint[]; a_sr bigint[];
	a_rate bigint[]; a_touch boolean[];
	-- Per call: the index of its key row and of its account row (null:
	-- none), and the plan's usage totals of its day and month.
	c_k integer[]; c_a integer[];
	t_dreq bigint[]; t_dtok bigint[]; t_mreq bigint[]; t_mtok bigint[];
	-- Per call: the answer (counts 24 values a call, r_hasc: not null) and
	-- the hold row of an 'ok'.
	r_held bigint[]; r_bal bigint[]; r_res bigint[]; r_holds bigint[]; r_status text[]; r_bu bigint[]; r_br bigint[];
	r_counts bigint[]; r_hasc boolean[]; r_breach integer[];
	h_slot boolean[]; h_kw timestamptz[]; h_uw timestamptz[]; h_tok bigint[]; h_at bigint[];
	-- One call, named as in gw_reserve.
	v_i integer;
	v_k integer;
	v_a integer;
	v_limits bigint[];
	v_limited boolean;
	v_key boolean;
	v_slot boolean;
	v_status text;
	v_held bigint;
	v_balance bigint;
	v_reserved bigint;
	v_open bigint;
	v_bu bigint;
	v_br bigint;
	v_kw timestamptz;
	v_ku bigint;
	v_kr bigint;
	v_uw timestamptz;
	v_uu bigint;
	v_ur bigint;
	v_key_room bigint;
	v_user_room bigint;
	k_win bigint[];
	k_req bigint[];
	k_tok bigint[];
	u_win bigint[];
	u_req bigint[];
	u_tok bigint[];
	v_counts bigint[];
	v_breach integer;
	v_plan boolean;
	v_ko integer; -- the key's and the account's offsets in k_rate and a_rate
	v_ao integer;
	v_tokens bigint;
	v_n bigint;
BEGIN
	IF n = 0 THEN
		RETURN;
	END IF;
	v_plain := p_node IS NOT NULL
		AND cardinality(p_keys) = n AND cardinality(p_credits) = n AND cardinality(p_mins) = n
		AND cardinality(p_waiting) = n AND cardinality(p_maxes) = n AND cardinality(p_key_windows) = n
		AND cardinality(p_key_limits) = n AND cardinality(p_user_windows) = n AND cardinality(p_user_limits) = n
		AND cardinality(p_nows) = n AND cardinality(p_days) = n AND cardinality(p_tokens) = n
		AND cardinality(p_counted) = n AND cardinality(p_limited) = n AND cardinality(p_limits) = 24 * n
		AND array_position(p_users, NULL) IS NULL AND array_position(p_keys, NULL) IS NULL
		AND array_position(p_credits, NULL) IS NULL AND array_position(p_mins, NULL) IS NULL
		AND array_position(p_waiting, NULL) IS NULL AND array_position(p_maxes, NULL) IS NULL
		AND array_position(p_tokens, NULL) IS NULL AND array_position(p_counted, NULL) IS NULL
		AND array_position(p_limited, NULL) IS NULL AND array_position(p_limits, NULL) IS NULL
		AND 0 <= ALL (p_credits) AND 0 <= ALL (p_mins) AND 0 <= ALL (p_waiting) AND 0 <= ALL (p_maxes)
		AND NOT EXISTS (SELECT 1 FROM unnest(p_limited, p_nows, p_days) x(l, t, d) WHERE x.l AND (x.t IS NULL OR x.d IS NULL));
	v_plain := coalesce(v_plain, false); -- a null array
	-- 1. The key rows, then the account rows, locked in id order (the
	-- order of every reservation and batch: the caller need not lock them
	-- first), whichever way the calls go below. The aggregates of one
	-- statement read the rows in the same order, so the arrays line up.
	SELECT coalesce(array_agg(k.id), '{}'), array_agg(k.requests_used), array_agg(k.inflight), array_agg(k.spend_window),
		array_agg(k.spend_used), array_agg(k.spend_reserved),
		array_agg(CASE WHEN k.ok THEN k.rate_win || k.rate_req || k.rate_tok ELSE array_fill(0::bigint, ARRAY[9]) END),
		coalesce(bool_and(k.ok), true)
		INTO k_id, k_used, k_infl, k_sw, k_su, k_sr, k_rate, v_rate_ok
		FROM (SELECT g.id, g.requests_used, g.inflight, g.spend_window, g.spend_used, g.spend_reserved,
				g.rate_win, g.rate_req, g.rate_tok,
				coalesce(array_dims(g.rate_win) = '[1:3]' AND array_dims(g.rate_req) = '[1:3]'
					AND array_dims(g.rate_tok) = '[1:3]', false) AS ok
			FROM gw_keys g WHERE g.id = ANY (p_keys) AND g.id <> 0 ORDER BY g.id FOR UPDATE) k;
	v_plain := v_plain AND v_rate_ok;
	SELECT coalesce(array_agg(c.user_id), '{}'), array_agg(c.credits), array_agg(c.reserved), array_agg(c.holds),
		array_agg(c.held_tokens), array_agg(c.spend_window), array_agg(c.spend_used), array_agg(c.spend_reserved),
		array_agg(CASE WHEN c.ok THEN c.rate_win || c.rate_req || c.rate_tok ELSE array_fill(0::bigint, ARRAY[9]) END),
		coalesce(bool_and(c.ok), true)
		INTO a_id, a_credits, a_res, a_holds, a_ht, a_sw, a_su, a_sr, a_rate, v_rate_ok
		FROM (SELECT g.user_id, g.credits, g.reserved, g.holds, g.held_tokens, g.spend_window, g.spend_used, g.spend_reserved,
				g.rate_win, g.rate_req, g.rate_tok,
				coalesce(array_dims(g.rate_win) = '[1:3]' AND array_dims(g.rate_req) = '[1:3]'
					AND array_dims(g.rate_tok) = '[1:3]', false) AS ok
			FROM gw_accounts g WHERE g.user_id = ANY (p_users) ORDER BY g.user_id FOR UPDATE) c;
	v_plain := v_plain AND v_rate_ok;
	-- The rate values as one flat array (array_agg made one row of nine per
	-- row).
	k_rate := ARRAY(SELECT unnest(k_rate));
	a_rate := ARRAY(SELECT unnest(a_rate));
	IF NOT v_plain THEN
		-- What the loop below does not model: the calls one by one.
		FOR v_i IN 1..n LOOP
			RETURN QUERY SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status, r.budget_used,
				r.budget_reserved, r.counts, r.breach
				FROM gw_reserve(p_users[v_i], p_keys[v_i], p_credits[v_i], p_mins[v_i], p_waiting[v_i], p_maxes[v_i], p_node,
					p_key_windows[v_i], p_key_limits[v_i], p_user_windows[v_i], p_user_limits[v_i], p_nows[v_i], p_days[v_i],
					CASE WHEN p_limited[v_i] THEN p_limits[(v_i - 1) * 24 + 1 : v_i * 24] END, p_tokens[v_i], p_counted[v_i]) r;
		END LOOP;
		RETURN;
	END IF;

	-- Each call's key and account row index, and the plan's usage totals
	-- for the calls with plan limits (as gw_limits_check reads them).
	SELECT array_agg(ki.i::integer ORDER BY g.i), array_agg(ai.i::integer ORDER BY g.i),
		array_agg(t.dreq ORDER BY g.i), array_agg(t.dtok ORDER BY g.i), array_agg(t.mreq ORDER BY g.i),
		array_agg(t.mtok ORDER BY g.i)
		INTO c_k, c_a, t_dreq, t_dtok, t_mreq, t_mtok
		FROM generate_series(1, n) g(i)
		LEFT JOIN unnest(k_id) WITH ORDINALITY ki(id, i) ON ki.id = p_keys[g.i] AND p_keys[g.i] <> 0
		LEFT JOIN unnest(a_id) WITH ORDINALITY ai(id, i) ON ai.id = p_users[g.i]
		LEFT JOIN LATERAL (
			SELECT coalesce(sum(u.requests) FILTER (WHERE u.kind = 'd'), 0) AS dreq,
				coalesce(sum(u.tokens) FILTER (WHERE u.kind = 'd'), 0) AS dtok,
				coalesce(sum(u.requests) FILTER (WHERE u.kind = 'm'), 0) AS mreq,
				coalesce(sum(u.tokens) FILTER (WHERE u.kind = 'm'), 0) AS mtok
			FROM gw_usage_totals u
			WHERE p_limited[g.i] AND gw_limited(p_limits[(g.i - 1) * 24 + 1 : g.i * 24], 0) AND u.user_id = p_users[g.i]
				AND ((u.kind = 'd' AND u.period = p_days[g.i]) OR (u.kind = 'm' AND u.period = p_days[g.i] / 100))) t
			ON true;

	-- 2. Each call, in batch order, as gw_reserve decides it.
	k_touch := array_fill(false, ARRAY[cardinality(k_id)]);
	a_touch := array_fill(false, ARRAY[cardinality(a_id)]);
	r_held := array_fill(NULL::bigint, ARRAY[n]);
	r_bal := r_held; r_res := r_held; r_holds := r_held; r_bu := r_held; r_br := r_held; h_tok := r_held; h_at := r_held;
	r_status := array_fill(NULL::text, ARRAY[n]);
	r_breach := array_fill(NULL::integer, ARRAY[n]);
	r_hasc := array_fill(false, ARRAY[n]);
	h_slot := r_hasc;
	h_kw := array_fill(NULL::timestamptz, ARRAY[n]);
	h_uw := h_kw;
	r_counts := array_fill(0::bigint, ARRAY[24 * n]);
	FOR v_i IN 1..n LOOP
		v_k := c_k[v_i];
		v_a := c_a[v_i];
		v_limited := p_limited[v_i];
		v_limits := CASE WHEN v_limited THEN p_limits[(v_i - 1) * 24 + 1 : v_i * 24] END;
		v_key := v_k IS NOT NULL; -- a key deleted a moment ago: billed to the user without key counters
		v_slot := false;
		v_status := NULL;
		v_held := NULL;
		v_bu := NULL;
		v_br := NULL;
		v_counts := NULL;
		v_breach := NULL;
		v_kw := NULL; v_ku := NULL; v_kr := NULL;
		v_uw := NULL; v_uu := NULL; v_ur := NULL;
		v_key_room := 4611686018427387904; -- no limit
		v_user_room := 4611686018427387904;
		k_win := NULL; k_req := NULL; k_tok := NULL;
		u_win := NULL; u_req := NULL; u_tok := NULL;
		IF v_key THEN
			IF p_maxes[v_i] > 0 THEN
				IF k_used[v_k] + k_infl[v_k] < p_maxes[v_i] THEN
					v_slot := true;
				ELSE
					v_status := 'request_limit';
				END IF;
			END IF;
			v_kw := k_sw[v_k]; v_ku := k_su[v_k]; v_kr := k_sr[v_k];
			IF p_key_windows[v_i] > v_kw THEN
				v_kw := p_key_windows[v_i]; v_ku := 0; v_kr := 0;
			END IF;
			IF p_key_limits[v_i] IS NOT NULL THEN
				v_key_room := p_key_limits[v_i] - v_ku - v_kr;
			END IF;
		END IF;
		IF v_a IS NULL THEN
			r_status[v_i] := 'not_found';
			CONTINUE;
		END IF;
		v_balance := a_credits[v_a]; v_reserved := a_res[v_a]; v_open := a_holds[v_a];
		v_uw := a_sw[v_a]; v_uu := a_su[v_a]; v_ur := a_sr[v_a];
		IF p_user_windows[v_i] > v_uw THEN
			v_uw := p_user_windows[v_i]; v_uu := 0; v_ur := 0;
		END IF;
		IF p_user_limits[v_i] IS NOT NULL THEN
			v_user_room := p_user_limits[v_i] - v_uu - v_ur;
		END IF;
		IF v_limited THEN
			IF v_key AND gw_limited(v_limits, 2) THEN
				v_ko := (v_k - 1) * 9;
				k_win := k_rate[v_ko + 1 : v_ko + 3];
				k_req := gw_rate_kept(k_win, k_rate[v_ko + 4 : v_ko + 6], p_nows[v_i], 0);
				k_tok := gw_rate_kept(k_win, k_rate[v_ko + 7 : v_ko + 9], p_nows[v_i], 0);
				k_win := gw_rate_rolled(k_win, p_nows[v_i]);
			END IF;
			IF gw_limited(v_limits, 1) THEN
				v_ao := (v_a - 1) * 9;
				u_win := a_rate[v_ao + 1 : v_ao + 3];
				u_req := gw_rate_kept(u_win, a_rate[v_ao + 4 : v_ao + 6], p_nows[v_i], 0);
				u_tok := gw_rate_kept(u_win, a_rate[v_ao + 7 : v_ao + 9], p_nows[v_i], 0);
				u_win := gw_rate_rolled(u_win, p_nows[v_i]);
			END IF;
			-- gw_limits_check(p_user, p_day, v_limits, p_tokens, p_counted, true, the open holds and their
			-- tokens, u_req, u_tok, k_req, k_tok): the counts, each one expression.
			v_plan := gw_limited(v_limits, 0);
			v_counts := ARRAY[0, 0,
				CASE WHEN v_plan THEN t_dreq[v_i] + v_open ELSE 0 END, CASE WHEN v_plan THEN t_mreq[v_i] + v_open ELSE 0 END, 0, 0,
				CASE WHEN v_plan THEN t_dtok[v_i] + a_ht[v_a] ELSE 0 END, CASE WHEN v_plan THEN t_mtok[v_i] + a_ht[v_a] ELSE 0 END,
				coalesce(u_req[1], 0), coalesce(u_req[2], 0), coalesce(u_req[3], 0), 0,
				coalesce(u_tok[1], 0), coalesce(u_tok[2], 0), coalesce(u_tok[3], 0), 0,
				coalesce(k_req[1], 0), coalesce(k_req[2], 0), coalesce(k_req[3], 0), 0,
				coalesce(k_tok[1], 0), coalesce(k_tok[2], 0), coalesce(k_tok[3], 0), 0]::bigint[];
			-- The first limit crossed: plan (day, month), user, then key (minute, hour,
			-- day), requests then tokens in each window, as gw_limits_check's loop.
			v_breach := CASE
				WHEN v_limits[3] > 0 AND v_counts[3] + 1 > v_limits[3] THEN 3
				WHEN v_limits[7] > 0 AND v_counts[7] + p_tokens[v_i] > v_limits[7] THEN 7
				WHEN v_limits[4] > 0 AND v_counts[4] + 1 > v_limits[4] THEN 4
				WHEN v_limits[8] > 0 AND v_counts[8] + p_tokens[v_i] > v_limits[8] THEN 8
				WHEN u_req IS NOT NULL AND NOT p_counted[v_i] AND v_limits[9] > 0 AND v_counts[9] + 1 > v_limits[9] THEN 9
				WHEN u_req IS NOT NULL AND v_limits[13] > 0 AND v_counts[13] + p_tokens[v_i] > v_limits[13] THEN 13
				WHEN u_req IS NOT NULL AND NOT p_counted[v_i] AND v_limits[10] > 0 AND v_counts[10] + 1 > v_limits[10] THEN 10
				WHEN u_req IS NOT NULL AND v_limits[14] > 0 AND v_counts[14] + p_tokens[v_i] > v_limits[14] THEN 14
				WHEN u_req IS NOT NULL AND NOT p_counted[v_i] AND v_limits[11] > 0 AND v_counts[11] + 1 > v_limits[11] THEN 11
				WHEN u_req IS NOT NULL AND v_limits[15] > 0 AND v_counts[15] + p_tokens[v_i] > v_limits[15] THEN 15
				WHEN k_req IS NOT NULL AND NOT p_counted[v_i] AND v_limits[17] > 0 AND v_counts[17] + 1 > v_limits[17] THEN 17
				WHEN k_req IS NOT NULL AND v_limits[21] > 0 AND v_counts[21] + p_tokens[v_i] > v_limits[21] THEN 21
				WHEN k_req IS NOT NULL AND NOT p_counted[v_i] AND v_limits[18] > 0 AND v_counts[18] + 1 > v_limits[18] THEN 18
				WHEN k_req IS NOT NULL AND v_limits[22] > 0 AND v_counts[22] + p_tokens[v_i] > v_limits[22] THEN 22
				WHEN k_req IS NOT NULL AND NOT p_counted[v_i] AND v_limits[19] > 0 AND v_counts[19] + 1 > v_limits[19] THEN 19
				WHEN k_req IS NOT NULL AND v_limits[23] > 0 AND v_counts[23] + p_tokens[v_i] > v_limits[23] THEN 23
				ELSE 0 END;
			IF v_breach > 0 THEN
				v_status := 'limited';
			END IF;
		END IF;
		IF v_status IS NULL THEN
			v_held := gw_reserve_amount(LEAST(v_balance - v_reserved, v_key_room, v_user_room), v_open, p_waiting[v_i],
				p_mins[v_i], p_credits[v_i]);
			IF v_key_room < v_held THEN
				v_status := 'key_budget'; v_bu := v_ku; v_br := v_kr;
			ELSIF v_user_room < v_held THEN
				v_status := 'user_budget'; v_bu := v_uu; v_br := v_ur;
			ELSIF v_balance - v_reserved < v_held THEN
				v_status := 'insufficient';
			END IF;
		END IF;
		IF v_status IS NULL OR (v_limited AND NOT p_counted[v_i] AND v_status <> 'limited') THEN
			-- Count: the request (unless counted before) and, when it
			-- holds, its tokens, in the rate windows of the limited levels.
			v_n := CASE WHEN p_counted[v_i] THEN 0 ELSE 1 END;
			IF v_status IS NULL AND v_limited THEN
				v_tokens := GREATEST(p_tokens[v_i], 0);
			ELSE
				v_tokens := 0;
			END IF;
			IF k_req IS NOT NULL THEN
				k_req := gw_rate_kept(k_win, k_req, p_nows[v_i], v_n);
				k_tok := gw_rate_kept(k_win, k_tok, p_nows[v_i], v_tokens);
				v_counts[17:19] := k_req;
				v_counts[21:23] := k_tok;
				k_rate[v_ko + 1 : v_ko + 9] := k_win || k_req || k_tok;
				k_touch[v_k] := true;
			END IF;
			IF u_req IS NOT NULL THEN
				u_req := gw_rate_kept(u_win, u_req, p_nows[v_i], v_n);
				u_tok := gw_rate_kept(u_win, u_tok, p_nows[v_i], v_tokens);
				v_counts[9:11] := u_req;
				v_counts[13:15] := u_tok;
				a_rate[v_ao + 1 : v_ao + 9] := u_win || u_req || u_tok;
				a_touch[v_a] := true;
			END IF;
			IF v_status IS NULL THEN
				IF v_limited AND gw_limited(v_limits, 0) THEN
					v_counts[3] := v_counts[3] + 1;
					v_counts[4] := v_counts[4] + 1;
					v_counts[7] := v_counts[7] + v_tokens;
					v_counts[8] := v_counts[8] + v_tokens;
				END IF;
				IF v_key THEN
					IF v_slot THEN
						k_infl[v_k] := k_infl[v_k] + 1;
					END IF;
					k_sw[v_k] := v_kw; k_su[v_k] := v_ku; k_sr[v_k] := v_kr + v_held;
					k_touch[v_k] := true;
				END IF;
				a_res[v_a] := a_res[v_a] + v_held;
				a_holds[v_a] := a_holds[v_a] + 1;
				a_ht[v_a] := a_ht[v_a] + v_tokens;
				a_sw[v_a] := v_uw; a_su[v_a] := v_uu; a_sr[v_a] := v_ur + v_held;
				a_touch[v_a] := true;
				v_reserved := v_reserved + v_held;
				v_open := v_open + 1;
				h_slot[v_i] := v_slot;
				h_kw[v_i] := CASE WHEN v_key THEN v_kw END;
				h_uw[v_i] := v_uw;
				h_tok[v_i] := v_tokens;
				h_at[v_i] := CASE WHEN v_limited THEN p_nows[v_i] END;
				v_status := 'ok';
			END IF;
		END IF;
		r_held[v_i] := v_held;
		r_bal[v_i] := v_balance;
		r_res[v_i] := v_reserved;
		r_holds[v_i] := v_open;
		r_status[v_i] := v_status;
		r_bu[v_i] := v_bu;
		r_br[v_i] := v_br;
		r_breach[v_i] := v_breach;
		IF v_counts IS NOT NULL THEN
			r_hasc[v_i] := true;
			r_counts[(v_i - 1) * 24 + 1 : v_i * 24] := v_counts;
		END IF;
	END LOOP;

	-- 3. Each changed row once, each table once, in one statement: the
	-- writes are its CTEs, on tables none of the others reads. The holds
	-- are inserted in batch order, so their ids increase in it: the n-th
	-- smallest id is the n-th 'ok' call's.
	RETURN QUERY WITH
	keys AS (
		UPDATE gw_keys g SET inflight = x.infl, spend_window = x.sw, spend_used = x.su, spend_reserved = x.sr,
			rate_win = k_rate[x.i * 9 - 8 : x.i * 9 - 6], rate_req = k_rate[x.i * 9 - 5 : x.i * 9 - 3],
			rate_tok = k_rate[x.i * 9 - 2 : x.i * 9]
		FROM unnest(k_id, k_touch, k_infl, k_sw, k_su, k_sr) WITH ORDINALITY x(id, touch, infl, sw, su, sr, i)
		WHERE g.id = x.id AND x.touch),
	accounts AS (
		UPDATE gw_accounts g SET reserved = x.res, holds = x.holds, held_tokens = x.ht,
			spend_window = x.sw, spend_used = x.su, spend_reserved = x.sr,
			rate_win = a_rate[x.i * 9 - 8 : x.i * 9 - 6], rate_req = a_rate[x.i * 9 - 5 : x.i * 9 - 3],
			rate_tok = a_rate[x.i * 9 - 2 : x.i * 9]
		FROM unnest(a_id, a_touch, a_res, a_holds, a_ht, a_sw, a_su, a_sr) WITH ORDINALITY x(id, touch, res, holds, ht, sw, su, sr, i)
		WHERE g.user_id = x.id AND x.touch),
	calls AS (
		SELECT x.*, CASE WHEN x.status = 'ok' THEN count(*) FILTER (WHERE x.status = 'ok') OVER (ORDER BY x.i) END AS rn
		FROM unnest(p_users, p_keys, r_held, h_slot, h_kw, p_key_limits, h_uw, p_user_limits, h_tok, h_at, r_status)
			WITH ORDINALITY x(uid, kid, held, slot, kw, kl, uw, ul, tokens, at, status, i)),
	ins AS (
		INSERT INTO gw_holds (user_id, key_id, amount, slot, node_id, key_window, key_limit, user_window, user_limit,
			tokens, counted_at)
		SELECT c.uid, c.kid, c.held, c.slot, p_node, c.kw, c.kl, c.uw, c.ul, c.tokens, c.at
		FROM calls c WHERE c.status = 'ok'
		ORDER BY c.i
		RETURNING id),
	ids AS (
		SELECT s.id, row_number() OVER (ORDER BY s.id) AS rn FROM ins s)
	SELECT ids.id, r.held, r.bal, r.res, r.holds, r.status, r.bu, r.br,
		CASE WHEN r.hasc THEN r_counts[(r.i - 1) * 24 + 1 : r.i * 24] END, r.breach
	FROM unnest(r_held, r_bal, r_res, r_holds, r_status, r_bu, r_br, r_hasc, r_breach)
		WITH ORDINALITY r(held, bal, res, holds, status, bu, br, hasc, breach, i)
	JOIN calls c ON c.i = r.i
	LEFT JOIN ids ON ids.rn = c.rn
	ORDER BY r.i;
END $$;
