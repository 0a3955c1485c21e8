// Command caddy is Caddy with the caddy-gatewayz modules built in.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/gatewayz/caddy-gatewayz"
)

func main() {
	caddycmd.Main()
}
