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

## test: vet and every test under the race detector (the seed corpus of each fuzz target runs as a test)
test: vet unit

vet:
	$(GO) vet -race ./...

unit:
	$(GO) test -race -count=1 -timeout 15m ./...

## fuzz: run each fuzz target for FUZZTIME (its seed corpus also runs in `unit`). Targets are found
## in the source, so listing them builds nothing (e2e's TestMain builds a Caddy).
fuzz:
	@set -e; for f in $$(grep -l '^func Fuzz' $$(find . -name '*_test.go' -not -path './bin/*' | sort)); do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz $$(dirname $$f) $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$(dirname $$f); \
		done; \
	done

## bench: the load benchmark, plain reverse_proxy vs gateway bare and as shipped (Caddyfile.example with its
## access log), with tiny and OpenAI-shaped answers, bytes on disk per request and the RSS split; about ten
## minutes; writes docs/benchmarks.md (BENCHFLAGS=-quick for a two-minute smoke run that writes nothing;
## wrk is installed when possible, else bench/loadgen is used; where PostgreSQL is installed it adds one
## node vs three on a private PostgreSQL server and the revocation latency, BENCHFLAGS=-cluster=false skips it;
## BENCHFLAGS=-postgres adds one node on a private PostgreSQL, fsync on, vs plain)
bench: build
	@command -v wrk >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || apt-get install -y wrk >/dev/null 2>&1 || \
		(apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1) || echo "wrk unavailable: using bench/loadgen"
	$(GO) run ./bench/cmd/bench $(BENCHFLAGS)

## soak: mixed traffic for SOAK_DURATION against the mock upstream
soak: build
	$(GO) run ./bench/cmd/soak

clean:
	rm -rf bin
