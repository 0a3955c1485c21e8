package caddymodule

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestEmptyCredential(t *testing.T) {
	t.Setenv("GWZ_TEST_UPSTREAM_KEY", "sk-set")
	t.Setenv("GWZ_TEST_EMPTY_KEY", "")
	repl := caddy.NewReplacer()
	for _, tt := range []struct {
		header string
		want   bool
	}{
		{"Bearer {env.GWZ_TEST_EMPTY_KEY}", true},
		{"bearer   {env.GWZ_TEST_EMPTY_KEY} ", true},
		{"{env.GWZ_TEST_EMPTY_KEY}", true},
		{"Bearer {env.GWZ_TEST_UPSTREAM_KEY}", false},
		{"{env.GWZ_TEST_UPSTREAM_KEY}", false},
		{"Bearer sk-literal", false},                      // no environment placeholder: not ours to judge
		{"Bearer {http.request.header.X-Key}", false},     // known only per request
		{"Bearer {env.GWZ_TEST_EMPTY_KEY}-suffix", false}, // something is left
	} {
		if got := emptyCredential(repl, tt.header); got != tt.want {
			t.Errorf("emptyCredential(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

func TestSecretOrigin(t *testing.T) {
	for _, tt := range []struct {
		secret, source, want string
	}{
		{"{env.GATEWAYZ_SECRET}", "config", "environment"},
		{"a-literal-secret-0123456789", "config", "config"},
		{"{env.GATEWAYZ_SECRET}", "file /data/gw.db.secret", "generated file /data/gw.db.secret"},
		{"", "file /data/gw.db.secret", "generated file /data/gw.db.secret"},
	} {
		a := &App{Secret: tt.secret, secretSource: tt.source}
		if got := a.secretOrigin(); got != tt.want {
			t.Errorf("secretOrigin(%q, %q) = %q, want %q", tt.secret, tt.source, got, tt.want)
		}
	}
}

func TestFindGatewayRoutes(t *testing.T) {
	t.Setenv("GWZ_TEST_EMPTY_KEY", "")
	proxy := func(dial, auth string) *reverseproxy.Handler {
		h := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: dial}}}
		if auth != "" {
			h.Headers = &headers.Handler{Request: &headers.HeaderOps{Set: http.Header{"Authorization": {auth}}}}
		}
		return h
	}
	route := func(hs ...caddyhttp.MiddlewareHandler) caddyhttp.Route { return caddyhttp.Route{Handlers: hs} }
	app := &caddyhttp.App{Servers: map[string]*caddyhttp.Server{
		// As Caddyfile.example adapts: handle /v1/* { gatewayz; reverse_proxy }, handle { gatewayz_api }.
		"site": {Listen: []string{":8080"}, Routes: caddyhttp.RouteList{
			route(&caddyhttp.Subroute{Routes: caddyhttp.RouteList{
				route(&Gateway{}),
				route(proxy("api.example:443", "Bearer {env.GWZ_TEST_EMPTY_KEY}")),
			}}),
			route(&caddyhttp.Subroute{Routes: caddyhttp.RouteList{route(proxy("admin-only:80", ""))}}),
		}},
		// A proxy before the gateway, and a server without one, are not the gateway's.
		"other": {Listen: []string{":9090"}, Routes: caddyhttp.RouteList{
			route(proxy("plain:80", "Bearer {env.GWZ_TEST_EMPTY_KEY}")),
		}},
		"second": {Listen: []string{":8443"}, Routes: caddyhttp.RouteList{
			route(proxy("before:80", ""), &Gateway{}, proxy("after:80", "Bearer sk-literal")),
		}},
	}}
	got := findGatewayRoutes(app)
	want := gatewayRoutes{
		listen: []string{":8080", ":8443"},
		// Not the proxy of a sibling handle block.
		upstreams:        []string{"after:80", "api.example:443"},
		emptyCredentials: []string{"Authorization: Bearer {env.GWZ_TEST_EMPTY_KEY}"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}
