package caddymodule

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/gatewayz/caddy-gatewayz/storage"
)

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
	// waitMicros is the time waited for credits, in microseconds (it
	// fits beside the flags, keeping the metered request's allocation in
	// its size class).
	waitMicros uint32
	prompt     int64
	completed  int64
	credits    int64
}

const (
	logNone uint8 = iota
	logRefunded
	logCharged
)

// setWait records the time waited for credits.
func (l *meteringLog) setWait(d time.Duration) {
	l.waitMicros = uint32(min(d.Microseconds(), math.MaxUint32))
}

// MarshalLogObject writes gatewayz_request_id, gatewayz_credit_wait (in
// seconds, when the request waited for credits) and, once settled,
// gatewayz_credits (with the token counts when charged).
func (l *meteringLog) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("gatewayz_request_id", l.reqID)
	if l.waitMicros > 0 {
		enc.AddFloat64("gatewayz_credit_wait", float64(l.waitMicros)/1e6)
	}
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
			writeErrorFor(m.ResponseWriter, s.r.URL.Path, upstreamUnavailable(err))
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
		u := usage{PromptTokens: s.ir.PromptTokens}
		if sc.havePrompt {
			u = sc.prompt
		}
		u.CompletionTokens = sc.generated.tokens()
		s.charge(u, true)
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
	u, ok, end := answerUsage(body)
	if !ok {
		var tc textCounter
		countGeneratedText(body, &tc)
		u = usage{PromptTokens: s.ir.PromptTokens, CompletionTokens: tc.tokens()}
	}
	charged, balance, settled := s.charge(u, !ok)
	h := m.Header()
	s.setHeader(h, 0, hdrRequestID, s.reqID)
	if !settled {
		delete(h, hdrCreditsRemaining)
		m.writeBuffered(body, nil)
		return
	}
	s.setHeader(h, 1, hdrCreditsRemaining, strconv.FormatInt(balance, 10))
	keep, rewrite := gatewayUsageCut(body, end)
	if !rewrite {
		m.writeBuffered(body, nil)
		return
	}
	// The block is built in the buffer's spare capacity, after the body,
	// and sent after the body's kept part: the body is not copied.
	tail := appendGatewayUsageTail(m.buf.AvailableBuffer(), body, keep, gatewayUsage{
		TokensCharged:    u.PromptTokens + u.CompletionTokens,
		CreditsCharged:   charged,
		UserBalanceAfter: balance,
		UserAPIKey:       s.adm.maskedKey(),
		Estimated:        !ok,
		CachedTokens:     u.CacheReadTokens,
		CacheWriteTokens: u.CacheWriteTokens,
	})
	m.writeBuffered(body[:keep], tail)
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
	if s.upstreamErrorShaped(body) && h.Get("Content-Encoding") == "" {
		h.Set("Content-Type", "application/json")
		m.writeBuffered(body, nil)
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
	var body []byte
	if s.ir.Endpoint == endpointMessages {
		body = anthropicErrorBody(gerr)
	} else {
		body, _ = json.Marshal(map[string]any{"error": map[string]string{
			"message": gerr.Message, "type": gerr.Type, "code": gerr.Code,
		}})
	}
	s.m.status = status
	s.m.writeBuffered(body, nil)
}

// upstreamErrorShaped reports whether an upstream error body is in the
// route's error shape already (Anthropic's on /v1/messages, else OpenAI's).
func (s *settlement) upstreamErrorShaped(body []byte) bool {
	if s.ir.Endpoint == endpointMessages {
		return isAnthropicError(body)
	}
	return isOpenAIError(body)
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
	cost := s.prices.usageCost(s.ir.Model, u)
	ctx := context.WithoutCancel(s.r.Context())
	if !s.g.state.settleQueues {
		// A store that writes before returning may block: bound it.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	status := s.m.status
	if status == 0 {
		status = http.StatusOK
	}
	// Whatever the settlement held beyond its cost comes back: the user's
	// requests waiting for credits retry.
	defer s.g.state.credits.release(s.adm.key.UserID)
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
		CachedTokens:     u.CacheReadTokens,
		CacheWriteTokens: u.CacheWriteTokens,
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
	// Alerts: computed from this settlement's own before and after, so
	// each crossing fires once however many requests run at once.
	s.g.state.alerts.BalanceChanged(s.adm.key.UserID, balance+charged, balance, s.adm.user.LowBalanceThreshold)
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
	s.g.observeSpend(s.adm, s.res)
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
	s.g.state.credits.release(s.adm.key.UserID)
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
