package caddymodule

import "strings"

// Request variables set once the body is parsed, so that Caddy's own
// matchers can route by model after the gateway, for example
//
//	@anthropic vars gatewayz_provider anthropic
//	reverse_proxy @anthropic anthropic-upstream:443
//	@llama vars_regexp gatewayz_model ^meta-llama/
//
// and placeholders ({http.vars.gatewayz_model}) can log or forward it.
const (
	varModel    = "gatewayz_model"    // the request's model, as sent
	varProvider = "gatewayz_provider" // the model's prefix before "/", "" without one
)

// setModelVars sets the model variables of a metered request, in the
// vars map already looked up (caddyhttp.SetVar would walk the context
// chain for it twice).
func (rc *requestCtx) setModelVars(model string) {
	rc.setVar(varModel, model)
	rc.setVar(varProvider, modelProvider(model))
}

// modelProvider returns the provider prefix of a model name
// ("anthropic/claude-3-5-sonnet" → "anthropic"), "" when it has none.
func modelProvider(model string) string {
	provider, _, ok := strings.Cut(model, "/")
	if !ok {
		return ""
	}
	return provider
}
