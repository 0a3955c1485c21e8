-- Schema version 6: rate limits and plan quotas counted in the database, in
-- the same locked step as the reservation, so that every node sharing it
-- admits exactly what one node would.
--
-- Limits travel as one bigint[24] (storage.LimitState flattened): three
-- levels (plan, user, key) of eight values each, requests per window
-- (minute, hour, day, month) then tokens per window. 0 is no limit. Rate
-- levels use minute, hour and day; the plan day and month.
--
-- Rate counts are columns of the rows a request already locks and writes:
-- the user's on gw_accounts, the key's on gw_keys (rate_win: the starts, in
-- unix seconds, of the minute, hour and day counted; rate_req, rate_tok:
-- what was counted in them). No other row gets hot. Plan counts are not
-- stored twice: they are the usage totals (charged requests) plus the
-- user's open holds (in flight) and their estimated tokens, read with the
-- account row locked.
--
-- The functions of version 3 (spend budgets) keep all they do: gw_reserve
-- takes both the budget windows and the limits, gw_settle_spend (and so
-- gw_settle), gw_refund and gw_release charge and end the spend windows as
-- before and also re-count the hold's tokens.

ALTER TABLE gw_accounts
	ADD COLUMN held_tokens bigint NOT NULL DEFAULT 0 CHECK (held_tokens >= 0),
	ADD COLUMN rate_win bigint[] NOT NULL DEFAULT '{0,0,0}',
	ADD COLUMN rate_req bigint[] NOT NULL DEFAULT '{0,0,0}',
	ADD COLUMN rate_tok bigint[] NOT NULL DEFAULT '{0,0,0}';
ALTER TABLE gw_keys
	ADD COLUMN rate_win bigint[] NOT NULL DEFAULT '{0,0,0}',
	ADD COLUMN rate_req bigint[] NOT NULL DEFAULT '{0,0,0}',
	ADD COLUMN rate_tok bigint[] NOT NULL DEFAULT '{0,0,0}';

-- A hold's estimated tokens, counted in held_tokens and, when counted_at is
-- set (unix seconds), in the rate windows holding that time: its
-- settlement replaces them by the actual tokens, its refund takes them back.
ALTER TABLE gw_holds ADD COLUMN tokens bigint NOT NULL DEFAULT 0, ADD COLUMN counted_at bigint;

-- gw_rate_windows are the starts of the UTC minute, hour and day of p_now.
CREATE FUNCTION gw_rate_windows(p_now bigint) RETURNS bigint[] LANGUAGE sql IMMUTABLE AS $$
	SELECT ARRAY[p_now / 60 * 60, p_now / 3600 * 3600, p_now / 86400 * 86400]
$$;

-- gw_limited reports whether level p_level (0 plan, 1 user, 2 key) of
-- p_limits has a limit.
CREATE FUNCTION gw_limited(p_limits bigint[], p_level integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
	SELECT coalesce(0 < ANY (p_limits[p_level * 8 + 1 : p_level * 8 + 8]), false)
$$;

-- gw_rate_rolled is a row's windows rolled to p_now: a window that ended
-- starts again (the newer start), a newer one (a node whose clock is
-- ahead) is kept. gw_rate_kept is a count array rolled alike: zero for
-- the windows that ended.
CREATE FUNCTION gw_rate_rolled(win bigint[], p_now bigint) RETURNS bigint[] LANGUAGE sql IMMUTABLE AS $$
	SELECT ARRAY[GREATEST(win[1], p_now / 60 * 60), GREATEST(win[2], p_now / 3600 * 3600), GREATEST(win[3], p_now / 86400 * 86400)]
$$;

CREATE FUNCTION gw_rate_kept(win bigint[], counts bigint[], p_now bigint, n bigint) RETURNS bigint[] LANGUAGE sql IMMUTABLE AS $$
	SELECT ARRAY[CASE WHEN win[1] < p_now / 60 * 60 THEN 0 ELSE counts[1] END + n,
		CASE WHEN win[2] < p_now / 3600 * 3600 THEN 0 ELSE counts[2] END + n,
		CASE WHEN win[3] < p_now / 86400 * 86400 THEN 0 ELSE counts[3] END + n]
$$;

-- gw_rate_shifted is tok with p_delta tokens added to the windows of win
-- that are still those of p_at (null: none), never below zero.
CREATE FUNCTION gw_rate_shifted(win bigint[], tok bigint[], p_at bigint, p_delta bigint) RETURNS bigint[]
	LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN p_at IS NULL OR p_delta = 0 THEN tok ELSE ARRAY[
		CASE WHEN win[1] = p_at / 60 * 60 THEN GREATEST(tok[1] + p_delta, 0) ELSE tok[1] END,
		CASE WHEN win[2] = p_at / 3600 * 3600 THEN GREATEST(tok[2] + p_delta, 0) ELSE tok[2] END,
		CASE WHEN win[3] = p_at / 86400 * 86400 THEN GREATEST(tok[3] + p_delta, 0) ELSE tok[3] END] END
$$;

-- gw_limits_check returns the counts (the layout of p_limits) and the
-- first limit that counting one more request of p_tokens would cross (its
-- index, 0: none): plan (when p_plan), user, then key; in each, window by
-- window, requests then tokens. u_* and k_* are the rolled rate windows of
-- the locked account and key rows (null: not counted). A request already
-- counted (p_counted) is not checked against the request rates again.
CREATE FUNCTION gw_limits_check(p_user bigint, p_day integer, p_limits bigint[], p_tokens bigint,
	p_counted boolean, p_plan boolean, p_holds bigint, p_held_tokens bigint,
	u_req bigint[], u_tok bigint[], k_req bigint[], k_tok bigint[],
	OUT counts bigint[], OUT breach integer) LANGUAGE plpgsql AS $$
DECLARE
	v_dreq bigint;
	v_dtok bigint;
	v_mreq bigint;
	v_mtok bigint;
	o integer;
	ws integer[];
	w integer;
BEGIN
	counts := array_fill(0::bigint, ARRAY[24]);
	breach := 0;
	IF gw_limited(p_limits, 0) THEN
		SELECT coalesce(sum(requests) FILTER (WHERE kind = 'd'), 0), coalesce(sum(tokens) FILTER (WHERE kind = 'd'), 0),
			coalesce(sum(requests) FILTER (WHERE kind = 'm'), 0), coalesce(sum(tokens) FILTER (WHERE kind = 'm'), 0)
			INTO v_dreq, v_dtok, v_mreq, v_mtok
			FROM gw_usage_totals WHERE user_id = p_user AND ((kind = 'd' AND period = p_day) OR (kind = 'm' AND period = p_day / 100));
		counts[3] := v_dreq + p_holds;
		counts[4] := v_mreq + p_holds;
		counts[7] := v_dtok + p_held_tokens;
		counts[8] := v_mtok + p_held_tokens;
	END IF;
	FOR i IN 1..3 LOOP
		counts[8 + i] := coalesce(u_req[i], 0);
		counts[12 + i] := coalesce(u_tok[i], 0);
		counts[16 + i] := coalesce(k_req[i], 0);
		counts[20 + i] := coalesce(k_tok[i], 0);
	END LOOP;
	FOR lvl IN 0..2 LOOP
		CONTINUE WHEN lvl = 0 AND NOT p_plan;
		CONTINUE WHEN lvl = 1 AND u_req IS NULL;
		CONTINUE WHEN lvl = 2 AND k_req IS NULL;
		o := lvl * 8;
		ws := CASE WHEN lvl = 0 THEN ARRAY[3, 4] ELSE ARRAY[1, 2, 3] END;
		FOREACH w IN ARRAY ws LOOP
			IF p_limits[o + w] > 0 AND (lvl = 0 OR NOT p_counted) AND counts[o + w] + 1 > p_limits[o + w] THEN
				breach := o + w;
				RETURN;
			END IF;
			IF p_limits[o + 4 + w] > 0 AND counts[o + 4 + w] + p_tokens > p_limits[o + 4 + w] THEN
				breach := o + 4 + w;
				RETURN;
			END IF;
		END LOOP;
	END LOOP;
END $$;

-- gw_reserve with budgets (version 3) and limits (p_limits null: none). The
-- key row is locked before the account row, as everywhere. In order: the
-- key's max_requests cap, then the limits, then the key's budget, the
-- user's budget and the balance. A request that would cross a limit is
-- refused with status 'limited' and breach its index, holding and counting
-- nothing; one refused for its key's cap, a budget or credits holds nothing
-- and leaves the spend windows as they were, but still counts against the
-- request rates (unless p_counted), not against tokens or the plan. It
-- answers the counts after the call.
CREATE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint, p_key_window timestamptz, p_key_limit bigint,
	p_user_window timestamptz, p_user_limit bigint,
	p_now bigint, p_day integer, p_limits bigint[], p_tokens bigint, p_counted boolean,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text, OUT budget_used bigint, OUT budget_reserved bigint, OUT counts bigint[], OUT breach integer)
	LANGUAGE plpgsql AS $$
DECLARE
	v_limited boolean := p_limits IS NOT NULL;
	v_key boolean := false;
	v_slot boolean := false;
	v_used bigint;
	v_inflight bigint;
	v_held_tokens bigint;
	v_kw timestamptz;
	v_ku bigint;
	v_kr bigint;
	v_uw timestamptz;
	v_uu bigint;
	v_ur bigint;
	v_key_room bigint := 4611686018427387904; -- no limit
	v_user_room bigint := 4611686018427387904;
	k_win bigint[];
	k_req bigint[];
	k_tok bigint[];
	u_win bigint[];
	u_req bigint[];
	u_tok bigint[];
	n bigint;
BEGIN
	IF p_key <> 0 THEN
		SELECT k.requests_used, k.inflight, k.spend_window, k.spend_used, k.spend_reserved, k.rate_win, k.rate_req, k.rate_tok
			INTO v_used, v_inflight, v_kw, v_ku, v_kr, k_win, k_req, k_tok
			FROM gw_keys k WHERE k.id = p_key FOR UPDATE;
		v_key := FOUND; -- a key deleted a moment ago: billed to the user without key counters
	END IF;
	IF v_key THEN
		IF p_max > 0 THEN
			IF v_used + v_inflight < p_max THEN
				v_slot := true;
			ELSE
				status := 'request_limit';
			END IF;
		END IF;
		IF p_key_window > v_kw THEN
			v_kw := p_key_window; v_ku := 0; v_kr := 0;
		END IF;
		IF p_key_limit IS NOT NULL THEN
			v_key_room := p_key_limit - v_ku - v_kr;
		END IF;
	END IF;
	SELECT a.credits, a.reserved, a.holds, a.held_tokens, a.spend_window, a.spend_used, a.spend_reserved,
		a.rate_win, a.rate_req, a.rate_tok
		INTO balance, reserved_total, open_holds, v_held_tokens, v_uw, v_uu, v_ur, u_win, u_req, u_tok
		FROM gw_accounts a WHERE a.user_id = p_user FOR UPDATE;
	IF NOT FOUND THEN
		status := 'not_found';
		RETURN;
	END IF;
	IF p_user_window > v_uw THEN
		v_uw := p_user_window; v_uu := 0; v_ur := 0;
	END IF;
	IF p_user_limit IS NOT NULL THEN
		v_user_room := p_user_limit - v_uu - v_ur;
	END IF;
	IF NOT v_limited THEN
		k_win := NULL;
		k_req := NULL;
		k_tok := NULL;
		u_win := NULL;
		u_req := NULL;
		u_tok := NULL;
	ELSE
		IF v_key AND gw_limited(p_limits, 2) THEN
			k_req := gw_rate_kept(k_win, k_req, p_now, 0);
			k_tok := gw_rate_kept(k_win, k_tok, p_now, 0);
			k_win := gw_rate_rolled(k_win, p_now);
		ELSE
			k_win := NULL;
			k_req := NULL;
			k_tok := NULL;
		END IF;
		IF gw_limited(p_limits, 1) THEN
			u_req := gw_rate_kept(u_win, u_req, p_now, 0);
			u_tok := gw_rate_kept(u_win, u_tok, p_now, 0);
			u_win := gw_rate_rolled(u_win, p_now);
		ELSE
			u_win := NULL;
			u_req := NULL;
			u_tok := NULL;
		END IF;
		SELECT c.counts, c.breach INTO counts, breach FROM gw_limits_check(p_user, p_day, p_limits, p_tokens, p_counted, true,
			open_holds, v_held_tokens, u_req, u_tok, k_req, k_tok) c;
		IF breach > 0 THEN
			status := 'limited';
			RETURN;
		END IF;
	END IF;
	IF status IS NULL THEN
		held := gw_reserve_amount(LEAST(balance - reserved_total, v_key_room, v_user_room), open_holds, p_waiting, p_min, p_credits);
		IF v_key_room < held THEN
			status := 'key_budget'; budget_used := v_ku; budget_reserved := v_kr;
		ELSIF v_user_room < held THEN
			status := 'user_budget'; budget_used := v_uu; budget_reserved := v_ur;
		ELSIF balance - reserved_total < held THEN
			status := 'insufficient';
		END IF;
	END IF;
	IF status IS NOT NULL AND (NOT v_limited OR p_counted) THEN
		RETURN; -- nothing to count
	END IF;
	-- Count: the request (unless counted before) and, when it holds, its
	-- tokens, in the rate windows of the limited levels.
	n := CASE WHEN p_counted THEN 0 ELSE 1 END;
	IF status IS NULL AND v_limited THEN
		p_tokens := GREATEST(p_tokens, 0);
	ELSE
		p_tokens := 0;
	END IF;
	IF k_req IS NOT NULL THEN
		k_req := gw_rate_kept(k_win, k_req, p_now, n);
		k_tok := gw_rate_kept(k_win, k_tok, p_now, p_tokens);
		counts[17:19] := k_req;
		counts[21:23] := k_tok;
	END IF;
	IF u_req IS NOT NULL THEN
		u_req := gw_rate_kept(u_win, u_req, p_now, n);
		u_tok := gw_rate_kept(u_win, u_tok, p_now, p_tokens);
		counts[9:11] := u_req;
		counts[13:15] := u_tok;
	END IF;
	IF status IS NOT NULL THEN
		-- Refused: only the request rates move; no hold, no spend.
		IF k_req IS NOT NULL THEN
			UPDATE gw_keys SET rate_win = k_win, rate_req = k_req, rate_tok = k_tok WHERE id = p_key;
		END IF;
		IF u_req IS NOT NULL THEN
			UPDATE gw_accounts SET rate_win = u_win, rate_req = u_req, rate_tok = u_tok WHERE user_id = p_user;
		END IF;
		RETURN;
	END IF;
	IF v_limited AND gw_limited(p_limits, 0) THEN
		counts[3] := counts[3] + 1;
		counts[4] := counts[4] + 1;
		counts[7] := counts[7] + p_tokens;
		counts[8] := counts[8] + p_tokens;
	END IF;
	IF v_key THEN
		UPDATE gw_keys SET inflight = inflight + CASE WHEN v_slot THEN 1 ELSE 0 END,
			spend_window = v_kw, spend_used = v_ku, spend_reserved = v_kr + held,
			rate_win = coalesce(k_win, rate_win), rate_req = coalesce(k_req, rate_req), rate_tok = coalesce(k_tok, rate_tok)
		WHERE id = p_key;
	END IF;
	UPDATE gw_accounts a SET reserved = a.reserved + held, holds = a.holds + 1, held_tokens = a.held_tokens + p_tokens,
		spend_window = v_uw, spend_used = v_uu, spend_reserved = v_ur + held,
		rate_win = coalesce(u_win, a.rate_win), rate_req = coalesce(u_req, a.rate_req), rate_tok = coalesce(u_tok, a.rate_tok)
	WHERE a.user_id = p_user;
	reserved_total := reserved_total + held;
	open_holds := open_holds + 1;
	INSERT INTO gw_holds (user_id, key_id, amount, slot, node_id, key_window, key_limit, user_window, user_limit, tokens, counted_at)
		VALUES (p_user, p_key, held, v_slot, p_node, CASE WHEN v_key THEN v_kw END, p_key_limit, v_uw, p_user_limit,
			p_tokens, CASE WHEN v_limited THEN p_now END)
		RETURNING id INTO hold_id;
	status := 'ok';
END $$;

-- The calls of older builds, for nodes still running while the schema is
-- upgraded: version 3's (budgets, no limits) and version 2's (neither),
-- counted in the windows in force.
CREATE OR REPLACE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint, p_key_window timestamptz, p_key_limit bigint,
	p_user_window timestamptz, p_user_limit bigint,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text, OUT budget_used bigint, OUT budget_reserved bigint) LANGUAGE sql AS $$
	SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status, r.budget_used, r.budget_reserved
	FROM gw_reserve(p_user, p_key, p_credits, p_min, p_waiting, p_max, p_node, p_key_window, p_key_limit,
		p_user_window, p_user_limit, NULL, NULL, NULL, 0, false) r
$$;

CREATE OR REPLACE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text) LANGUAGE sql AS $$
	SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status
	FROM gw_reserve(p_user, p_key, p_credits, p_min, p_waiting, p_max, p_node, NULL, NULL, NULL, NULL,
		NULL, NULL, NULL, 0, false) r
$$;

-- gw_count_limits counts a request that reserves nothing (a free route)
-- against the rate limits of p_limits, reporting the plan's counts; status
-- 'ok' or 'limited' (breach: the index).
CREATE FUNCTION gw_count_limits(p_user bigint, p_key bigint, p_now bigint, p_day integer, p_limits bigint[],
	OUT counts bigint[], OUT breach integer, OUT status text) LANGUAGE plpgsql AS $$
DECLARE
	v_holds bigint;
	v_held_tokens bigint;
	k_win bigint[];
	k_req bigint[];
	k_tok bigint[];
	u_win bigint[];
	u_req bigint[];
	u_tok bigint[];
BEGIN
	IF p_key <> 0 AND gw_limited(p_limits, 2) THEN
		SELECT k.rate_win, k.rate_req, k.rate_tok INTO k_win, k_req, k_tok FROM gw_keys k WHERE k.id = p_key FOR UPDATE;
		IF FOUND THEN
			k_req := gw_rate_kept(k_win, k_req, p_now, 0);
			k_tok := gw_rate_kept(k_win, k_tok, p_now, 0);
			k_win := gw_rate_rolled(k_win, p_now);
		END IF;
	END IF;
	IF gw_limited(p_limits, 1) THEN
		SELECT a.holds, a.held_tokens, a.rate_win, a.rate_req, a.rate_tok INTO v_holds, v_held_tokens, u_win, u_req, u_tok
			FROM gw_accounts a WHERE a.user_id = p_user FOR UPDATE;
		IF FOUND THEN
			u_req := gw_rate_kept(u_win, u_req, p_now, 0);
			u_tok := gw_rate_kept(u_win, u_tok, p_now, 0);
			u_win := gw_rate_rolled(u_win, p_now);
		END IF;
	ELSE
		SELECT a.holds, a.held_tokens INTO v_holds, v_held_tokens FROM gw_accounts a WHERE a.user_id = p_user;
	END IF;
	SELECT c.counts, c.breach INTO counts, breach FROM gw_limits_check(p_user, p_day, p_limits, 0, false, false,
		coalesce(v_holds, 0), coalesce(v_held_tokens, 0), u_req, u_tok, k_req, k_tok) c;
	IF breach > 0 THEN
		status := 'limited';
		RETURN;
	END IF;
	IF k_req IS NOT NULL THEN
		k_req := gw_rate_kept(k_win, k_req, p_now, 1);
		counts[17:19] := k_req;
		UPDATE gw_keys SET rate_win = k_win, rate_req = k_req, rate_tok = k_tok WHERE id = p_key;
	END IF;
	IF u_req IS NOT NULL THEN
		u_req := gw_rate_kept(u_win, u_req, p_now, 1);
		counts[9:11] := u_req;
		UPDATE gw_accounts SET rate_win = u_win, rate_req = u_req, rate_tok = u_tok WHERE user_id = p_user;
	END IF;
	status := 'ok';
END $$;

-- gw_settle_spend (and gw_settle, which calls it) as in version 5 (budgets'
-- spend windows, the usage rollups and the ledger's request count), also
-- ending the hold's tokens in the same row updates: the settlement
-- replaces them by the actual tokens in the rate windows they were counted
-- in.
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
	v_delta bigint;
BEGIN
	DELETE FROM gw_holds WHERE id = p_hold RETURNING * INTO h;
	IF NOT FOUND THEN
		status := 'settled';
		RETURN;
	END IF;
	v_open := h.state = 'open';
	v_delta := p_tokens - h.tokens;
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
			spend_reserved = v_kr,
			rate_tok = gw_rate_shifted(rate_win, rate_tok, h.counted_at, v_delta)
		WHERE id = h.key_id;
	END IF;
	balance := v_credits - charged;
	UPDATE gw_accounts SET credits = balance, reserved = v_reserved,
		holds = holds - CASE WHEN v_open THEN 1 ELSE 0 END,
		held_tokens = held_tokens - CASE WHEN v_open THEN h.tokens ELSE 0 END,
		spend_used = spend_used + CASE WHEN user_tracked THEN charged ELSE 0 END,
		spend_reserved = v_ur,
		rate_tok = gw_rate_shifted(rate_win, rate_tok, h.counted_at, v_delta)
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

-- gw_end_hold also takes the hold's estimated tokens out of held_tokens
-- and, when p_counted_at is set, out of the rate windows still those of
-- that time. A refund passes the hold's counted_at (the request used no
-- tokens); a release passes null (what a dead node's request used is not
-- known, so its estimate stays counted).
DROP FUNCTION gw_end_hold(bigint, bigint, bigint, boolean, timestamptz, timestamptz);
CREATE FUNCTION gw_end_hold(p_user bigint, p_key bigint, p_amount bigint, p_slot boolean,
	p_key_window timestamptz, p_user_window timestamptz, p_tokens bigint, p_counted_at bigint)
	RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF p_key <> 0 THEN
		UPDATE gw_keys SET inflight = inflight - CASE WHEN p_slot THEN 1 ELSE 0 END,
			spend_reserved = spend_reserved - CASE WHEN spend_window = p_key_window THEN p_amount ELSE 0 END,
			rate_tok = gw_rate_shifted(rate_win, rate_tok, p_counted_at, -p_tokens)
		WHERE id = p_key;
	END IF;
	UPDATE gw_accounts SET reserved = reserved - p_amount, holds = holds - 1, held_tokens = held_tokens - p_tokens,
		spend_reserved = spend_reserved - CASE WHEN spend_window = p_user_window THEN p_amount ELSE 0 END,
		rate_tok = gw_rate_shifted(rate_win, rate_tok, p_counted_at, -p_tokens)
	WHERE user_id = p_user;
END $$;

-- gw_refund ends an open hold in its spend windows and takes its tokens
-- back; a hold released before (its node taken for dead) only gives back
-- the tokens it still counts in the rate windows.
CREATE OR REPLACE FUNCTION gw_refund(p_hold bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	h gw_holds%ROWTYPE;
BEGIN
	DELETE FROM gw_holds WHERE id = p_hold RETURNING * INTO h;
	IF NOT FOUND THEN
		RETURN 'settled';
	END IF;
	IF h.state = 'open' THEN
		PERFORM gw_end_hold(h.user_id, h.key_id, h.amount, h.slot, h.key_window, h.user_window, h.tokens, h.counted_at);
	ELSIF h.counted_at IS NOT NULL AND h.tokens <> 0 THEN
		IF h.key_id <> 0 THEN
			UPDATE gw_keys SET rate_tok = gw_rate_shifted(rate_win, rate_tok, h.counted_at, -h.tokens) WHERE id = h.key_id;
		END IF;
		UPDATE gw_accounts SET rate_tok = gw_rate_shifted(rate_win, rate_tok, h.counted_at, -h.tokens)
			WHERE user_id = h.user_id;
	END IF;
	RETURN 'ok';
END $$;

CREATE OR REPLACE FUNCTION gw_release(p_nodes bigint[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	h record;
	n bigint := 0;
BEGIN
	FOR h IN SELECT id, user_id, key_id, amount, slot, key_window, user_window, tokens FROM gw_holds
		WHERE node_id = ANY (p_nodes) AND state = 'open' ORDER BY id FOR UPDATE SKIP LOCKED
	LOOP
		PERFORM gw_end_hold(h.user_id, h.key_id, h.amount, h.slot, h.key_window, h.user_window, h.tokens, NULL);
		UPDATE gw_holds SET state = 'released' WHERE id = h.id;
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;
