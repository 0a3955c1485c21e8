-- Schema version 7: settlements and refunds name the hold's user and key.
--
-- A node may run gw_reserve with synchronous_commit off (Options.
-- AsyncReserve): the reservation then commits without waiting for the WAL
-- flush. A database crash can lose the last such reservations, each whole
-- (the hold and all it counted: reserved credits, the key's request slot,
-- the spend windows' reserved part, the rate counts: one transaction). A
-- settlement is durable and flushes the WAL before it returns, so the
-- reservation of every settled request is on disk by then (the WAL is
-- written in order).
--
-- What a lost reservation leaves behind: the node that made it still has
-- its id, and the hold id sequence may fall back with the lost WAL, so the
-- same id can be handed out again, to another request. gw_settle_held and
-- gw_refund_held therefore end a hold only when it is the caller's user's
-- and key's; for an id that now names another user's or key's hold they
-- find nothing, as for a hold that was lost.

-- gw_settle_held is gw_settle_spend of the hold p_hold of user p_user and
-- key p_key; status 'settled' when no such hold exists.
CREATE FUNCTION gw_settle_held(p_hold bigint, p_cost bigint, p_now timestamptz, p_time timestamptz,
	p_day integer, p_month integer, p_tokens bigint, p_request_id text, p_usage jsonb, p_user bigint, p_key bigint,
	OUT charged bigint, OUT balance bigint, OUT status text,
	OUT key_tracked boolean, OUT key_window timestamptz, OUT key_before bigint, OUT key_after bigint, OUT key_limit bigint,
	OUT user_tracked boolean, OUT user_window timestamptz, OUT user_before bigint, OUT user_after bigint, OUT user_limit bigint)
	LANGUAGE plpgsql AS $$
BEGIN
	PERFORM 1 FROM gw_holds WHERE id = p_hold AND user_id = p_user AND key_id = p_key;
	IF NOT FOUND THEN
		status := 'settled';
		RETURN;
	END IF;
	SELECT s.charged, s.balance, s.status, s.key_tracked, s.key_window, s.key_before, s.key_after, s.key_limit,
		s.user_tracked, s.user_window, s.user_before, s.user_after, s.user_limit
		INTO charged, balance, status, key_tracked, key_window, key_before, key_after, key_limit,
			user_tracked, user_window, user_before, user_after, user_limit
		FROM gw_settle_spend(p_hold, p_cost, p_now, p_time, p_day, p_month, p_tokens, p_request_id, p_usage) s;
END $$;

-- gw_refund_held is gw_refund of the hold p_hold of user p_user and key
-- p_key; 'settled' when no such hold exists.
CREATE FUNCTION gw_refund_held(p_hold bigint, p_user bigint, p_key bigint) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	PERFORM 1 FROM gw_holds WHERE id = p_hold AND user_id = p_user AND key_id = p_key;
	IF NOT FOUND THEN
		RETURN 'settled';
	END IF;
	RETURN gw_refund(p_hold);
END $$;
