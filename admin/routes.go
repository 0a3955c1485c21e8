package admin

import "net/http"

// route is one row of the API: the method and Go ServeMux pattern, who may
// call it, and the handler. Every route the API serves comes from routes(),
// so the OpenAPI document can be checked against this one table.
type route struct {
	Method  string
	Pattern string
	Auth    authLevel
	Handle  http.HandlerFunc
}

// routes is the route table of the management API.
func (h *Handler) routes() []route {
	return []route{
		// Public
		{"GET", "/health", public, h.health},
		{"POST", "/auth/register", public, h.register},
		{"GET", "/plans", public, h.listPlans},
		{"GET", "/plans/{plan_id}", public, h.getPlan},

		// Documentation (docs.go)
		{"GET", "/openapi.json", public, h.openAPI},
		{"GET", "/docs", public, h.swaggerUI},
		{"GET", "/redoc", public, h.redoc},
		{"GET", "/docs/assets/{file...}", public, h.docsAsset},

		// User (Bearer API key)
		{"POST", "/user/api-keys", user, h.createKey},
		{"GET", "/user/api-keys", user, h.listKeys},
		{"PUT", "/user/api-keys/{key_id}", user, h.updateKey},
		{"DELETE", "/user/api-keys/{key_id}", user, h.deleteKey},
		{"GET", "/user/api-keys/usage", user, h.keysUsage},
		{"GET", "/user/api-keys/audit-logs", user, h.userAuditLogs},
		{"GET", "/user/balance", user, h.userBalance},
		{"GET", "/user/plan", user, h.userPlan},
		{"GET", "/user/plan/usage", user, h.userPlanUsage},
		{"GET", "/user/plan/entitlements", user, h.userEntitlements},
		{"GET", "/user/profile", user, h.getProfile},
		{"PUT", "/user/profile", user, h.updateProfile},
		{"DELETE", "/user/account", user, h.deleteAccount},
		{"GET", "/user/monitor", user, h.userMonitor},
		{"GET", "/user/usage", user, h.userUsage},
		{"GET", "/user/usage/export", user, h.exportUsage},
		{"GET", "/user/usage/daily", user, h.userUsageDaily},

		// Admin (Bearer GATEWAYZ_ADMIN_KEY)
		{"POST", "/admin/add_credits", admin, h.addCredits},
		{"GET", "/admin/balance", admin, h.adminBalance},
		{"GET", "/admin/monitor", admin, h.adminMonitor},
		{"POST", "/admin/limit", admin, h.setLimits},
		{"POST", "/admin/assign-plan", admin, h.assignPlan},
		{"GET", "/admin/plans", admin, h.adminListPlans},
		{"POST", "/admin/plans", admin, h.createPlan},
		{"PUT", "/admin/plans/{plan_id}", admin, h.updatePlan},
		{"DELETE", "/admin/plans/{plan_id}", admin, h.deactivatePlan},
		{"GET", "/admin/users", admin, h.adminListUsers},
		{"GET", "/admin/users/{user_id}", admin, h.adminGetUser},
		{"GET", "/admin/users/{user_id}/usage", admin, h.adminUserUsage},
		{"GET", "/admin/users/{user_id}/ledger", admin, h.adminUserLedger},
		{"GET", "/admin/stats", admin, h.adminStats},
		{"GET", "/admin/audit-logs", admin, h.adminAuditLogs},
		{"GET", "/admin/audit-logs/verify", admin, h.verifyAudit},
		{"GET", "/admin/audit-logs/export", admin, h.exportAudit},
		{"GET", "/admin/security", admin, h.securityDashboard},
		{"GET", "/admin/backup", admin, h.backup},
	}
}

// buildMux registers every route of the table with its authentication.
func (h *Handler) buildMux() *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range h.routes() {
		mux.HandleFunc(rt.Method+" "+rt.Pattern, h.withAuth(rt.Auth, rt.Handle))
	}
	return mux
}
