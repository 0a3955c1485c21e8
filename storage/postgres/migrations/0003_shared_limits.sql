-- Schema version 3: rate limits and plan quotas counted in the database, in
-- the same locked step as the reservation, so that every node sharing it
-- admits exactly what one node would.
--
-- Limits travel as one bigint[24] (storage.LimitState flattened): three
-- levels (plan, user, key) of eight values each, requests per window
-- (minute, hour, day, month) then tokens per window. 0 is no limit. Rate
-- levels use minute, hour and day; the plan day and month.
--
-- Rate counts live in gw_rate, one row per user ('u') and per key ('k'),
-- created on first use; a row is locked only when its level has a limit.
-- Plan counts are not stored twice: they are the usage totals (charged
-- requests) plus the user's open holds (in flight) and their estimated
-- tokens, read with the account row locked.

CREATE TABLE gw_rate (
	subject "char" NOT NULL, -- 'u' user, 'k' key
	id      bigint NOT NULL,
	win     bigint[] NOT NULL, -- starts (unix seconds) of the minute, hour and day counted
	req     bigint[] NOT NULL,
	tok     bigint[] NOT NULL,
	PRIMARY KEY (subject, id)
);

-- A hold's estimated tokens, counted in held_tokens and, when counted_at is
-- set (unix seconds), in the rate windows holding that time: its
-- settlement replaces them by the actual tokens, its refund takes them back.
ALTER TABLE gw_holds ADD COLUMN tokens bigint NOT NULL DEFAULT 0, ADD COLUMN counted_at bigint;
ALTER TABLE gw_accounts ADD COLUMN held_tokens bigint NOT NULL DEFAULT 0 CHECK (held_tokens >= 0);

-- gw_rate_windows are the starts of the UTC minute, hour and day of p_now.
CREATE FUNCTION gw_rate_windows(p_now bigint) RETURNS bigint[] LANGUAGE sql IMMUTABLE AS $$
	SELECT ARRAY[p_now / 60 * 60, p_now / 3600 * 3600, p_now / 86400 * 86400]
$$;

-- gw_limited reports whether level p_level (0 plan, 1 user, 2 key) of
-- p_limits has a limit.
CREATE FUNCTION gw_limited(p_limits bigint[], p_level integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
	SELECT EXISTS (SELECT 1 FROM unnest(p_limits[p_level * 8 + 1 : p_level * 8 + 8]) v WHERE v > 0)
$$;

-- gw_rate_lock locks (creating) a subject's rate row and returns its
-- windows rolled to p_now: a window that ended starts again from zero; a
-- newer one (a node whose clock is ahead) is kept.
CREATE FUNCTION gw_rate_lock(p_subject "char", p_id bigint, p_now bigint,
	OUT win bigint[], OUT req bigint[], OUT tok bigint[]) LANGUAGE plpgsql AS $$
DECLARE
	w bigint[] := gw_rate_windows(p_now);
BEGIN
	SELECT r.win, r.req, r.tok INTO win, req, tok FROM gw_rate r WHERE r.subject = p_subject AND r.id = p_id FOR UPDATE;
	IF NOT FOUND THEN
		INSERT INTO gw_rate VALUES (p_subject, p_id, w, '{0,0,0}', '{0,0,0}') ON CONFLICT DO NOTHING;
		SELECT r.win, r.req, r.tok INTO win, req, tok FROM gw_rate r WHERE r.subject = p_subject AND r.id = p_id FOR UPDATE;
	END IF;
	FOR i IN 1..3 LOOP
		IF win[i] < w[i] THEN
			win[i] := w[i];
			req[i] := 0;
			tok[i] := 0;
		END IF;
	END LOOP;
END $$;

-- gw_limits_check locks the rate rows of the limited levels and returns
-- the counts (the layout of p_limits) and the first limit that counting
-- one more request of p_tokens would cross (its index, 0: none): plan
-- (when p_plan), user, then key; in each, window by window, requests then
-- tokens. A request already counted (p_counted) is not checked against the
-- request rates again. Call it with the account row locked (p_holds and
-- p_held_tokens are its open holds and their tokens).
CREATE FUNCTION gw_limits_check(p_user bigint, p_key bigint, p_now bigint, p_day integer, p_limits bigint[],
	p_tokens bigint, p_counted boolean, p_plan boolean, p_holds bigint, p_held_tokens bigint,
	OUT counts bigint[], OUT breach integer, OUT u_win bigint[], OUT k_win bigint[]) LANGUAGE plpgsql AS $$
DECLARE
	v_dreq bigint;
	v_dtok bigint;
	v_mreq bigint;
	v_mtok bigint;
	v_req bigint[];
	v_tok bigint[];
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
	IF gw_limited(p_limits, 1) THEN
		SELECT l.win, l.req, l.tok INTO u_win, v_req, v_tok FROM gw_rate_lock('u', p_user, p_now) l;
		FOR i IN 1..3 LOOP
			counts[8 + i] := v_req[i];
			counts[12 + i] := v_tok[i];
		END LOOP;
	END IF;
	IF p_key <> 0 AND gw_limited(p_limits, 2) THEN
		SELECT l.win, l.req, l.tok INTO k_win, v_req, v_tok FROM gw_rate_lock('k', p_key, p_now) l;
		FOR i IN 1..3 LOOP
			counts[16 + i] := v_req[i];
			counts[20 + i] := v_tok[i];
		END LOOP;
	END IF;
	FOR lvl IN 0..2 LOOP
		o := lvl * 8;
		ws := CASE WHEN lvl = 0 THEN ARRAY[3, 4] ELSE ARRAY[1, 2, 3] END;
		CONTINUE WHEN lvl = 0 AND NOT p_plan;
		CONTINUE WHEN lvl = 2 AND p_key = 0;
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

-- gw_limits_count counts a checked request in the rate rows locked by
-- gw_limits_check (one request unless p_counted, and p_tokens) and, when
-- p_plan, in the plan counts it answers (the hold itself is what the plan
-- counts in the database). It returns the counts after.
CREATE FUNCTION gw_limits_count(p_user bigint, p_key bigint, p_limits bigint[], p_counts bigint[],
	p_u_win bigint[], p_k_win bigint[], p_counted boolean, p_tokens bigint, p_plan boolean)
	RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
	c bigint[] := p_counts;
	n bigint := CASE WHEN p_counted THEN 0 ELSE 1 END;
BEGIN
	IF p_plan AND gw_limited(p_limits, 0) THEN
		c[3] := c[3] + 1;
		c[4] := c[4] + 1;
		c[7] := c[7] + p_tokens;
		c[8] := c[8] + p_tokens;
	END IF;
	IF p_u_win IS NOT NULL THEN
		FOR i IN 1..3 LOOP
			c[8 + i] := c[8 + i] + n;
			c[12 + i] := c[12 + i] + p_tokens;
		END LOOP;
		UPDATE gw_rate SET win = p_u_win, req = c[9:11], tok = c[13:15] WHERE subject = 'u' AND id = p_user;
	END IF;
	IF p_k_win IS NOT NULL THEN
		FOR i IN 1..3 LOOP
			c[16 + i] := c[16 + i] + n;
			c[20 + i] := c[20 + i] + p_tokens;
		END LOOP;
		UPDATE gw_rate SET win = p_k_win, req = c[17:19], tok = c[21:23] WHERE subject = 'k' AND id = p_key;
	END IF;
	RETURN c;
END $$;

-- gw_rate_shift adds p_delta tokens to the windows of one rate row that
-- are still those of p_at, never below zero.
CREATE FUNCTION gw_rate_shift(p_subject "char", p_id bigint, p_at bigint, p_delta bigint) RETURNS void LANGUAGE sql AS $$
	UPDATE gw_rate SET tok = ARRAY(
		SELECT CASE WHEN win[i] = (gw_rate_windows(p_at))[i] THEN GREATEST(tok[i] + p_delta, 0) ELSE tok[i] END
		FROM generate_series(1, 3) i ORDER BY i)
	WHERE subject = p_subject AND id = p_id;
$$;

-- gw_rate_correct adds p_delta tokens (the actual minus the estimate) to
-- the rate windows of a user and key that are still those of p_at. The
-- user's row first, as in gw_limits_check.
CREATE FUNCTION gw_rate_correct(p_user bigint, p_key bigint, p_at bigint, p_delta bigint) RETURNS void LANGUAGE sql AS $$
	SELECT gw_rate_shift('u', p_user, p_at, p_delta);
	SELECT gw_rate_shift('k', p_key, p_at, p_delta) WHERE p_key <> 0;
$$;

-- gw_reserve as in version 2, with the limits (p_limits null: none, as
-- version 2) checked and counted in the same step: a request that would
-- cross one is refused with status 'limited' and breach its index, holding
-- nothing; one refused for credits or its key's cap still counts against
-- the request rates (unless p_counted). It answers the counts in counts.
CREATE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint, p_now bigint, p_day integer, p_limits bigint[], p_tokens bigint, p_counted boolean,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text, OUT counts bigint[], OUT breach integer) LANGUAGE plpgsql AS $$
DECLARE
	v_slot boolean := false;
	v_held_tokens bigint;
	v_u_win bigint[];
	v_k_win bigint[];
BEGIN
	IF p_max > 0 AND p_key <> 0 THEN
		UPDATE gw_keys SET inflight = inflight + 1 WHERE id = p_key AND requests_used + inflight < p_max;
		IF FOUND THEN
			v_slot := true;
		ELSIF EXISTS (SELECT 1 FROM gw_keys WHERE id = p_key) THEN
			status := 'request_limit';
		END IF; -- a key deleted a moment ago: billed to the user without key counters
	END IF;
	SELECT a.credits, a.reserved, a.holds, a.held_tokens INTO balance, reserved_total, open_holds, v_held_tokens
		FROM gw_accounts a WHERE a.user_id = p_user FOR UPDATE;
	IF NOT FOUND THEN
		status := 'not_found';
	END IF;
	IF p_limits IS NOT NULL AND status IS DISTINCT FROM 'not_found' THEN
		SELECT c.counts, c.breach, c.u_win, c.k_win INTO counts, breach, v_u_win, v_k_win
			FROM gw_limits_check(p_user, p_key, p_now, p_day, p_limits, p_tokens, p_counted, true,
				coalesce(open_holds, 0), coalesce(v_held_tokens, 0)) c;
		IF breach > 0 THEN
			status := 'limited';
		ELSIF status = 'request_limit' THEN
			counts := gw_limits_count(p_user, p_key, p_limits, counts, v_u_win, v_k_win, p_counted, 0, false);
		END IF;
	END IF;
	IF status IS NULL THEN
		held := gw_reserve_amount(balance - reserved_total, open_holds, p_waiting, p_min, p_credits);
		IF balance - reserved_total < held THEN
			status := 'insufficient';
			IF p_limits IS NOT NULL THEN
				counts := gw_limits_count(p_user, p_key, p_limits, counts, v_u_win, v_k_win, p_counted, 0, false);
			END IF;
		END IF;
	END IF;
	IF status IS NOT NULL THEN
		IF v_slot THEN
			UPDATE gw_keys SET inflight = inflight - 1 WHERE id = p_key;
		END IF;
		RETURN;
	END IF;
	IF p_limits IS NULL THEN
		p_tokens := 0;
	ELSE
		counts := gw_limits_count(p_user, p_key, p_limits, counts, v_u_win, v_k_win, p_counted, p_tokens, true);
	END IF;
	UPDATE gw_accounts a SET reserved = a.reserved + held, holds = a.holds + 1, held_tokens = a.held_tokens + p_tokens
		WHERE a.user_id = p_user;
	reserved_total := reserved_total + held;
	open_holds := open_holds + 1;
	INSERT INTO gw_holds (user_id, key_id, amount, slot, node_id, tokens, counted_at)
		VALUES (p_user, p_key, held, v_slot, p_node, p_tokens, CASE WHEN p_limits IS NULL THEN NULL ELSE p_now END)
		RETURNING id INTO hold_id;
	status := 'ok';
END $$;

-- gw_count_limits counts a request that reserves nothing (a free route)
-- against the rate limits of p_limits, reporting the plan's counts; status
-- 'ok' or 'limited' (breach: the index).
CREATE FUNCTION gw_count_limits(p_user bigint, p_key bigint, p_now bigint, p_day integer, p_limits bigint[],
	OUT counts bigint[], OUT breach integer, OUT status text) LANGUAGE plpgsql AS $$
DECLARE
	v_holds bigint;
	v_held_tokens bigint;
	v_u_win bigint[];
	v_k_win bigint[];
BEGIN
	SELECT a.holds, a.held_tokens INTO v_holds, v_held_tokens FROM gw_accounts a WHERE a.user_id = p_user;
	SELECT c.counts, c.breach, c.u_win, c.k_win INTO counts, breach, v_u_win, v_k_win
		FROM gw_limits_check(p_user, p_key, p_now, p_day, p_limits, 0, false, false,
			coalesce(v_holds, 0), coalesce(v_held_tokens, 0)) c;
	IF breach > 0 THEN
		status := 'limited';
		RETURN;
	END IF;
	counts := gw_limits_count(p_user, p_key, p_limits, counts, v_u_win, v_k_win, false, 0, false);
	status := 'ok';
END $$;

-- gw_settle, gw_refund and gw_release as in version 2, ending the hold's
-- tokens too: the settlement replaces them by the actual tokens in the
-- rate windows, the refund takes them back; a release leaves them counted.
CREATE OR REPLACE FUNCTION gw_settle(p_hold bigint, p_cost bigint, p_now timestamptz, p_time timestamptz,
	p_day integer, p_month integer, p_tokens bigint, p_request_id text, p_usage jsonb,
	OUT charged bigint, OUT balance bigint, OUT status text) LANGUAGE plpgsql AS $$
DECLARE
	h gw_holds%ROWTYPE;
	v_credits bigint;
	v_reserved bigint;
BEGIN
	DELETE FROM gw_holds WHERE id = p_hold RETURNING * INTO h;
	IF NOT FOUND THEN
		status := 'settled';
		RETURN;
	END IF;
	IF h.key_id <> 0 THEN
		UPDATE gw_keys SET requests_used = requests_used + 1,
			inflight = inflight - CASE WHEN h.slot AND h.state = 'open' THEN 1 ELSE 0 END,
			last_used_at = GREATEST(last_used_at, p_now)
		WHERE id = h.key_id;
	END IF;
	IF h.state = 'open' THEN
		UPDATE gw_accounts SET reserved = reserved - h.amount, holds = holds - 1, held_tokens = held_tokens - h.tokens
			WHERE user_id = h.user_id
			RETURNING credits, reserved INTO v_credits, v_reserved;
	ELSE
		SELECT credits, reserved INTO v_credits, v_reserved FROM gw_accounts WHERE user_id = h.user_id FOR UPDATE;
	END IF;
	IF h.counted_at IS NOT NULL AND p_tokens <> h.tokens THEN
		PERFORM gw_rate_correct(h.user_id, h.key_id, h.counted_at, p_tokens - h.tokens);
	END IF;
	charged := GREATEST(0, LEAST(p_cost, v_credits - v_reserved));
	balance := v_credits - charged;
	IF charged > 0 THEN
		UPDATE gw_accounts SET credits = balance WHERE user_id = h.user_id;
		INSERT INTO gw_ledger (user_id, kind, amount, balance_after, key_id, request_id, time)
			VALUES (h.user_id, 'charge', -charged, balance, h.key_id, p_request_id, p_now);
	END IF;
	INSERT INTO gw_usage (user_id, key_id, time, doc)
		VALUES (h.user_id, h.key_id, p_time,
			p_usage || jsonb_build_object('user_id', h.user_id, 'key_id', h.key_id, 'credits', charged));
	INSERT INTO gw_usage_totals VALUES (h.user_id, 'd', p_day, 1, p_tokens), (h.user_id, 'm', p_month, 1, p_tokens)
		ON CONFLICT (user_id, kind, period) DO UPDATE
		SET requests = gw_usage_totals.requests + 1, tokens = gw_usage_totals.tokens + EXCLUDED.tokens;
	status := 'ok';
END $$;

CREATE OR REPLACE FUNCTION gw_refund(p_hold bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	h gw_holds%ROWTYPE;
BEGIN
	DELETE FROM gw_holds WHERE id = p_hold RETURNING * INTO h;
	IF NOT FOUND THEN
		RETURN 'settled';
	END IF;
	IF h.state = 'open' THEN
		IF h.slot THEN
			UPDATE gw_keys SET inflight = inflight - 1 WHERE id = h.key_id;
		END IF;
		UPDATE gw_accounts SET reserved = reserved - h.amount, holds = holds - 1, held_tokens = held_tokens - h.tokens
			WHERE user_id = h.user_id;
	END IF;
	IF h.counted_at IS NOT NULL AND h.tokens <> 0 THEN
		PERFORM gw_rate_correct(h.user_id, h.key_id, h.counted_at, -h.tokens);
	END IF;
	RETURN 'ok';
END $$;

CREATE OR REPLACE FUNCTION gw_release(p_nodes bigint[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	h record;
	n bigint := 0;
BEGIN
	FOR h IN SELECT id, user_id, key_id, amount, slot, tokens FROM gw_holds
		WHERE node_id = ANY (p_nodes) AND state = 'open' ORDER BY id FOR UPDATE SKIP LOCKED
	LOOP
		IF h.slot THEN
			UPDATE gw_keys SET inflight = inflight - 1 WHERE id = h.key_id;
		END IF;
		UPDATE gw_accounts SET reserved = reserved - h.amount, holds = holds - 1, held_tokens = held_tokens - h.tokens
			WHERE user_id = h.user_id;
		UPDATE gw_holds SET state = 'released' WHERE id = h.id;
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;
