-- Schema version 2: the reservation a request makes when the gateway picks
-- its cap. gw_reserve takes, in the same locked step, the share rule's
-- amount (storage.ReserveAmount, here gw_reserve_amount) of the available
-- balance, which needs the user's count of open holds; and it answers the
-- account's position, so a refusal can tell a short balance from credits
-- that open holds keep.

-- holds counts the account's open holds (gw_holds rows in state 'open'),
-- kept beside reserved by every function that opens or ends one.
ALTER TABLE gw_accounts ADD COLUMN holds bigint NOT NULL DEFAULT 0 CHECK (holds >= 0);
UPDATE gw_accounts a SET holds = h.n
	FROM (SELECT user_id, count(*) AS n FROM gw_holds WHERE state = 'open' GROUP BY user_id) h
	WHERE a.user_id = h.user_id;

-- gw_reserve_amount is storage.ReserveAmount: a fixed request (p_min <= 0
-- or >= p_max) takes p_max; a flexible one an equal share of what is
-- available between itself, the open holds and the waiting requests,
-- rounded down and kept between p_min and p_max.
CREATE FUNCTION gw_reserve_amount(p_available bigint, p_holds bigint, p_waiting bigint, p_min bigint, p_max bigint)
	RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN p_min <= 0 OR p_min >= p_max THEN p_max
		ELSE LEAST(GREATEST(GREATEST(p_available, 0) / (1 + GREATEST(p_holds, 0) + GREATEST(p_waiting, 0)), p_min), p_max)
	END
$$;

-- gw_reserve holds gw_reserve_amount (and a max_requests slot) for one
-- request when the available balance covers it. The key row is locked
-- before the account row, as in every function here. It answers the
-- account's balance, reserved credits and open holds: after the hold when
-- status is 'ok', as they were when it is 'insufficient'.
CREATE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text) LANGUAGE plpgsql AS $$
DECLARE
	v_slot boolean := false;
BEGIN
	IF p_max > 0 AND p_key <> 0 THEN
		UPDATE gw_keys SET inflight = inflight + 1 WHERE id = p_key AND requests_used + inflight < p_max;
		IF FOUND THEN
			v_slot := true;
		ELSIF EXISTS (SELECT 1 FROM gw_keys WHERE id = p_key) THEN
			status := 'request_limit';
			RETURN;
		END IF; -- a key deleted a moment ago: billed to the user without key counters
	END IF;
	SELECT a.credits, a.reserved, a.holds INTO balance, reserved_total, open_holds
		FROM gw_accounts a WHERE a.user_id = p_user FOR UPDATE;
	IF NOT FOUND THEN
		status := 'not_found';
	ELSE
		held := gw_reserve_amount(balance - reserved_total, open_holds, p_waiting, p_min, p_credits);
		IF balance - reserved_total < held THEN
			status := 'insufficient';
		END IF;
	END IF;
	IF status IS NOT NULL THEN
		IF v_slot THEN
			UPDATE gw_keys SET inflight = inflight - 1 WHERE id = p_key;
		END IF;
		RETURN;
	END IF;
	UPDATE gw_accounts a SET reserved = a.reserved + held, holds = a.holds + 1 WHERE a.user_id = p_user;
	reserved_total := reserved_total + held;
	open_holds := open_holds + 1;
	INSERT INTO gw_holds (user_id, key_id, amount, slot, node_id) VALUES (p_user, p_key, held, v_slot, p_node)
		RETURNING id INTO hold_id;
	status := 'ok';
END $$;

-- The version 1 call, for nodes of an older build still running while the
-- schema is upgraded: a fixed reservation, counted in holds.
CREATE OR REPLACE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_max bigint, p_node bigint,
	OUT hold_id bigint, OUT status text) LANGUAGE sql AS $$
	SELECT r.hold_id, r.status FROM gw_reserve(p_user, p_key, p_credits, 0, 0, p_max, p_node) r
$$;

-- gw_settle, gw_refund and gw_release as in version 1, ending the hold in
-- holds too.
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
		UPDATE gw_accounts SET reserved = reserved - h.amount, holds = holds - 1 WHERE user_id = h.user_id
			RETURNING credits, reserved INTO v_credits, v_reserved;
	ELSE
		SELECT credits, reserved INTO v_credits, v_reserved FROM gw_accounts WHERE user_id = h.user_id FOR UPDATE;
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
		UPDATE gw_accounts SET reserved = reserved - h.amount, holds = holds - 1 WHERE user_id = h.user_id;
	END IF;
	RETURN 'ok';
END $$;

CREATE OR REPLACE FUNCTION gw_release(p_nodes bigint[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	h record;
	n bigint := 0;
BEGIN
	FOR h IN SELECT id, user_id, key_id, amount, slot FROM gw_holds
		WHERE node_id = ANY (p_nodes) AND state = 'open' ORDER BY id FOR UPDATE SKIP LOCKED
	LOOP
		IF h.slot THEN
			UPDATE gw_keys SET inflight = inflight - 1 WHERE id = h.key_id;
		END IF;
		UPDATE gw_accounts SET reserved = reserved - h.amount, holds = holds - 1 WHERE user_id = h.user_id;
		UPDATE gw_holds SET state = 'released' WHERE id = h.id;
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;
