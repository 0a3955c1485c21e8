# caddy-gatewayz. The two commands a new user needs: `make run` and `make test`.

CADDY_VERSION  ?= v2.11.9
XCADDY_VERSION ?= v0.4.7
MODULE         := github.com/gatewayz/caddy-gatewayz
FUZZTIME       ?= 3s
GO             ?= go

.PHONY: build xcaddy run test unit fuzz vet bench soak clean

## build: the custom Caddy with the gatewayz modules, at bin/caddy (no xcaddy needed)
build:
	$(GO) build -o bin/caddy ./cmd/caddy

## xcaddy: the same binary the operator's way, at bin/caddy-xcaddy
xcaddy:
	$(GO) run github.com/caddyserver/xcaddy/cmd/xcaddy@$(XCADDY_VERSION) build $(CADDY_VERSION) \
		--output bin/caddy-xcaddy --with $(MODULE)@v0.0.0-00010101000000-000000000000=.

## run: build and start the gateway with Caddyfile.example
run: build
	bin/caddy run --config Caddyfile.example --adapter caddyfile

## test: vet, every test under the race detector, then a brief run of each fuzz target
test: vet unit fuzz

# vet and e2e's gateway build use the race build of the dependencies, like
# `unit`: a cold cache compiles Caddy twice (race, fuzz) instead of three times.
vet:
	$(GO) vet -race ./...

unit:
	$(GO) test -race -count=1 -timeout 15m ./...

## fuzz: run each fuzz target for FUZZTIME (seed corpora also run in `unit`)
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
			echo "fuzz $$pkg $$f"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

## bench: the load benchmark (direct vs plain reverse_proxy vs gateway); writes docs/benchmarks.md
## (BENCHFLAGS=-quick for a one-minute smoke run; wrk is installed when possible, else bench/loadgen is used)
bench: build
	@command -v wrk >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y wrk >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1) || echo "wrk unavailable: using bench/loadgen"
	$(GO) run ./bench/cmd/bench $(BENCHFLAGS)

## soak: mixed traffic for SOAK_DURATION against the mock upstream
soak: build
	$(GO) run ./bench/cmd/soak

clean:
	rm -rf bin
