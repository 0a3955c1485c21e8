package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// Spend budgets at admission: the key's budget (a field of the key) and
// the user's (set by an admin, part of the user's policy) become the
// budget windows of the reservation, which the store checks in the same
// atomic step as the balance (storage/budget.go). A refusal is a 402 that
// says when the budget resets. A spent budget is refused at once, whatever
// the balance: credit_wait is for credits. Only when the window's spend
// leaves room that requests in flight hold does the request wait for
// them, in the same queue and bound as for held credits, since they give
// back what they do not spend (a budget is not refused falsely because a
// request without max_tokens held all its room for a moment).

// budgetWindows returns the key's and the user's budget windows at now.
func (a *admission) budgetWindows(now time.Time) (key, user storage.BudgetWindow) {
	key = a.key.Budget.Window(now)
	if a.rl != nil && a.rl.pol != nil {
		user = a.rl.pol.budget.Window(now)
	}
	return key, user
}

// budgetReset returns the reset period of the budget a refusal is about.
func (a *admission) budgetReset(be *storage.BudgetExceeded) storage.BudgetReset {
	if be.Key {
		return a.key.Budget.Reset
	}
	if a.rl != nil && a.rl.pol != nil {
		return a.rl.pol.budget.Reset
	}
	return storage.ResetNever
}

// budgetHeld reports whether what the budget's window spent still leaves
// room for the least the request could hold, so that the refusal is only
// due to requests in flight holding the rest (they give back what they do
// not spend when they settle). Pure.
func (plan reservationPlan) budgetHeld(be *storage.BudgetExceeded) bool {
	return be.Reserved > 0 && be.Used+plan.minCredits <= be.Limit
}

// Codes of the budget refusals.
const (
	codeKeyBudget  = "key_budget_exceeded"
	codeUserBudget = "user_budget_exceeded"
)

// budgetRefusal is the 402 of a request a spend budget cannot cover. It
// says what is left, when the budget resets, and, when the request's cap
// is the client's own and a lower one would fit, the cap that would. Pure.
func (plan reservationPlan) budgetRefusal(p pricing, ir *inferenceRequest, be *storage.BudgetExceeded, reset storage.BudgetReset, now time.Time) *gatewayError {
	// The code leads the message too: Anthropic's error shape has no
	// field for it.
	who, code := "API key", codeKeyBudget
	if !be.Key {
		who, code = "Account", codeUserBudget
	}
	left := max(be.Limit-be.Used-be.Reserved, 0)
	msg := fmt.Sprintf("%s spend budget exceeded (%s): %d of %d credits spent", who, code, be.Used, be.Limit)
	if be.Reserved > 0 {
		msg += fmt.Sprintf(" and %d held by requests in flight", be.Reserved)
	}
	msg += fmt.Sprintf(" this window; this request needs up to %d", be.Needed)
	if left > 0 && plan.clientCap && plan.minCredits == plan.maxCredits && ir.Endpoint != endpointEmbeddings {
		if afford := p.maxCompletionFor(ir.Model, ir.PromptTokens, left) / max(ir.choices, 1); afford >= 1 {
			msg += fmt.Sprintf("; lower max_tokens to at most %d", afford)
		}
	}
	if end := reset.WindowEnd(now); !end.IsZero() {
		msg += fmt.Sprintf(". The budget resets at %s (%s)", end.UTC().Format(time.RFC3339), reset)
	} else {
		msg += ". The budget does not reset: raise spend_limit to continue"
	}
	return errorf(http.StatusPaymentRequired, "insufficient_quota", code, msg)
}

// asBudgetExceeded returns the budget refusal err is, if any.
func asBudgetExceeded(err error) *storage.BudgetExceeded {
	var be *storage.BudgetExceeded
	if errors.As(err, &be) {
		return be
	}
	return nil
}

// SpendNotice is what one settlement did to the spend budgets of its key
// and user: the windows charged, the spend before and after the charge and
// the limits (storage.SpendChange; Valid false where nothing was counted).
type SpendNotice struct {
	UserID, KeyID int64
	Spent         storage.SettleSpend
	// KeyReset and UserReset are the budgets' periods (when they reset).
	KeyReset, UserReset storage.BudgetReset
}

// observeSpend hands a settlement's budget changes to the state's spent
// hook, if any.
func (g *Gateway) observeSpend(adm *admission, res *storage.Reservation) {
	hook := g.state.spent
	if hook == nil || res == nil || res.Spent == nil {
		return
	}
	n := SpendNotice{UserID: adm.key.UserID, KeyID: adm.key.ID, Spent: *res.Spent, KeyReset: adm.key.Budget.Reset}
	if adm.rl != nil && adm.rl.pol != nil {
		n.UserReset = adm.rl.pol.budget.Reset
	}
	hook(n)
}
