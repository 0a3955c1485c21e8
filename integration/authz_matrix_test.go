package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// The authorization matrix: every route of the OpenAPI document (the
// management API's and the gateway's) is called by every caller of a
// representative set, and answers the status declared below. Refusals
// change nothing: the victim's account, keys, balance, limits, plan and
// audit log read the same before and after, and no refused gateway request
// reaches the upstream. A route added to the document without a row in
// matrixRoutes fails the test.

// matrixCaller is a caller of the matrix: a key of the victim with scope,
// or one of the special callers. grants lists what the scope grants, as
// "permission:resource", declared here rather than computed.
type matrixCaller struct {
	name   string
	scope  map[string]any // the victim's key with this scope; nil for the special callers
	grants []string
	full   bool
}

var (
	grantsRead  = []string{"read:api_keys", "read:usage", "read:profile", "read:models", "read:webhooks"}
	grantsWrite = []string{"write:api_keys", "write:chat", "write:profile", "write:webhooks"}
)

// Special callers.
const (
	callerNone     = "no credentials"
	callerAdmin    = "admin bearer"
	callerOther    = "another user's primary key"
	callerPrimary  = "the victim's primary key"
	callerExpired  = "expired key"
	callerInactive = "inactive key"
	callerDeleted  = "deleted key"
)

var matrixCallers = []matrixCaller{
	{name: callerNone},
	{name: callerAdmin},
	{name: callerExpired},
	{name: callerInactive},
	{name: callerDeleted},
	{name: "{}", scope: map[string]any{}},
	{name: "empty lists", scope: map[string]any{"read": []string{}, "write": []string{}}},
	{name: "admin *", scope: map[string]any{"admin": []string{"*"}}},
	{name: "read *", scope: map[string]any{"read": []string{"*"}}, grants: grantsRead},
	{name: "write *", scope: map[string]any{"write": []string{"*"}}, grants: grantsWrite},
	{name: "read api_keys", scope: map[string]any{"read": []string{"api_keys"}}, grants: []string{"read:api_keys"}},
	{name: "write api_keys", scope: map[string]any{"write": []string{"api_keys"}}, grants: []string{"write:api_keys"}},
	{name: "api_keys only", scope: map[string]any{"read": []string{"api_keys"}, "write": []string{"api_keys"}},
		grants: []string{"read:api_keys", "write:api_keys"}},
	{name: "write chat", scope: map[string]any{"write": []string{"chat"}}, grants: []string{"write:chat"}},
	{name: "read profile", scope: map[string]any{"read": []string{"profile"}}, grants: []string{"read:profile"}},
	{name: "write profile_update", scope: map[string]any{"write": []string{"profile_update"}}, grants: []string{"write:profile"}},
	{name: "read usage", scope: map[string]any{"read": []string{"usage"}}, grants: []string{"read:usage"}},
	{name: "read webhooks", scope: map[string]any{"read": []string{"webhooks"}}, grants: []string{"read:webhooks"}},
	{name: "write webhooks", scope: map[string]any{"write": []string{"webhooks"}}, grants: []string{"write:webhooks"}},
	{name: "write profile and usage", scope: map[string]any{"read": []string{"usage", "profile"}, "write": []string{"profile"}},
		grants: []string{"read:usage", "read:profile", "write:profile"}},
	{name: "read+write * without admin", scope: map[string]any{"read": []string{"*"}, "write": []string{"*"}},
		grants: append(slices.Clone(grantsRead), grantsWrite...)},
	{name: callerOther, full: true},
	{name: callerPrimary, full: true},
}

// matrixRoute is how to call one documented operation, and the status a
// caller allowed to call it gets.
type matrixRoute struct {
	ok          int
	path        func(f *matrixFixture) string // the path with its parameters; nil: the documented path
	body        func(f *matrixFixture) any
	victimOwned bool // names a record of the victim: another user gets 404
	destructive bool // after a success, the next caller needs a new fixture
}

func victimTarget(f *matrixFixture) string { return fmt.Sprintf("/user/api-keys/%d", f.targetID) }

func victimWebhook(f *matrixFixture) string { return fmt.Sprintf("/user/webhooks/%d", f.webhookID) }

// matrixRoutes declares every documented operation ("METHOD /path" as in
// the OpenAPI document).
var matrixRoutes = map[string]matrixRoute{
	"GET /health":             {ok: 200},
	"GET /":                   {ok: 200},
	"GET /favicon.ico":        {ok: 200},
	"GET /openapi.json":       {ok: 200},
	"GET /docs":               {ok: 200},
	"GET /redoc":              {ok: 200},
	"GET /docs/assets/{file}": {ok: 200, path: func(*matrixFixture) string { return "/docs/assets/swagger-init.js" }},
	"GET /plans":              {ok: 200},
	"GET /pricing":            {ok: 200},
	"GET /plans/{plan_id}":    {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/plans/%d", f.planID) }},
	"POST /auth/register": {ok: 200, body: func(f *matrixFixture) any {
		return map[string]any{"username": "r", "email": f.unique("reg") + "@example.com"}
	}},
	"POST /user/api-keys":                {ok: 200, body: func(f *matrixFixture) any { return map[string]any{"key_name": f.unique("k")} }},
	"GET /user/api-keys":                 {ok: 200},
	"PUT /user/api-keys/{key_id}":        {ok: 200, path: victimTarget, victimOwned: true, body: func(f *matrixFixture) any { return map[string]any{"key_name": f.unique("t")} }},
	"PUT /user/api-keys/{key_id} rotate": {ok: 200, path: victimTarget, victimOwned: true, body: func(*matrixFixture) any { return map[string]any{"action": "rotate"} }},
	"DELETE /user/api-keys/{key_id}":     {ok: 200, path: victimTarget, victimOwned: true, destructive: true, body: func(*matrixFixture) any { return map[string]any{"confirmation": "DELETE_KEY"} }},
	"POST /user/api-keys budget": {ok: 200, body: func(f *matrixFixture) any {
		return map[string]any{"key_name": f.unique("b"), "spend_limit": 1000, "spend_limit_reset": "daily"}
	}},
	"PUT /user/api-keys/{key_id} budget": {ok: 200, path: victimTarget, victimOwned: true, body: func(f *matrixFixture) any {
		*f.seq++
		return map[string]any{"spend_limit": 1000 + *f.seq, "spend_limit_reset": "monthly"}
	}},
	"PUT /admin/api-keys/{key_id}": {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/admin/api-keys/%d", f.targetID) },
		body: func(*matrixFixture) any { return map[string]any{"spend_limit": 1000000, "spend_limit_reset": "never"} }},
	"POST /admin/limit budget": {ok: 200, body: func(f *matrixFixture) any {
		return map[string]any{"user_id": f.victimID, "spend_limit": 1000000, "spend_limit_reset": "weekly"}
	}},
	"GET /user/api-keys/usage":      {ok: 200},
	"GET /user/api-keys/audit-logs": {ok: 200},
	"GET /user/balance":             {ok: 200},
	"GET /user/plan":                {ok: 200},
	"GET /user/plan/usage":          {ok: 200},
	"GET /user/plan/entitlements":   {ok: 200},
	"GET /user/profile":             {ok: 200},
	"PUT /user/profile":             {ok: 200, body: func(f *matrixFixture) any { return map[string]any{"name": f.unique("n")} }},
	"DELETE /user/account":          {ok: 200, destructive: true, body: func(*matrixFixture) any { return map[string]any{"confirmation": "DELETE_ACCOUNT"} }},
	"GET /user/monitor":             {ok: 200},
	"GET /user/usage":               {ok: 200},
	"GET /user/usage/daily":         {ok: 200},
	"GET /user/usage/export":        {ok: 200},
	"POST /admin/add_credits":       {ok: 200, body: func(f *matrixFixture) any { return map[string]any{"user_id": f.victimID, "credits": 1} }},
	"GET /admin/balance":            {ok: 200},
	"GET /admin/monitor":            {ok: 200},
	"POST /admin/limit": {ok: 200, body: func(f *matrixFixture) any {
		return map[string]any{"user_id": f.victimID, "rate_limits": generousLimits}
	}},
	"POST /admin/assign-plan":           {ok: 200, body: func(f *matrixFixture) any { return map[string]any{"user_id": f.victimID, "plan_id": f.planID} }},
	"GET /admin/plans":                  {ok: 200},
	"POST /admin/plans":                 {ok: 200, body: func(f *matrixFixture) any { return map[string]any{"name": f.unique("plan")} }},
	"PUT /admin/plans/{plan_id}":        {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/admin/plans/%d", f.planID) }, body: func(*matrixFixture) any { return map[string]any{"description": "d"} }},
	"DELETE /admin/plans/{plan_id}":     {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/admin/plans/%d", f.sparePlanID) }},
	"GET /admin/users/{user_id}":        {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/admin/users/%d", f.victimID) }},
	"GET /admin/users":                  {ok: 200},
	"GET /admin/users/{user_id}/usage":  {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/admin/users/%d/usage", f.victimID) }},
	"GET /admin/users/{user_id}/ledger": {ok: 200, path: func(f *matrixFixture) string { return fmt.Sprintf("/admin/users/%d/ledger", f.victimID) }},
	"GET /admin/stats":                  {ok: 200},
	"GET /admin/audit-logs":             {ok: 200},
	"GET /admin/audit-logs/verify":      {ok: 200},
	"GET /admin/audit-logs/export":      {ok: 200},
	"GET /admin/security":               {ok: 200},
	"GET /admin/backup":                 {ok: 200},
	"GET /admin/prices":                 {ok: 200},
	"POST /user/webhooks": {ok: 200, destructive: true, body: func(f *matrixFixture) any {
		return map[string]any{"url": "https://hooks.example.com/" + f.unique("h"), "events": []string{"balance.low"}}
	}},
	"GET /user/webhooks":                    {ok: 200},
	"GET /user/webhooks/deliveries":         {ok: 200},
	"DELETE /user/webhooks/{webhook_id}":    {ok: 200, path: victimWebhook, victimOwned: true, destructive: true},
	"POST /user/webhooks/{webhook_id}/test": {ok: 200, path: func(f *matrixFixture) string { return victimWebhook(f) + "/test" }, victimOwned: true},
	"GET /admin/webhooks/deliveries":        {ok: 200},
	"POST /v1/chat/completions":             {ok: 200, body: func(*matrixFixture) any { return chatBody("gpt-4o-mini") }},
	"POST /v1/completions": {ok: 200, body: func(*matrixFixture) any {
		return map[string]any{"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 16}
	}},
	"POST /v1/embeddings": {ok: 200, body: func(*matrixFixture) any { return map[string]any{"model": "text-embedding-3-small", "input": "hi"} }},
	"GET /v1/models":      {ok: 200},
	"POST /v1/messages": {ok: 200, body: func(*matrixFixture) any {
		return map[string]any{"model": "gpt-4o-mini", "max_tokens": 16, "messages": []any{map[string]any{"role": "user", "content": "hi"}}}
	}},
	"POST /v1/responses":              {ok: 200, body: func(*matrixFixture) any { return map[string]any{"model": "gpt-4o-mini", "input": "hi"} }},
	"GET /v1/responses/{response_id}": {ok: 200, path: func(*matrixFixture) string { return "/v1/responses/resp_1" }},
	"GET /v1/models/{model}":          {ok: 200, path: func(*matrixFixture) string { return "/v1/models/gpt-4o-mini" }},
}

// budgetRows are the documented operations the matrix also calls with the
// spend budget fields (as "<operation> budget").
var budgetRows = map[string]bool{
	"POST /user/api-keys":         true,
	"PUT /user/api-keys/{key_id}": true,
	"POST /admin/limit":           true,
}

// generousLimits keep the matrix's requests clear of the rate limits.
var generousLimits = map[string]any{"requests_per_minute": 100000, "requests_per_hour": 100000, "requests_per_day": 100000,
	"tokens_per_minute": 10000000, "tokens_per_hour": 10000000, "tokens_per_day": 10000000}

// documentedOperation is an operation of the OpenAPI document as the
// matrix needs it.
type documentedOperation struct {
	key, method, path string
	level             string // public, user, admin, gateway
	scope             string // x-required-scope: "read:usage", "full", "none"
}

// documentedOperations reads every operation of admin/openapi.json.
func loadDocumentedOperations(t *testing.T) []documentedOperation {
	t.Helper()
	b, err := os.ReadFile("../admin/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]struct {
			Security []map[string][]string `json:"security"`
			Scope    string                `json:"x-required-scope"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var ops []documentedOperation
	for p, item := range doc.Paths {
		for method, op := range item {
			o := documentedOperation{key: strings.ToUpper(method) + " " + p, method: strings.ToUpper(method), path: p, level: "public", scope: op.Scope}
			for _, req := range op.Security {
				switch {
				case req["adminKey"] != nil:
					o.level = "admin"
				case req["apiKeyHeader"] != nil:
					o.level = "gateway"
				case req["userKey"] != nil && o.level == "public":
					o.level = "user"
				}
			}
			ops = append(ops, o)
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].key < ops[j].key })
	return ops
}

// expectedStatus is the matrix's rule: public routes answer everyone;
// admin routes only the admin bearer (401 else); user and gateway routes
// need a usable key (401 else) whose scope grants the route's need (403
// else), and another user's key reaches only its own account (404 for the
// victim's records).
func expectedStatus(op documentedOperation, rt matrixRoute, c matrixCaller) int {
	switch op.level {
	case "public":
		return rt.ok
	case "admin":
		if c.name == callerAdmin {
			return rt.ok
		}
		return 401
	}
	switch c.name {
	case callerNone, callerAdmin, callerExpired, callerInactive, callerDeleted:
		return 401
	}
	granted := op.scope == "none" || c.full || (op.scope != "full" && slices.Contains(c.grants, op.scope))
	switch {
	case !granted:
		return 403
	case c.name == callerOther && rt.victimOwned:
		return 404
	}
	return rt.ok
}

// matrixFixture is a victim with a key per caller, another user, and the
// plans the routes name.
type matrixFixture struct {
	g                   *gateway
	seq                 *int
	victimID            int64
	targetID            int64 // a key of the victim with scope {} (covered by every key)
	webhookID           int64 // a webhook of the victim
	planID, sparePlanID int64
	keys                map[string]string // caller name → key
}

func (f *matrixFixture) unique(prefix string) string {
	*f.seq++
	return fmt.Sprintf("%s%d", prefix, *f.seq)
}

func newMatrixFixture(t *testing.T, g *gateway, seq *int, planID int64) *matrixFixture {
	t.Helper()
	f := &matrixFixture{g: g, seq: seq, planID: planID, keys: map[string]string{}}
	primary, vid := g.registerUser(f.unique("victim") + "@example.com")
	f.victimID = vid
	f.keys[callerPrimary] = primary
	expiresAt := time.Now().Add(time.Second)
	f.keys[callerExpired], _ = g.createKey(primary, map[string]any{"key_name": "expired", "expiration_date": expiresAt.UTC().Format(time.RFC3339Nano)})
	other, oid := g.registerUser(f.unique("other") + "@example.com")
	f.keys[callerOther] = other
	for _, uid := range []int64{vid, oid} {
		g.do("POST", "/admin/assign-plan", map[string]any{"user_id": uid, "plan_id": planID}, adminAuth()).mustStatus(t, 200, "assign plan")
		g.do("POST", "/admin/limit", map[string]any{"user_id": uid, "rate_limits": generousLimits}, adminAuth()).mustStatus(t, 200, "limits")
	}
	for _, c := range matrixCallers {
		if c.scope != nil {
			f.keys[c.name], _ = g.createKey(primary, map[string]any{"key_name": c.name, "scope_permissions": c.scope})
		}
	}
	var inactiveID, deletedID int64
	f.keys[callerInactive], inactiveID = g.createKey(primary, map[string]any{"key_name": "inactive"})
	g.updateKey(primary, inactiveID, map[string]any{"is_active": false})
	f.keys[callerDeleted], deletedID = g.createKey(primary, map[string]any{"key_name": "deleted"})
	g.do("DELETE", fmt.Sprintf("/user/api-keys/%d", deletedID), map[string]any{"confirmation": "DELETE_KEY"}, bearer(primary)).mustStatus(t, 200, "delete key")
	_, f.targetID = g.createKey(primary, map[string]any{"key_name": "target", "scope_permissions": map[string]any{}})
	hook := g.do("POST", "/user/webhooks", map[string]any{"url": "https://hooks.example.com/victim"}, bearer(primary)).mustStatus(t, 200, "webhook").json()
	f.webhookID = int64(hook["id"].(float64))
	spare := g.do("POST", "/admin/plans", map[string]any{"name": f.unique("spare")}, adminAuth()).mustStatus(t, 200, "spare plan").json()
	f.sparePlanID = int64(spare["plan"].(map[string]any)["id"].(float64))
	time.Sleep(time.Until(expiresAt))
	return f
}

// snapshot is everything of the victim a refusal must leave as it was:
// the admin view of the user (profile, balance, keys, plan, limits) and
// their audit log, less the security events that record refusals.
func (f *matrixFixture) snapshot(t *testing.T) string {
	t.Helper()
	user := f.g.do("GET", fmt.Sprintf("/admin/users/%d", f.victimID), nil, adminAuth()).mustStatus(t, 200, "victim")
	audit := f.g.do("GET", fmt.Sprintf("/admin/audit-logs?user_id=%d&limit=1000", f.victimID), nil, adminAuth()).mustStatus(t, 200, "victim audit")
	var logs struct {
		Logs []map[string]any `json:"logs"`
	}
	if err := json.Unmarshal(audit.Body, &logs); err != nil {
		t.Fatal(err)
	}
	lines := []string{string(user.Body)}
	for _, e := range logs.Logs {
		if action, _ := e["action"].(string); !strings.HasPrefix(action, "security.") {
			lines = append(lines, fmt.Sprint(e["id"], " ", action))
		}
	}
	return strings.Join(lines, "\n")
}

// awaitSettled waits until the victim holds no reservation and the
// settlement is written: what the request just answered did is in the next
// snapshot.
func (f *matrixFixture) awaitSettled(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u := f.g.do("GET", fmt.Sprintf("/admin/users/%d", f.victimID), nil, adminAuth()).mustStatus(t, 200, "victim").json()
		if u["reserved"] == float64(0) {
			// A backup flushes pending settlements first (last_used_at
			// included), so the next snapshot holds all of it.
			f.g.do("GET", "/admin/backup", nil, adminAuth()).mustStatus(t, 200, "flush by backup")
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the victim still holds %v reserved credits", u["reserved"])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// changed describes the first difference between two snapshots.
func changed(before, after string) string {
	b, a := strings.Split(before, "\n"), strings.Split(after, "\n")
	for i := 0; i < max(len(a), len(b)); i++ {
		switch {
		case i >= len(b):
			return "new audit entry " + a[i]
		case i >= len(a):
			return "audit entry gone " + b[i]
		case a[i] != b[i]:
			at := 0
			for at < min(len(a[i]), len(b[i])) && a[i][at] == b[i][at] {
				at++
			}
			from := max(at-80, 0)
			return fmt.Sprintf("…%.200s became …%.200s", b[i][from:], a[i][from:])
		}
	}
	return ""
}

func (f *matrixFixture) headers(c matrixCaller) []string {
	switch c.name {
	case callerNone:
		return nil
	case callerAdmin:
		return []string{adminAuth()}
	}
	return []string{bearer(f.keys[c.name])}
}

func TestAuthorizationMatrix(t *testing.T) {
	up := startFakeOpenAI(t)
	g := startGateway(t, gatewayConfig{Upstream: up.hostPort(), GatewayBlock: "responses",
		SiteOptions: "@docs path / /favicon.ico /docs /docs/* /redoc /openapi.json\n\thandle @docs {\n\t\tgatewayz_api\n\t}"})
	plan := g.do("POST", "/admin/plans", map[string]any{"name": "Matrix", "daily_request_limit": 100000, "monthly_request_limit": 100000,
		"daily_token_limit": 100000000, "monthly_token_limit": 100000000}, adminAuth()).mustStatus(t, 200, "plan").json()
	planID := int64(plan["plan"].(map[string]any)["id"].(float64))
	seq := 0

	ops := loadDocumentedOperations(t)
	var cases []documentedOperation
	for _, op := range ops {
		cases = append(cases, op)
		if op.key == "PUT /user/api-keys/{key_id}" {
			rotate := op
			rotate.key += " rotate"
			cases = append(cases, rotate)
		}
		// The spend budget fields go through the same scope checks as
		// every other field of their route.
		if budgetRows[op.key] {
			budget := op
			budget.key += " budget"
			cases = append(cases, budget)
		}
	}
	documented := map[string]bool{}
	for _, op := range cases {
		documented[op.key] = true
		if _, ok := matrixRoutes[op.key]; !ok {
			t.Errorf("route %s is documented but has no row in matrixRoutes", op.key)
		}
		if (op.level == "user" || op.level == "gateway") && op.scope == "" {
			t.Errorf("route %s documents no x-required-scope", op.key)
		}
	}
	for key := range matrixRoutes {
		if !documented[key] {
			t.Errorf("matrixRoutes has %s, which the OpenAPI document lacks", key)
		}
	}

	f := newMatrixFixture(t, g, &seq, planID)

	// The gateway serves nothing the document does not list: the other
	// OpenAI paths a new route would most likely take answer 404 to a full
	// key, without reaching the upstream.
	for _, p := range []string{"/v1/responses", "/v1/images/generations", "/v1/audio/speech", "/v1/audio/transcriptions",
		"/v1/moderations", "/v1/files", "/v1/batches", "/v1/assistants", "/v1/fine_tuning/jobs", "/v1/chat", "/v1/engines"} {
		if documented["POST "+p] || documented["GET "+p] {
			continue
		}
		n := len(up.requests())
		for _, method := range []string{"GET", "POST"} {
			if r := g.do(method, p, map[string]any{"model": "gpt-4o-mini"}, bearer(f.keys[callerPrimary])); r.Status != 404 {
				t.Errorf("%s %s (undocumented): status %d, want 404", method, p, r.Status)
			}
		}
		if len(up.requests()) != n {
			t.Errorf("%s (undocumented) reached the upstream", p)
		}
	}
	for _, op := range cases {
		rt, ok := matrixRoutes[op.key]
		if !ok {
			continue
		}
		for _, c := range matrixCallers {
			p := op.path
			if rt.path != nil {
				p = rt.path(f)
			}
			var body any
			if rt.body != nil {
				body = rt.body(f)
			}
			want := expectedStatus(op, rt, c)
			before := f.snapshot(t)
			upstreamBefore := len(up.requests())
			r := g.do(op.method, p, body, f.headers(c)...)
			if r.Status != want {
				t.Errorf("%s by %s: status %d, want %d; body %.300s", op.key, c.name, r.Status, want, r.Body)
			}
			if r.Status >= 400 {
				if diff := changed(before, f.snapshot(t)); diff != "" {
					t.Errorf("%s by %s: refused with %d but the victim's state changed: %s", op.key, c.name, r.Status, diff)
				}
				if n := len(up.requests()); n != upstreamBefore {
					t.Errorf("%s by %s: refused with %d but the upstream got %d requests", op.key, c.name, r.Status, n-upstreamBefore)
				}
			}
			if r.Status < 400 && op.level == "gateway" {
				f.awaitSettled(t)
			}
			if r.Status < 400 && rt.destructive {
				f = newMatrixFixture(t, g, &seq, planID)
			}
		}
	}
}
