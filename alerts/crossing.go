package alerts

// Crossings: each alert fires when a value crosses its threshold, computed
// from the value before and after one change (a settlement, a top-up), so
// it fires once per crossing and again only after the value went back.
// Before/after pairs of one user come from the store's atomic update, so
// concurrent changes cannot both see the same crossing.

// LowBalanceCrossed reports whether the balance went from at or above
// threshold to below it. A threshold of 0 or less is off.
func LowBalanceCrossed(before, after, threshold int64) bool {
	return threshold > 0 && before >= threshold && after < threshold
}

// Depleted reports whether the balance went from positive to zero (or
// below, which a store never allows, but which still counts as empty).
func Depleted(before, after int64) bool {
	return before > 0 && after <= 0
}

// BudgetWarningPercent is the share of a key's spend limit at which
// key.budget_warning fires.
const BudgetWarningPercent = 80

// BudgetWarningCrossed reports whether a key's spend in its window went
// from below BudgetWarningPercent of limit to at or above it (and not
// straight to the limit, which is BudgetReached's). limit <= 0: no budget.
// Exact integer arithmetic: spend*100 >= limit*80.
func BudgetWarningCrossed(before, after, limit int64) bool {
	if limit <= 0 {
		return false
	}
	warn := func(v int64) bool { return v*100 >= limit*BudgetWarningPercent }
	return !warn(before) && warn(after) && !BudgetReached(before, after, limit)
}

// BudgetReached reports whether a key's spend in its window went from
// below limit to at or above it. A new window starts from zero spend, so
// the alert fires again in the next window.
func BudgetReached(before, after, limit int64) bool {
	return limit > 0 && before < limit && after >= limit
}
