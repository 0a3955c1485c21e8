package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Metering holds the handler's metering settings. It is embedded in
// Gateway, so its fields are fields of the `gatewayz` handler's JSON.
type Metering struct {
	// DefaultMaxTokens is the completion cap (per choice) reserved, and
	// sent upstream as max_tokens, when the client sends none. When the
	// balance cannot cover it, the cap is lowered to what the balance
	// affords. Default 4096.
	DefaultMaxTokens int64 `json:"default_max_tokens,omitempty"`

	// MinCompletionTokens is the smallest completion worth sending
	// upstream: a request whose balance cannot pay the prompt estimate
	// plus this many completion tokens is refused with 402. Default 1.
	MinCompletionTokens int64 `json:"min_completion_tokens,omitempty"`

	// LowerMaxTokens lowers a client's own max_tokens to what the balance
	// affords instead of refusing the request with 402. Default off.
	LowerMaxTokens bool `json:"lower_max_tokens,omitempty"`

	// MaxTokensField is the request field the gateway adds when it sets a
	// cap the client did not send: "max_tokens" (default, understood by
	// every OpenAI-compatible server) or "max_completion_tokens" (needed
	// by OpenAI's reasoning models). A field the client sent is always
	// rewritten in place.
	MaxTokensField string `json:"max_tokens_field,omitempty"`

	// EmbeddingsReservePercent is the safety factor applied to the prompt
	// estimate of an embeddings request when reserving, in percent.
	// Default 150.
	EmbeddingsReservePercent int64 `json:"embeddings_reserve_percent,omitempty"`

	// MaxResponseBuffer bounds the non-streaming response buffered to add
	// gateway_usage, in bytes. A larger response is passed through as it
	// comes (billed from the usage at its end) without gateway_usage.
	// Default 16 MiB.
	MaxResponseBuffer int64 `json:"max_response_buffer,omitempty"`

	// SettleTimeout bounds a settlement, which runs on a context detached
	// from the client's. Default 10s.
	SettleTimeout caddy.Duration `json:"settle_timeout,omitempty"`

	// CreditWait bounds how long a request waits for credits that the
	// same user's requests in flight hold, when the balance itself would
	// pay for it. Waiters are served in arrival order as those requests
	// settle; a client that leaves stops waiting at once; after the bound
	// the answer is 402 with Retry-After. 0 answers 402 at once. Default
	// 5s.
	CreditWait *caddy.Duration `json:"credit_wait,omitempty"`
}

// Metering defaults.
const (
	defaultMaxTokens             = 4096
	defaultEmbeddingsReservePct  = 150
	defaultSettleTimeout         = 10 * time.Second
	defaultCreditWait            = 5 * time.Second
	defaultMinCompletionTokens   = 1
	maxReserveAttempts           = 3
	hdrRequestID                 = "X-Request-Id"
	hdrCreditsRemaining          = "X-Gatewayz-Credits-Remaining"
	upstreamUnavailableMessage   = "The upstream model server is unavailable; retry shortly"
	upstreamAuthFailedMessage    = "The upstream rejected the gateway's credentials"
	upstreamErrorMessage         = "upstream error"
	metricKindPrompt             = "prompt"
	metricKindCompletion         = "completion"
	maxTokensFieldDefault        = "max_tokens"
	maxTokensFieldCompletionOnly = "max_completion_tokens"
)

// provisionMetering applies the defaults of the metering settings.
func (m *Metering) provisionMetering() {
	if m.DefaultMaxTokens <= 0 {
		m.DefaultMaxTokens = defaultMaxTokens
	}
	if m.MinCompletionTokens <= 0 {
		m.MinCompletionTokens = defaultMinCompletionTokens
	}
	if m.MaxTokensField == "" {
		m.MaxTokensField = maxTokensFieldDefault
	}
	if m.EmbeddingsReservePercent <= 0 {
		m.EmbeddingsReservePercent = defaultEmbeddingsReservePct
	}
	if m.MaxResponseBuffer <= 0 {
		m.MaxResponseBuffer = defaultMaxResponseBuffer
	}
	if m.SettleTimeout <= 0 {
		m.SettleTimeout = caddy.Duration(defaultSettleTimeout)
	}
	if m.CreditWait == nil {
		wait := caddy.Duration(defaultCreditWait)
		m.CreditWait = &wait
	}
}

// validateMetering checks the metering settings.
func (m *Metering) validateMetering() error {
	switch m.MaxTokensField {
	case "", maxTokensFieldDefault, maxTokensFieldCompletionOnly:
	default:
		return fmt.Errorf("gatewayz: max_tokens_field must be %q or %q", maxTokensFieldDefault, maxTokensFieldCompletionOnly)
	}
	if m.DefaultMaxTokens > maxTokensLimit {
		return fmt.Errorf("gatewayz: default_max_tokens is too large")
	}
	if m.CreditWait != nil && *m.CreditWait < 0 {
		return fmt.Errorf("gatewayz: credit_wait must not be negative")
	}
	eff := *m
	eff.provisionMetering()
	if eff.MinCompletionTokens > eff.DefaultMaxTokens {
		return fmt.Errorf("gatewayz: min_completion_tokens exceeds default_max_tokens")
	}
	return nil
}

// unmarshalMeteringOption parses one metering subdirective of the gatewayz
// Caddyfile block; it reports false when the token is not one of them.
//
//	default_max_tokens <n>
//	min_completion_tokens <n>
//	lower_max_tokens [on|off]
//	max_tokens_field max_tokens|max_completion_tokens
//	embeddings_reserve_percent <n>
//	max_response_buffer <size>
//	settle_timeout <duration>
//	credit_wait <duration>
func (m *Metering) unmarshalMeteringOption(d *caddyfile.Dispenser) (bool, error) {
	posInt := func(dst *int64) error {
		var s string
		if !d.AllArgs(&s) {
			return d.ArgErr()
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return d.Errf("%s must be a positive integer, got %q", d.Val(), s)
		}
		*dst = n
		return nil
	}
	switch d.Val() {
	case "default_max_tokens":
		return true, posInt(&m.DefaultMaxTokens)
	case "min_completion_tokens":
		return true, posInt(&m.MinCompletionTokens)
	case "embeddings_reserve_percent":
		return true, posInt(&m.EmbeddingsReservePercent)
	case "lower_max_tokens":
		args := d.RemainingArgs()
		switch {
		case len(args) == 0 || (len(args) == 1 && (args[0] == "on" || args[0] == "true")):
			m.LowerMaxTokens = true
		case len(args) == 1 && (args[0] == "off" || args[0] == "false"):
			m.LowerMaxTokens = false
		default:
			return true, d.Errf("lower_max_tokens must be on or off, got %q", strings.Join(args, " "))
		}
		return true, nil
	case "max_tokens_field":
		if !d.AllArgs(&m.MaxTokensField) {
			return true, d.ArgErr()
		}
		return true, nil
	case "max_response_buffer":
		var s string
		if !d.AllArgs(&s) {
			return true, d.ArgErr()
		}
		n, err := humanize.ParseBytes(s)
		if err != nil || n == 0 || n > 1<<34 {
			return true, d.Errf("bad max_response_buffer %q", s)
		}
		m.MaxResponseBuffer = int64(n)
		return true, nil
	case "settle_timeout":
		var s string
		if !d.AllArgs(&s) {
			return true, d.ArgErr()
		}
		dur, err := caddy.ParseDuration(s)
		if err != nil || dur <= 0 {
			return true, d.Errf("bad settle_timeout %q", s)
		}
		m.SettleTimeout = caddy.Duration(dur)
		return true, nil
	case "credit_wait":
		var s string
		if !d.AllArgs(&s) {
			return true, d.ArgErr()
		}
		dur, err := caddy.ParseDuration(s)
		if err != nil || dur < 0 {
			return true, d.Errf("bad credit_wait %q", s)
		}
		wait := caddy.Duration(dur)
		m.CreditWait = &wait
		return true, nil
	}
	return false, nil
}

// meteringConfig returns the metering settings with their defaults: m
// itself once Provision applied them, else a copy with them applied.
func (m *Metering) meteringConfig() *Metering {
	if m.DefaultMaxTokens > 0 && m.MinCompletionTokens > 0 && m.MaxTokensField != "" &&
		m.EmbeddingsReservePercent > 0 && m.MaxResponseBuffer > 0 && m.SettleTimeout > 0 && m.CreditWait != nil {
		return m
	}
	cfg := *m
	cfg.provisionMetering()
	return &cfg
}

// proxy is the last step of the gateway: it meters an admitted request. It
// reserves its cost (waiting for credits when the user's requests in
// flight hold them: Gateway.reserve), rewrites
// the body (cap, stream usage), sends it upstream through a meter, and
// settles exactly once in a deferred step that also runs when the client
// disconnects (reverse_proxy panics with http.ErrAbortHandler: recovered,
// settled, re-panicked).
func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, adm *admission, rc *requestCtx) error {
	delete(r.Header, hdrAuthorization)
	delete(r.Header, hdrAPIKey)
	if !adm.route.metered() { // free route
		metricFreeRequests.Inc()
		reqID := rc.requestID()
		w.Header().Set(hdrRequestID, reqID)
		if err := next.ServeHTTP(w, r); err != nil {
			// As on metered routes: an unreachable upstream gets an
			// OpenAI-shaped answer, not Caddy's empty error page.
			g.logUpstreamUnavailable(reqID, err)
			writeErrorFor(w, r.URL.Path, upstreamUnavailable(err))
		}
		return nil
	}
	ir := adm.req
	cfg := g.Metering.meteringConfig()
	s := adm.newSettlement()
	s.g, s.adm, s.ir, s.reqID, s.r = g, adm, ir, rc.requestID(), r
	s.series = seriesFor(ir.Endpoint)
	s.log.reqID = s.reqID
	if rc.logged != zapcore.ObjectMarshaler(s) {
		s.addLogFields(rc) // not logged as the settlement yet (logCaller)
	}

	rsv, gerr := g.reserve(r.Context(), adm, cfg, w.Header())
	s.log.setWait(rsv.waited)
	if gerr != nil {
		outcome := refusalOutcome(gerr)
		switch gerr {
		case errKeyRequestLimit:
			outcome = outcomeRequestLimit
		case errCreditsUnavail:
			outcome = outcomeStoreError
		case errClientGone:
			outcome = outcomeClientClosed
		}
		s.series.requests[outcome].Inc()
		adm.recordRefund()
		w.Header().Set(hdrRequestID, s.reqID)
		if gerr.Status == http.StatusPaymentRequired {
			// The refusal path only: a 402 tells the client its balance.
			if bal, err := g.state.store.Balance(r.Context(), adm.key.UserID); err == nil {
				w.Header().Set(hdrCreditsRemaining, strconv.FormatInt(max(bal.Available(), 0), 10))
			}
		}
		if gerr == errClientGone {
			w.WriteHeader(gerr.Status)
			return nil
		}
		writeErrorFor(w, r.URL.Path, gerr)
		return nil
	}

	if rsv.maxTokens > 0 && rsv.maxTokens != ir.MaxTokens {
		ir.setMaxTokens(rsv.maxTokens, cfg.MaxTokensField)
	}
	strip := ir.injectIncludeUsage()
	up := s.upstreamRequest(r)
	ir.apply(up)

	s.res, s.afterHold = rsv.res, rsv.res.Available
	s.prices, s.timeout = g.app.Pricing(), time.Duration(cfg.SettleTimeout)
	s.m.init(w, strip, int(cfg.MaxResponseBuffer), s)
	s.m.sse.dialect = dialectFor(ir.Endpoint)
	defer func() {
		if v := recover(); v != nil {
			s.abort()
			panic(v)
		}
	}()
	err := next.ServeHTTP(&s.m, up)
	return s.complete(err)
}

// logFieldKey names the gateway's one extra access-log field (inline: its
// keys are gatewayz_* at the top of the entry). The caller's ids are
// added under it when the key is known (requestCtx.annotate); a metered
// request replaces them with its settlement, which writes the ids and the
// metering fields, so that the access log's encoder (the filter encoder of
// Caddyfile.example wraps every field it is given) handles one field.
const logFieldKey = "gatewayz"

// addLogFields puts the settlement in the request's access-log entry
// (filled in as the request settles: the entry is written after the
// handler returns).
func (s *settlement) addLogFields(rc *requestCtx) {
	if extra := rc.extra; extra != nil {
		extra.Set(zap.Field{Key: logFieldKey, Type: zapcore.InlineMarshalerType, Interface: s})
	}
}

// MarshalLogObject writes the caller's ids, then the metering fields of a
// request that reached metering (a refusal before it logs the ids alone).
func (s *settlement) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	if e := s.adm.entry; e != nil {
		_ = e.MarshalLogObject(enc)
	}
	if s.log.reqID == "" {
		return nil
	}
	return s.log.MarshalLogObject(enc)
}

// upstreamUnavailable is the answer when reverse_proxy could not reach the
// upstream and returned an error instead of writing a response.
func upstreamUnavailable(err error) *gatewayError {
	status := http.StatusBadGateway
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode >= 500 && he.StatusCode < 600 {
		status = he.StatusCode
	}
	return errorf(status, "upstream_error", "upstream_unavailable", upstreamUnavailableMessage)
}

func (g *Gateway) logUpstreamUnavailable(reqID string, err error) {
	if c := g.logger.Check(zap.WarnLevel, "upstream unavailable"); c != nil {
		c.Write(zap.String("request_id", reqID), zap.Error(err))
	}
}
