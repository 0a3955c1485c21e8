// Package caddygatewayz is the root of the caddy-gatewayz Caddy plugin. It
// imports every module package, so that building Caddy with
// `xcaddy build --with github.com/gatewayz/caddy-gatewayz` (or importing this
// package in a custom main) registers all of them: the `gatewayz` app, the
// `http.handlers.gatewayz` gateway handler and the
// `http.handlers.gatewayz_api` management API.
package caddygatewayz

import (
	_ "github.com/gatewayz/caddy-gatewayz/admin"
	_ "github.com/gatewayz/caddy-gatewayz/caddymodule"
)
