package admin

import (
	"net/http"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

// route is one row of the API: the method and Go ServeMux pattern, who may
// call it, and the handler. Every route the API serves comes from routes(),
// so the OpenAPI document can be checked against this one table.
type route struct {
	Method  string
	Pattern string
	Auth    authLevel
	Scope   need // what the calling key's scope must grant (user routes)
	Handle  http.HandlerFunc
}

// routes is the route table of the management API.
func (h *Handler) routes() []route {
	return []route{
		// Public
		{"GET", "/health", public, noScope, h.health},
		{"POST", "/auth/register", public, noScope, h.register},
		{"GET", "/plans", public, noScope, h.listPlans},
		{"GET", "/plans/{plan_id}", public, noScope, h.getPlan},
		{"GET", "/pricing", public, noScope, h.pricing},

		// Landing page (home.go)
		{"GET", "/{$}", public, noScope, h.homeHandler},
		{"GET", "/favicon.ico", public, noScope, h.favicon},

		// Documentation (docs.go)
		{"GET", "/openapi.json", public, noScope, h.openAPI},
		{"GET", "/docs", public, noScope, h.swaggerUI},
		{"GET", "/redoc", public, noScope, h.redoc},
		{"GET", "/docs/assets/{file...}", public, noScope, h.docsAsset},

		// User (Bearer API key)
		{"POST", "/user/api-keys", user, needWrite(storage.ResourceAPIKeys, "create API keys"), h.createKey},
		{"GET", "/user/api-keys", user, needRead(storage.ResourceAPIKeys, "list API keys"), h.listKeys},
		{"PUT", "/user/api-keys/{key_id}", user, needWrite(storage.ResourceAPIKeys, "update API keys"), h.updateKey},
		{"DELETE", "/user/api-keys/{key_id}", user, needWrite(storage.ResourceAPIKeys, "delete API keys"), h.deleteKey},
		{"GET", "/user/api-keys/usage", user, needRead(storage.ResourceUsage, "read key usage"), h.keysUsage},
		{"GET", "/user/api-keys/audit-logs", user, needRead(storage.ResourceAPIKeys, "read audit logs"), h.userAuditLogs},
		{"GET", "/user/balance", user, needRead(storage.ResourceUsage, "read the balance"), h.userBalance},
		{"GET", "/user/plan", user, needRead(storage.ResourceUsage, "read the plan"), h.userPlan},
		{"GET", "/user/plan/usage", user, needRead(storage.ResourceUsage, "read plan usage"), h.userPlanUsage},
		{"GET", "/user/plan/entitlements", user, needRead(storage.ResourceUsage, "read plan entitlements"), h.userEntitlements},
		{"GET", "/user/profile", user, needRead(storage.ResourceProfile, "read the profile"), h.getProfile},
		{"PUT", "/user/profile", user, needWrite(storage.ResourceProfile, "update the profile"), h.updateProfile},
		{"DELETE", "/user/account", user, needFullScope, h.deleteAccount},
		{"GET", "/user/monitor", user, needRead(storage.ResourceUsage, "read usage"), h.userMonitor},
		{"GET", "/user/usage", user, needRead(storage.ResourceUsage, "read usage"), h.userUsage},
		{"GET", "/user/usage/export", user, needRead(storage.ResourceUsage, "export usage"), h.exportUsage},
		{"GET", "/user/usage/daily", user, needRead(storage.ResourceUsage, "read usage"), h.userUsageDaily},
		{"POST", "/user/webhooks", user, needWrite(storage.ResourceWebhooks, "create webhooks"), h.createWebhook},
		{"GET", "/user/webhooks", user, needRead(storage.ResourceWebhooks, "list webhooks"), h.listWebhooks},
		{"GET", "/user/webhooks/deliveries", user, needRead(storage.ResourceWebhooks, "read webhook deliveries"), h.userDeliveries},
		{"DELETE", "/user/webhooks/{webhook_id}", user, needWrite(storage.ResourceWebhooks, "delete webhooks"), h.deleteWebhook},
		{"POST", "/user/webhooks/{webhook_id}/test", user, needWrite(storage.ResourceWebhooks, "test webhooks"), h.testWebhook},

		// Admin (Bearer GATEWAYZ_ADMIN_KEY)
		{"POST", "/admin/add_credits", admin, noScope, h.addCredits},
		{"GET", "/admin/balance", admin, noScope, h.adminBalance},
		{"GET", "/admin/monitor", admin, noScope, h.adminMonitor},
		{"POST", "/admin/limit", admin, noScope, h.setLimits},
		{"PUT", "/admin/api-keys/{key_id}", admin, noScope, h.adminUpdateKeyBudget},
		{"POST", "/admin/assign-plan", admin, noScope, h.assignPlan},
		{"GET", "/admin/plans", admin, noScope, h.adminListPlans},
		{"POST", "/admin/plans", admin, noScope, h.createPlan},
		{"PUT", "/admin/plans/{plan_id}", admin, noScope, h.updatePlan},
		{"DELETE", "/admin/plans/{plan_id}", admin, noScope, h.deactivatePlan},
		{"GET", "/admin/users", admin, noScope, h.adminListUsers},
		{"GET", "/admin/users/{user_id}", admin, noScope, h.adminGetUser},
		{"GET", "/admin/users/{user_id}/usage", admin, noScope, h.adminUserUsage},
		{"GET", "/admin/users/{user_id}/ledger", admin, noScope, h.adminUserLedger},
		{"GET", "/admin/stats", admin, noScope, h.adminStats},
		{"GET", "/admin/audit-logs", admin, noScope, h.adminAuditLogs},
		{"GET", "/admin/audit-logs/verify", admin, noScope, h.verifyAudit},
		{"GET", "/admin/audit-logs/export", admin, noScope, h.exportAudit},
		{"GET", "/admin/security", admin, noScope, h.securityDashboard},
		{"GET", "/admin/backup", admin, noScope, h.backup},
		{"GET", "/admin/prices", admin, noScope, h.adminPrices},
		{"GET", "/admin/webhooks/deliveries", admin, noScope, h.adminDeliveries},
	}
}

// buildMux registers every route of the table with its authentication.
func (h *Handler) buildMux() *http.ServeMux {
	mux := http.NewServeMux()
	for _, rt := range h.routes() {
		mux.HandleFunc(rt.Method+" "+rt.Pattern, h.withAuth(rt.Auth, rt.Scope, rt.Handle))
	}
	return mux
}
