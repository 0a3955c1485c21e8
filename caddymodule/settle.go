package caddymodule

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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

	"github.com/gatewayz/caddy-gatewayz/storage"
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
}

// Metering defaults.
const (
	defaultMaxTokens             = 4096
	defaultEmbeddingsReservePct  = 150
	defaultSettleTimeout         = 10 * time.Second
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
	}
	return false, nil
}

// reservationPlan is what admission reserves for a request.
type reservationPlan struct {
	credits   int64 // worst-case cost to hold
	maxTokens int64 // when > 0, the per-choice cap to send upstream
}

// planReservation computes the worst-case cost of ir against available
// credits. Pure: integer arithmetic only.
//
//   - embeddings: the prompt estimate × EmbeddingsReservePercent/100;
//   - the client's own max_tokens: prompt + max_tokens × choices; when
//     unaffordable, 402, or with LowerMaxTokens the cap the balance affords;
//   - no max_tokens: prompt + DefaultMaxTokens × choices, lowered to what
//     the balance affords;
//   - 402 when not even MinCompletionTokens per choice is affordable.
func (m *Metering) planReservation(p pricing, ir *inferenceRequest, available int64) (reservationPlan, *gatewayError) {
	if ir.Endpoint == endpointEmbeddings {
		est := (ir.PromptTokens*m.EmbeddingsReservePercent + 99) / 100
		need := p.cost(ir.Model, est, 0)
		if need > available {
			return reservationPlan{}, errInsufficientCredits(fmt.Sprintf(
				"Insufficient credits: this request needs up to %d credits, %d available", need, max(available, 0)))
		}
		return reservationPlan{credits: need}, nil
	}
	n := max(ir.choices, 1)
	cap := ir.MaxTokens
	clientCap := cap > 0
	if !clientCap {
		cap = m.DefaultMaxTokens
	}
	need := p.cost(ir.Model, ir.PromptTokens, cap*n)
	if need <= available {
		plan := reservationPlan{credits: need}
		if !clientCap {
			plan.maxTokens = cap
		}
		return plan, nil
	}
	afford := p.maxCompletionFor(ir.Model, ir.PromptTokens, available)
	if afford >= 0 {
		afford /= n
	}
	if afford < m.MinCompletionTokens {
		return reservationPlan{}, errInsufficientCredits(fmt.Sprintf(
			"Insufficient credits: the prompt (about %d tokens) and a minimal completion need more than the %d credits available",
			ir.PromptTokens, max(available, 0)))
	}
	if clientCap && !m.LowerMaxTokens {
		return reservationPlan{}, errInsufficientCredits(fmt.Sprintf(
			"Insufficient credits: max_tokens %d needs up to %d credits, %d available; lower max_tokens to at most %d",
			cap, need, available, afford))
	}
	return reservationPlan{credits: p.cost(ir.Model, ir.PromptTokens, afford*n), maxTokens: afford}, nil
}

// Refusals of the metering step.
var (
	errCreditsUnavail = errorf(http.StatusServiceUnavailable, "server_error", "service_unavailable",
		"The gateway cannot check credits right now; retry shortly")
)

// reserve holds the worst-case cost of the request. A reservation lost to
// a concurrent request (ErrInsufficientCredits after the balance said
// otherwise) is recomputed against the new balance, a few times.
func (g *Gateway) reserve(ctx context.Context, adm *admission, cfg *Metering) (*storage.Reservation, reservationPlan, int64, *gatewayError) {
	store := g.state.store
	prices := g.app.Pricing()
	var maxReq int64
	if adm.key.MaxRequests != nil {
		maxReq = *adm.key.MaxRequests
	}
	var last *gatewayError
	for range maxReserveAttempts {
		bal, err := store.Balance(ctx, adm.key.UserID)
		if err != nil {
			g.logStoreError("reading balance", err)
			return nil, reservationPlan{}, 0, errCreditsUnavail
		}
		avail := bal.Available()
		plan, gerr := cfg.planReservation(prices, adm.req, avail)
		if gerr != nil {
			return nil, reservationPlan{}, avail, gerr
		}
		res, err := store.Reserve(ctx, storage.ReserveRequest{
			UserID: adm.key.UserID, KeyID: adm.key.ID, Credits: plan.credits, MaxRequests: maxReq,
		})
		switch {
		case err == nil:
			return res, plan, avail - plan.credits, nil
		case errors.Is(err, storage.ErrRequestLimit):
			return nil, reservationPlan{}, 0, errKeyRequestLimit
		case errors.Is(err, storage.ErrInsufficientCredits):
			last = errInsufficientCredits("Insufficient credits: concurrent requests hold the remaining balance")
			continue
		default:
			g.logStoreError("reserving credits", err)
			return nil, reservationPlan{}, 0, errCreditsUnavail
		}
	}
	return nil, reservationPlan{}, 0, last
}

// meteringConfig returns the metering settings with their defaults: m
// itself once Provision applied them, else a copy with them applied.
func (m *Metering) meteringConfig() *Metering {
	if m.DefaultMaxTokens > 0 && m.MinCompletionTokens > 0 && m.MaxTokensField != "" &&
		m.EmbeddingsReservePercent > 0 && m.MaxResponseBuffer > 0 && m.SettleTimeout > 0 {
		return m
	}
	cfg := *m
	cfg.provisionMetering()
	return &cfg
}

// proxy meters an admitted request: it reserves the worst case, rewrites
// the body (cap, stream usage), sends it upstream through a meter, and
// settles exactly once in a deferred step that also runs when the client
// disconnects (reverse_proxy panics with http.ErrAbortHandler: recovered,
// settled, re-panicked).
func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, adm *admission, rc *requestCtx) error {
	delete(r.Header, hdrAuthorization)
	delete(r.Header, hdrAPIKey)
	if adm.req == nil { // free route: not metered
		metricFreeRequests.Inc()
		w.Header().Set(hdrRequestID, rc.requestID())
		if err := next.ServeHTTP(w, r); err != nil {
			// As on metered routes: an unreachable upstream gets an
			// OpenAI-shaped answer, not Caddy's empty error page.
			g.logUpstreamUnavailable(rc.requestID(), err)
			writeError(w, upstreamUnavailable(err))
		}
		return nil
	}
	ir := adm.req
	cfg := g.Metering.meteringConfig()
	s := adm.newSettlement()
	s.g, s.adm, s.ir, s.reqID, s.r = g, adm, ir, rc.requestID(), r
	s.series = seriesFor(ir.Endpoint)
	if extra := rc.extra; extra != nil {
		s.log.reqID = s.reqID
		extra.Set(zap.Field{Key: "gatewayz", Type: zapcore.InlineMarshalerType, Interface: &s.log})
	}

	res, plan, afterHold, gerr := g.reserve(r.Context(), adm, cfg)
	if gerr != nil {
		outcome := outcomeInsufficient
		switch gerr {
		case errKeyRequestLimit:
			outcome = outcomeRequestLimit
		case errCreditsUnavail:
			outcome = outcomeStoreError
		}
		s.series.requests[outcome].Inc()
		adm.recordRefund()
		w.Header().Set(hdrRequestID, s.reqID)
		if gerr.Status == http.StatusPaymentRequired {
			w.Header().Set(hdrCreditsRemaining, strconv.FormatInt(max(afterHold, 0), 10))
		}
		writeError(w, gerr)
		return nil
	}

	if plan.maxTokens > 0 && plan.maxTokens != ir.MaxTokens {
		ir.setMaxTokens(plan.maxTokens, cfg.MaxTokensField)
	}
	strip := ir.injectIncludeUsage()
	up := s.upstreamRequest(r)
	ir.apply(up)

	s.res, s.afterHold = res, afterHold
	s.prices, s.timeout = g.app.Pricing(), time.Duration(cfg.SettleTimeout)
	s.m.init(w, strip, int(cfg.MaxResponseBuffer), s)
	defer func() {
		if v := recover(); v != nil {
			s.abort()
			panic(v)
		}
	}()
	err := next.ServeHTTP(&s.m, up)
	return s.complete(err)
}

// setHeader sets the canonical header key to v, with the value slice
// backed by the settlement (one allocation less per header). The slice is
// full, so an append by another handler copies it.
func (s *settlement) setHeader(h http.Header, slot int, key, v string) {
	s.hdrVals[slot] = v
	h[key] = s.hdrVals[slot : slot+1 : slot+1]
}

// beforeHeader sets the gateway's response headers just before a header
// goes straight through (streams, pass-through, errors written by the meter).
func (s *settlement) beforeHeader(status int) {
	h := s.m.Header()
	s.setHeader(h, 0, hdrRequestID, s.reqID)
	// Streams get the balance after the reservation hold; buffered
	// responses have set the balance after settlement already.
	if status < 400 && headerValue(h, hdrCreditsRemaining) == "" {
		s.setHeader(h, 1, hdrCreditsRemaining, strconv.FormatInt(max(s.afterHold, 0), 10))
	}
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

// settlement settles one metered request exactly once. It holds the
// request's meter and access-log fields, so a request allocates them once.
type settlement struct {
	g         *Gateway
	adm       *admission
	ir        *inferenceRequest
	res       *storage.Reservation
	m         meter // writes to the client's response writer
	r         *http.Request
	series    *endpointSeries
	reqID     string
	afterHold int64 // balance after the reservation hold
	prices    pricing
	timeout   time.Duration
	done      bool
	log       meteringLog
	hdrVals   [2]string    // backing of the X-Request-Id and credits header values
	up        http.Request // the request handed to reverse_proxy (see upstreamRequest)
}

// upstreamRequest returns the request to hand to reverse_proxy: a shallow
// copy of r held in the settlement (no allocation), so that the body the
// gateway rewrites does not replace the client's request, which the access
// log writes. The header map is copied only when it has to change: to drop
// Accept-Encoding (the meter must see plaintext, caddy-notes §5.6) or to
// set the Content-Length of a rewritten body. reverse_proxy clones the
// request it sends upstream, so the shared URL and header stay unmodified.
func (s *settlement) upstreamRequest(r *http.Request) *http.Request {
	s.up = *r
	up := &s.up
	_, gzip := r.Header["Accept-Encoding"]
	if gzip || s.ir.rewritesBody(r) {
		up.Header = r.Header.Clone()
		delete(up.Header, "Accept-Encoding")
	}
	return up
}

// meteringLog is the gateway's part of the request's access-log entry. It
// is added once, as an inline field, and filled in by the settlement: the
// access log is written after the handler returns.
type meteringLog struct {
	reqID     string
	state     uint8 // logNone, logRefunded, logCharged
	estimated bool
	prompt    int64
	completed int64
	credits   int64
}

const (
	logNone uint8 = iota
	logRefunded
	logCharged
)

// MarshalLogObject writes gatewayz_request_id and, once settled,
// gatewayz_credits (with the token counts when charged).
func (l *meteringLog) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("gatewayz_request_id", l.reqID)
	switch l.state {
	case logRefunded:
		enc.AddInt64("gatewayz_credits", 0)
	case logCharged:
		enc.AddInt64("gatewayz_prompt_tokens", l.prompt)
		enc.AddInt64("gatewayz_completion_tokens", l.completed)
		enc.AddInt64("gatewayz_credits", l.credits)
		enc.AddBool("gatewayz_estimated", l.estimated)
	}
	return nil
}

// complete runs after the upstream handler returned: it answers what is
// still to be answered (buffered bodies, errors) and settles.
func (s *settlement) complete(err error) error {
	m := &s.m
	defer m.release() // the answer is written: the buffers go back
	if m.mode != modeNone {
		s.observeLatency()
	}
	switch m.mode {
	case modeNone:
		if err != nil {
			// reverse_proxy could not reach the upstream and returned an
			// error instead of writing: answer it ourselves, in OpenAI shape.
			s.g.logUpstreamUnavailable(s.reqID, err)
			s.refund(outcomeUpstreamUnavailable)
			s.m.Header().Set(hdrRequestID, s.reqID)
			writeError(m.ResponseWriter, upstreamUnavailable(err))
			return nil
		}
		s.refund(outcomeNoContent)
		return nil
	case modeError:
		s.refund(outcomeUpstreamError)
		if m.status == 499 { // client gone before the upstream answered
			m.ResponseWriter.WriteHeader(m.status)
			return nil
		}
		s.writeUpstreamError()
	case modeBuffer:
		s.settleBuffered()
	case modeStream:
		m.finishStream()
		s.settleStream()
	case modeOverflow:
		s.settleOverflow()
	default: // 204, 3xx: nothing generated
		s.refund(outcomeNoContent)
	}
	if err != nil {
		if c := s.g.logger.Check(zap.WarnLevel, "upstream handler error after response started"); c != nil {
			c.Write(zap.String("request_id", s.reqID), zap.Error(err))
		}
	}
	return nil
}

// abort settles when the handler panicked (client disconnect, upstream
// read failure): what was delivered is billed, nothing is written.
func (s *settlement) abort() {
	defer s.m.release()
	if s.done {
		return
	}
	switch s.m.mode {
	case modeStream:
		s.settleStream()
	case modeOverflow:
		s.settleOverflow()
	default: // nothing delivered to the client
		s.refund(outcomeClientClosed)
	}
}

// settleStream bills a stream: upstream usage when it arrived, else the
// prompt estimate plus an estimate of the text streamed; nothing when no
// event was delivered.
func (s *settlement) settleStream() {
	sc := &s.m.sse
	switch {
	case sc.haveUsage:
		s.charge(sc.usage, false)
	case sc.events > 0:
		s.charge(usage{PromptTokens: s.ir.PromptTokens, CompletionTokens: sc.generated.tokens()}, true)
	default:
		s.refund(outcomeNoContent)
	}
}

// settleOverflow bills a response too large to buffer from the usage at
// its end, else from the prompt estimate.
func (s *settlement) settleOverflow() {
	if u, ok := usageFromTail(s.m.tail); ok {
		s.charge(u, false)
		return
	}
	s.charge(usage{PromptTokens: s.ir.PromptTokens}, true)
}

// settleBuffered bills a buffered 2xx response and sends it with the
// gateway_usage block and a correct Content-Length.
func (s *settlement) settleBuffered() {
	m := &s.m
	body := m.buf.Bytes()
	u, ok := usageFromJSON(body)
	if !ok {
		var tc textCounter
		countGeneratedText(body, &tc)
		u = usage{PromptTokens: s.ir.PromptTokens, CompletionTokens: tc.tokens()}
	}
	charged, balance, settled := s.charge(u, !ok)
	h := m.Header()
	s.setHeader(h, 0, hdrRequestID, s.reqID)
	if settled {
		s.setHeader(h, 1, hdrCreditsRemaining, strconv.FormatInt(balance, 10))
		// Built in the buffer's spare capacity, after the body.
		if out, ok := appendGatewayUsage(m.buf.AvailableBuffer(), body, gatewayUsage{
			TokensCharged:    u.PromptTokens + u.CompletionTokens,
			CreditsCharged:   charged,
			UserBalanceAfter: balance,
			UserAPIKey:       maskedKey(s.adm.key),
			Estimated:        !ok,
		}); ok {
			body = out
		}
	} else {
		delete(h, hdrCreditsRemaining)
	}
	m.writeBuffered(body)
}

// writeUpstreamError passes an upstream error on with its status. A body
// already in OpenAI's error shape goes through unchanged; anything else is
// replaced by a generic one, so no upstream-internal text reaches the
// client. An upstream 401 is about the gateway's own upstream credentials:
// it becomes a 502 without the upstream's message.
func (s *settlement) writeUpstreamError() {
	m := &s.m
	h := m.Header()
	h.Set(hdrRequestID, s.reqID)
	h.Del(hdrCreditsRemaining)
	status := m.status
	if status == http.StatusUnauthorized || status == http.StatusProxyAuthRequired {
		if c := s.g.logger.Check(zap.ErrorLevel, "upstream rejected the gateway's credentials"); c != nil {
			c.Write(zap.String("request_id", s.reqID), zap.Int("upstream_status", status))
		}
		s.writeWrapped(http.StatusBadGateway, errorf(http.StatusBadGateway, "upstream_error", "upstream_auth_error", upstreamAuthFailedMessage))
		return
	}
	body := m.buf.Bytes()
	if isOpenAIError(body) && h.Get("Content-Encoding") == "" {
		h.Set("Content-Type", "application/json")
		m.writeBuffered(body)
		return
	}
	s.writeWrapped(status, errorf(status, "upstream_error", "upstream_"+strconv.Itoa(status), upstreamErrorMessage))
}

// writeWrapped replaces the upstream body by a gateway error.
func (s *settlement) writeWrapped(status int, gerr *gatewayError) {
	h := s.m.Header()
	h.Del("Content-Encoding")
	h.Del("Transfer-Encoding")
	h.Set("Content-Type", "application/json")
	body, _ := json.Marshal(map[string]any{"error": map[string]string{
		"message": gerr.Message, "type": gerr.Type, "code": gerr.Code,
	}})
	s.m.status = status
	s.m.writeBuffered(body)
}

// isOpenAIError reports whether body is {"error":{"message":"…",…}}.
func isOpenAIError(body []byte) bool {
	var v struct {
		Error *struct {
			Message *string `json:"message"`
		} `json:"error"`
	}
	return json.Unmarshal(body, &v) == nil && v.Error != nil && v.Error.Message != nil
}

// charge settles the reservation at the cost of u. It reports the credits
// charged, the balance after, and whether the settlement happened.
func (s *settlement) charge(u usage, estimated bool) (charged, balance int64, ok bool) {
	if s.done {
		return 0, 0, false
	}
	s.done = true
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	cost := s.prices.cost(s.ir.Model, u.PromptTokens, u.CompletionTokens)
	ctx := context.WithoutCancel(s.r.Context())
	if _, queued := s.g.state.store.(*storage.BoltStore); !queued {
		// BoltStore.Settle only queues the durable write and never waits
		// on ctx; another store may block, so bound it.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	status := s.m.status
	if status == 0 {
		status = http.StatusOK
	}
	charged, balance, err := s.g.state.store.Settle(ctx, s.res, cost, storage.UsageRecord{
		Model:            s.ir.Model,
		PromptTokens:     u.PromptTokens,
		CompletionTokens: u.CompletionTokens,
		TotalTokens:      u.TotalTokens,
		RequestID:        s.reqID,
		Time:             time.Now(),
		Status:           status,
		Estimated:        estimated,
		Endpoint:         s.ir.Endpoint,
	})
	if err != nil {
		// ErrClosed: the store went away (a reload to another database)
		// while this request was in flight. Never panic: log and go on.
		if c := s.g.logger.Check(zap.ErrorLevel, "settling a request"); c != nil {
			c.Write(zap.String("request_id", s.reqID), zap.Int64("cost", cost), zap.Error(err), zap.Bool("store_closed", errors.Is(err, storage.ErrClosed)))
		}
		s.series.requests[outcomeStoreError].Inc()
		s.adm.recordRefund()
		return 0, 0, false
	}
	outcome := outcomeOK
	if estimated {
		outcome = outcomeEstimated
	}
	sr := s.series
	sr.requests[outcome].Inc()
	sr.promptTokens.Add(float64(u.PromptTokens))
	sr.completionTokens.Add(float64(u.CompletionTokens))
	sr.credits.Add(float64(charged))
	s.log.state, s.log.prompt, s.log.completed, s.log.credits, s.log.estimated = logCharged, u.PromptTokens, u.CompletionTokens, charged, estimated
	s.adm.recordTokens(u.TotalTokens)
	return charged, balance, true
}

// refund releases the reservation: nothing is charged.
func (s *settlement) refund(outcome outcome) {
	if s.done {
		return
	}
	s.done = true
	if err := s.g.state.store.Refund(context.WithoutCancel(s.r.Context()), s.res); err != nil {
		s.g.logStoreError("refunding a reservation", err, zap.String("request_id", s.reqID))
	}
	s.series.requests[outcome].Inc()
	s.log.state = logRefunded
	s.adm.recordRefund()
}

func (s *settlement) observeLatency() {
	s.series.latency.Observe(s.m.firstHeader.Seconds())
}

// logStoreError logs a store failure; a closed store is expected during a
// reload that changes the database.
func (g *Gateway) logStoreError(msg string, err error, fields ...zap.Field) {
	if c := g.logger.Check(zap.ErrorLevel, msg); c != nil {
		c.Write(append(fields, zap.Error(err), zap.Bool("store_closed", errors.Is(err, storage.ErrClosed)))...)
	}
}

// requestID returns the request's id, which is also its
// {http.request.uuid} placeholder, so the access log, the usage record and
// the x-request-id header agree: the id Caddy made already when something
// before the gateway used the placeholder, else a new random UUID set as
// the placeholder's value. Setting it is cheaper than asking Caddy for one
// (a walk through the replacer's providers, plus an access-log field that
// gatewayz_request_id already carries).
func requestID(r *http.Request) string {
	rc := newRequestCtx(r)
	return rc.requestID()
}

func (rc *requestCtx) requestID() string {
	if rc.repl != nil && rc.vars["uuid"] != nil {
		if v, ok := rc.repl.GetString("http.request.uuid"); ok && v != "" {
			return v
		}
	}
	id := newUUID()
	if rc.repl != nil {
		rc.repl.Set("http.request.uuid", id)
	}
	return id
}

// newUUID returns a random (version 4) UUID in its 36-character form.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// maskedKey is the display form of a key for gateway_usage: its stored
// masked prefix, never the secret.
func maskedKey(k *storage.APIKey) string {
	if k == nil {
		return ""
	}
	if strings.HasSuffix(k.Prefix, "...") {
		return k.Prefix
	}
	return k.Prefix + "..."
}
