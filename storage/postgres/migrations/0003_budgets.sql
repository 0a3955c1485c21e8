-- Schema version 3: spend budgets (storage/budget.go). A key's budget is
-- part of its document; a user's, set by an admin, is gw_user_budgets. The
-- spend of a key and of a user is counted beside their request counters
-- and balance: the window it counts (spend_window, its start; the
-- never-ending window starts at 0001-01-01), what was charged in it
-- (spend_used) and what open holds made in it keep (spend_reserved). A
-- hold remembers the windows it counts in and the limits it was admitted
-- under, so its settlement charges the window it was reserved in. Existing
-- keys and users have no limit and have spent nothing.

ALTER TABLE gw_keys
	ADD COLUMN spend_window   timestamptz NOT NULL DEFAULT '0001-01-01 00:00:00+00',
	ADD COLUMN spend_used     bigint NOT NULL DEFAULT 0,
	ADD COLUMN spend_reserved bigint NOT NULL DEFAULT 0 CHECK (spend_reserved >= 0);

ALTER TABLE gw_accounts
	ADD COLUMN spend_window   timestamptz NOT NULL DEFAULT '0001-01-01 00:00:00+00',
	ADD COLUMN spend_used     bigint NOT NULL DEFAULT 0,
	ADD COLUMN spend_reserved bigint NOT NULL DEFAULT 0 CHECK (spend_reserved >= 0);

-- Holds made before this version count in no window (null).
ALTER TABLE gw_holds
	ADD COLUMN key_window  timestamptz,
	ADD COLUMN key_limit   bigint,
	ADD COLUMN user_window timestamptz,
	ADD COLUMN user_limit  bigint;

CREATE TABLE gw_user_budgets (
	user_id     bigint PRIMARY KEY REFERENCES gw_users ON DELETE CASCADE,
	spend_limit bigint CHECK (spend_limit >= 0), -- null: none (the period is kept)
	reset       text NOT NULL CHECK (reset IN ('never', 'daily', 'weekly', 'monthly'))
);

-- gw_reserve with budgets: with the key row, then the account row locked,
-- it rolls each spend window forward to the caller's (never back: a node
-- whose clock is behind counts in the later window), and holds
-- gw_reserve_amount of the least of the available balance and what the
-- key's and the user's limits (null: none) leave in their windows. Status
-- 'key_budget' or 'user_budget' refuses it, answering that window's spend
-- and holds in budget_used and budget_reserved; the key's budget is
-- checked first, then the user's, then the balance.
CREATE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint, p_key_window timestamptz, p_key_limit bigint,
	p_user_window timestamptz, p_user_limit bigint,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text, OUT budget_used bigint, OUT budget_reserved bigint) LANGUAGE plpgsql AS $$
DECLARE
	v_key boolean := false;
	v_slot boolean := false;
	v_used bigint;
	v_inflight bigint;
	v_kw timestamptz;
	v_ku bigint;
	v_kr bigint;
	v_uw timestamptz;
	v_uu bigint;
	v_ur bigint;
	v_key_room bigint := 4611686018427387904; -- no limit
	v_user_room bigint := 4611686018427387904;
BEGIN
	IF p_key <> 0 THEN
		SELECT k.requests_used, k.inflight, k.spend_window, k.spend_used, k.spend_reserved
			INTO v_used, v_inflight, v_kw, v_ku, v_kr
			FROM gw_keys k WHERE k.id = p_key FOR UPDATE;
		v_key := FOUND; -- a key deleted a moment ago: billed to the user without key counters
	END IF;
	IF v_key THEN
		IF p_max > 0 THEN
			IF v_used + v_inflight >= p_max THEN
				status := 'request_limit';
				RETURN;
			END IF;
			v_slot := true;
		END IF;
		IF p_key_window > v_kw THEN
			v_kw := p_key_window; v_ku := 0; v_kr := 0;
		END IF;
		IF p_key_limit IS NOT NULL THEN
			v_key_room := p_key_limit - v_ku - v_kr;
		END IF;
	END IF;
	SELECT a.credits, a.reserved, a.holds, a.spend_window, a.spend_used, a.spend_reserved
		INTO balance, reserved_total, open_holds, v_uw, v_uu, v_ur
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
	held := gw_reserve_amount(LEAST(balance - reserved_total, v_key_room, v_user_room), open_holds, p_waiting, p_min, p_credits);
	IF v_key_room < held THEN
		status := 'key_budget'; budget_used := v_ku; budget_reserved := v_kr;
		RETURN;
	ELSIF v_user_room < held THEN
		status := 'user_budget'; budget_used := v_uu; budget_reserved := v_ur;
		RETURN;
	ELSIF balance - reserved_total < held THEN
		status := 'insufficient';
		RETURN;
	END IF;
	IF v_key THEN
		UPDATE gw_keys SET inflight = inflight + CASE WHEN v_slot THEN 1 ELSE 0 END,
			spend_window = v_kw, spend_used = v_ku, spend_reserved = v_kr + held
		WHERE id = p_key;
	END IF;
	UPDATE gw_accounts a SET reserved = a.reserved + held, holds = a.holds + 1,
		spend_window = v_uw, spend_used = v_uu, spend_reserved = v_ur + held
	WHERE a.user_id = p_user;
	reserved_total := reserved_total + held;
	open_holds := open_holds + 1;
	INSERT INTO gw_holds (user_id, key_id, amount, slot, node_id, key_window, key_limit, user_window, user_limit)
		VALUES (p_user, p_key, held, v_slot, p_node, CASE WHEN v_key THEN v_kw END, p_key_limit, v_uw, p_user_limit)
		RETURNING id INTO hold_id;
	status := 'ok';
END $$;

-- The version 2 call, for nodes of an older build still running while the
-- schema is upgraded: no limits, counted in the windows in force.
CREATE OR REPLACE FUNCTION gw_reserve(p_user bigint, p_key bigint, p_credits bigint, p_min bigint, p_waiting bigint,
	p_max bigint, p_node bigint,
	OUT hold_id bigint, OUT held bigint, OUT balance bigint, OUT reserved_total bigint, OUT open_holds bigint,
	OUT status text) LANGUAGE sql AS $$
	SELECT r.hold_id, r.held, r.balance, r.reserved_total, r.open_holds, r.status
	FROM gw_reserve(p_user, p_key, p_credits, p_min, p_waiting, p_max, p_node, NULL, NULL, NULL, NULL) r
$$;

-- gw_settle_spend is gw_settle that also charges the hold's spend windows
-- and answers what it did to them. The charge is capped by the balance, as
-- before, and by what each limited window has left once the hold is
-- released; a window that ended since the hold was made is no longer
-- counted, and its charge is capped by the hold (what that window let it
-- take). key_tracked and user_tracked say the charge went to a window still
-- counted, whose spend went from *_before to *_after; *_limit are the
-- hold's limits.
CREATE FUNCTION gw_settle_spend(p_hold bigint, p_cost bigint, p_now timestamptz, p_time timestamptz,
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
		INSERT INTO gw_ledger (user_id, kind, amount, balance_after, key_id, request_id, time)
			VALUES (h.user_id, 'charge', -charged, balance, h.key_id, p_request_id, p_now);
	END IF;
	INSERT INTO gw_usage (user_id, key_id, time, doc)
		VALUES (h.user_id, h.key_id, p_time,
			p_usage || jsonb_build_object('user_id', h.user_id, 'key_id', h.key_id, 'credits', charged));
	INSERT INTO gw_usage_totals VALUES (h.user_id, 'd', p_day, 1, p_tokens), (h.user_id, 'm', p_month, 1, p_tokens)
		ON CONFLICT (user_id, kind, period) DO UPDATE
		SET requests = gw_usage_totals.requests + 1, tokens = gw_usage_totals.tokens + EXCLUDED.tokens;
	key_limit := h.key_limit; user_limit := h.user_limit;
	key_window := v_kw; key_before := v_ku; key_after := v_ku + CASE WHEN key_tracked THEN charged ELSE 0 END;
	user_window := v_uw; user_before := v_uu; user_after := v_uu + CASE WHEN user_tracked THEN charged ELSE 0 END;
	status := 'ok';
END $$;

-- gw_settle (the call of every build) is gw_settle_spend's settlement.
CREATE OR REPLACE FUNCTION gw_settle(p_hold bigint, p_cost bigint, p_now timestamptz, p_time timestamptz,
	p_day integer, p_month integer, p_tokens bigint, p_request_id text, p_usage jsonb,
	OUT charged bigint, OUT balance bigint, OUT status text) LANGUAGE sql AS $$
	SELECT s.charged, s.balance, s.status
	FROM gw_settle_spend(p_hold, p_cost, p_now, p_time, p_day, p_month, p_tokens, p_request_id, p_usage) s
$$;

-- gw_refund and gw_release end the hold in its spend windows too.
CREATE OR REPLACE FUNCTION gw_refund(p_hold bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	h gw_holds%ROWTYPE;
BEGIN
	DELETE FROM gw_holds WHERE id = p_hold RETURNING * INTO h;
	IF NOT FOUND THEN
		RETURN 'settled';
	END IF;
	IF h.state = 'open' THEN
		PERFORM gw_end_hold(h.user_id, h.key_id, h.amount, h.slot, h.key_window, h.user_window);
	END IF;
	RETURN 'ok';
END $$;

CREATE OR REPLACE FUNCTION gw_release(p_nodes bigint[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
	h record;
	n bigint := 0;
BEGIN
	FOR h IN SELECT id, user_id, key_id, amount, slot, key_window, user_window FROM gw_holds
		WHERE node_id = ANY (p_nodes) AND state = 'open' ORDER BY id FOR UPDATE SKIP LOCKED
	LOOP
		PERFORM gw_end_hold(h.user_id, h.key_id, h.amount, h.slot, h.key_window, h.user_window);
		UPDATE gw_holds SET state = 'released' WHERE id = h.id;
		n := n + 1;
	END LOOP;
	RETURN n;
END $$;

-- gw_end_hold takes an open hold out of the key's and the account's
-- counters: its request slot, its reserved credits, and its part of the
-- spend windows it was made in (when they are still the ones counted).
CREATE FUNCTION gw_end_hold(p_user bigint, p_key bigint, p_amount bigint, p_slot boolean,
	p_key_window timestamptz, p_user_window timestamptz) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	IF p_key <> 0 THEN
		UPDATE gw_keys SET inflight = inflight - CASE WHEN p_slot THEN 1 ELSE 0 END,
			spend_reserved = spend_reserved - CASE WHEN spend_window = p_key_window THEN p_amount ELSE 0 END
		WHERE id = p_key;
	END IF;
	UPDATE gw_accounts SET reserved = reserved - p_amount, holds = holds - 1,
		spend_reserved = spend_reserved - CASE WHEN spend_window = p_user_window THEN p_amount ELSE 0 END
	WHERE user_id = p_user;
END $$;
