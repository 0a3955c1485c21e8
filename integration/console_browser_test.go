package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// The web console in a real browser: headless Chromium, driven through the
// DevTools protocol, against a running Caddy with the gateway in front of a
// fake upstream. The browser runs as if air-gapped (only localhost
// resolves); the test fails on any request to another origin, any
// Content-Security-Policy violation and any uncaught script error. It
// writes the screenshots of the README (docs/console-*.png).

// consoleCaddyfile is Caddyfile.example's layout: /v1/* through the gateway,
// everything else (API, docs, console) to gatewayz_api.
const consoleCaddyfile = `{
	%s
	gatewayz {
		db_path %s
		secret console-test-secret-0123456789abcdef
		admin_key %s
		signup_credits 100000
	}
}

http://localhost:9080 {
	handle /v1/* {
		gatewayz
		reverse_proxy %s {
			header_up Authorization "Bearer %s"
		}
	}
	handle {
		gatewayz_api
	}
}
`

// consoleTimeout bounds the whole browser session, consoleStepTimeout one
// step (a starved machine is slow; a wrong selector should not wait for
// the whole session).
const (
	consoleTimeout     = 4 * time.Minute
	consoleStepTimeout = 60 * time.Second
)

// browserLog collects what the page did: every request URL, console
// errors, exceptions and CSP violations.
type browserLog struct {
	mu       sync.Mutex
	urls     []string
	problems []string
}

func (b *browserLog) add(list *[]string, s string) {
	b.mu.Lock()
	*list = append(*list, s)
	b.mu.Unlock()
}

func (b *browserLog) snapshot() (urls, problems []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.urls...), append([]string(nil), b.problems...)
}

// startConsoleBrowser starts headless Chromium with the flags of the docs
// test (no sandbox, no background traffic, only localhost resolving) and
// returns its tab's context and its log.
func startConsoleBrowser(t *testing.T, chromium string) (context.Context, *browserLog) {
	t.Helper()
	dir := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(filepath.Join(dir, "profile")),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-features", "AutofillServerCommunication,Translate,OptimizationHints,MediaRouter"),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE localhost"),
		chromedp.Env("HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_CACHE_HOME="+dir),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, consoleTimeout)
	t.Cleanup(func() { cancelTimeout(); cancelTab(); cancelAlloc() })

	log := &browserLog{}
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			log.add(&log.urls, e.Request.URL)
		}
	}); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException || m.Source == "security" ||
				strings.Contains(m.Text, "Content Security Policy") || strings.Contains(m.Text, "Refused to") {
				// An API error status is logged by the browser as a failed
				// load; the page shows it, so it is not a problem here.
				if m.Source == "network" {
					continue
				}
				log.add(&log.problems, m.String())
			}
		}
	}()
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	// A CSP violation also fires securitypolicyviolation: count them in
	// the page (DevTools scripts run whatever the page's CSP says).
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.__csp = []; document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));`,
	}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"clipboard-read", "clipboard-write"} {
		if _, err := chromedp.CallBrowser(ctx, browser.SetPermission, browser.SetPermissionParams{
			Permission: &browser.PermissionDescriptor{Name: name}, Setting: browser.PermissionSettingGranted, Origin: gatewayBase,
		}); err != nil {
			t.Fatalf("granting %s: %v", name, err)
		}
	}
	return ctx, log
}

// page steps, failing the test with the step's name.
type consolePage struct {
	t   *testing.T
	ctx context.Context
}

func (p consolePage) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, consoleStepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

func (p consolePage) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("reading %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

func (p consolePage) eval(what, expr string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
	return s
}

// waitText waits until the element sel contains want.
func (p consolePage) waitText(sel, want string) {
	p.t.Helper()
	expr := fmt.Sprintf(`new Promise((resolve) => { const t0 = Date.now(); (function check() {
		const n = document.querySelector(%q);
		if (n && n.textContent.includes(%q)) return resolve("ok");
		if (Date.now() - t0 > 30000) return resolve(n ? "found: " + n.textContent.slice(0, 800) : "missing");
		setTimeout(check, 50); })(); })`, sel, want)
	if got := p.eval("waiting for "+sel, expr); got != "ok" {
		p.t.Fatalf("%s never showed %q (%s)", sel, want, got)
	}
}

// clickWithin clicks the element inner of the first element sel whose
// text contains want, waiting until there is one; the lookup and the click
// run in the page together, so a re-render between them cannot lose it.
func (p consolePage) clickWithin(sel, want, inner string) {
	p.t.Helper()
	expr := fmt.Sprintf(`new Promise((resolve) => { const t0 = Date.now(); (function check() {
		for (const n of document.querySelectorAll(%q)) {
			const target = n.textContent.includes(%q) && n.querySelector(%q);
			if (target) { target.click(); return resolve("ok"); }
		}
		if (Date.now() - t0 > 30000) return resolve("missing");
		setTimeout(check, 50); })(); })`, sel, want, inner)
	if got := p.eval("clicking "+inner+" in "+sel, expr); got != "ok" {
		p.t.Fatalf("no %s containing %q with a %s to click", sel, want, inner)
	}
}

func (p consolePage) screenshot(name string) {
	p.t.Helper()
	b, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join("..", "docs", name), b, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func TestConsoleBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("caddytest is skipped in -short mode")
	}
	chromium := findChromium(t)
	upstream := startFakeOpenAI(t)
	db := filepath.Join(t.TempDir(), "gatewayz.db")
	tester := caddytest.NewTester(t)
	tester.InitServer(fmt.Sprintf(consoleCaddyfile, globalOptions, db, testAdminKey, upstream.hostPort(), upstreamKey), "caddyfile")
	g := &gateway{t: t, tester: tester, DBPath: db}

	ctx, log := startConsoleBrowser(t, chromium)
	p := consolePage{t, ctx}
	console := gatewayBase + "/console"

	// Register, then sign in with the key shown.
	p.do("open the console", chromedp.Navigate(console), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Create an account"]`)))
	p.do("register",
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create an account"] input[name=username]`), "ada"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create an account"] input[name=email]`), "ada@example.com"),
		chromedp.Click(chromedp.CSS(`form[aria-label="Create an account"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.register-result [data-secret]`)))
	primary := p.text(`.register-result [data-secret]`)
	if !strings.HasPrefix(primary, "gw_live_") {
		t.Fatalf("registration showed %q, not a key", primary)
	}
	p.do("sign in",
		chromedp.SendKeys(chromedp.CSS(`input[name=key]`), primary),
		chromedp.Click(chromedp.CSS(`form[aria-label="Sign in"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-metric=balance]`)))
	p.waitText(`[data-metric=balance] .card-value`, "100,000")
	if got := p.eval("storage", `JSON.stringify([localStorage.length, document.cookie, location.href.includes("gw_")])`); got != `[0,"",false]` {
		t.Errorf("the key is somewhere besides sessionStorage: [localStorage entries, cookies, key in URL] = %s", got)
	}

	// A second key with an IP allowlist; copy it.
	p.do("keys page", chromedp.Navigate(console+"#/keys"), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Create a key"]`)))
	p.do("create a key",
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a key"] input[name=key_name]`), "ci-key"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a key"] textarea[name=ip_allowlist]`), "127.0.0.1"),
		chromedp.Click(chromedp.CSS(`form[aria-label="Create a key"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.created [data-secret]`)))
	second := p.text(`.created [data-secret]`)
	p.do("copy the key", chromedp.Click(chromedp.CSS(`.created [data-copy]`)))
	p.waitText(`.created .copy-state`, "Copied")
	if clip := p.eval("clipboard", `navigator.clipboard.readText()`); clip != second {
		t.Errorf("clipboard holds %q, the page showed %q", clip, second)
	}
	p.waitText(`table[data-table=keys]`, "127.0.0.1")

	// A completion through the gateway with the copied key.
	chat := `{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"Hello"}]}`
	r := g.do("POST", "/v1/chat/completions", chat, "Authorization: Bearer "+second)
	if r.Status != 200 {
		t.Fatalf("completion with the console's key: %d %s", r.Status, r.Body)
	}
	gu, _ := r.json()["gateway_usage"].(map[string]any)
	charged, _ := gu["credits_charged"].(float64)
	if charged <= 0 {
		t.Fatalf("no credits charged: %s", r.Body)
	}
	wantCredits := strconv.FormatInt(int64(charged), 10)

	// The usage table and the chart show it, with those credits.
	p.do("usage page", chromedp.Navigate(console+"#/usage"), chromedp.WaitVisible(chromedp.CSS(`table[data-table=usage]`)))
	row := p.text(`table[data-table=usage] tbody tr`)
	for _, want := range []string{"gpt-4o-mini", "ci-key", wantCredits} {
		if !strings.Contains(row, want) {
			t.Errorf("usage row %q lacks %q", row, want)
		}
	}
	if got := p.text(`table[data-table=usage] tbody tr td:nth-child(6)`); got != wantCredits {
		t.Errorf("usage row credits %q, the gateway charged %s", got, wantCredits)
	}
	p.do("overview", chromedp.Navigate(console+"#/overview"), chromedp.WaitVisible(chromedp.CSS(`svg.chart rect`)))
	p.waitText(`[data-metric=today] .card-value`, wantCredits)
	if title := p.eval("chart", `document.querySelector("svg.chart rect title").textContent`); !strings.Contains(title, "gpt-4o-mini: "+wantCredits+" credits") {
		t.Errorf("chart segment says %q, want gpt-4o-mini with %s credits", title, wantCredits)
	}

	// XSS: a key named with HTML renders as text and runs nothing.
	payload := `<img src=x onerror="window.__xss=1">`
	p.do("keys page again", chromedp.Navigate(console+"#/keys"), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Create a key"]`)))
	p.do("create the XSS key",
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a key"] input[name=key_name]`), payload),
		chromedp.Click(chromedp.CSS(`form[aria-label="Create a key"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`.created [data-secret]`)))
	p.waitText(`table[data-table=keys]`, payload)
	if got := p.eval("xss", `JSON.stringify([document.querySelectorAll("main img[src=x], table img").length, window.__xss === undefined])`); got != `[0,true]` {
		t.Errorf("the HTML key name became markup or ran: [img elements, no script ran] = %s", got)
	}

	if got := p.eval("find the XSS key's delete button", fmt.Sprintf(`(() => {
		const b = [...document.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === %q);
		if (!b) return [...document.querySelectorAll("button[aria-label]")].map((b) => b.getAttribute("aria-label")).join(" | ");
		b.click();
		return "ok"; })()`, "Delete "+payload)); got != "ok" {
		t.Fatalf("no delete button for the XSS key; buttons: %s", got)
	}
	p.do("confirm the deletion",
		chromedp.Click(chromedp.CSS(`dialog button[data-action=confirm]`)),
		chromedp.WaitNotPresent(chromedp.CSS(`dialog`)))
	if got := p.eval("after delete", `new Promise((resolve) => setTimeout(() => resolve(String(document.querySelector("table[data-table=keys]").textContent.includes("onerror"))), 300))`); got != "false" {
		t.Error("the deleted key is still listed")
	}

	// Activity and profile.
	p.do("activity", chromedp.Navigate(console+"#/activity"), chromedp.WaitVisible(chromedp.CSS(`table[data-table=activity]`)))
	p.waitText(`table[data-table=activity]`, "delete")
	p.do("profile", chromedp.Navigate(console+"#/profile"), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Profile"]`)))
	p.do("rename",
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Profile"] input[name=name]`), "Ada L."),
		chromedp.Click(chromedp.CSS(`form[aria-label="Profile"] button[type=submit]`)))
	p.waitText(`form[aria-label="Profile"] .form-status`, "Saved")
	if got := p.eval("delete button", `String(document.querySelector('form[aria-label="Delete account"] button').disabled)`); got != "true" {
		t.Error("account deletion is possible without the typed confirmation")
	}

	// Rotate the second key: the old secret fails, the new one works.
	p.do("rotate",
		chromedp.Navigate(console+"#/keys"), chromedp.WaitVisible(chromedp.CSS(`table[data-table=keys]`)),
		chromedp.Click(chromedp.CSS(`button[aria-label="Rotate ci-key"]`)),
		chromedp.Click(chromedp.CSS(`dialog button[data-action=confirm]`)),
		chromedp.WaitVisible(chromedp.CSS(`dialog [data-secret]`)))
	rotated := p.text(`dialog [data-secret]`)
	p.do("close the new key", chromedp.Click(chromedp.CSS(`dialog button[data-action=done]`)), chromedp.WaitNotPresent(chromedp.CSS(`dialog`)))
	if rotated == second || !strings.HasPrefix(rotated, "gw_live_") {
		t.Fatalf("rotation showed %q", rotated)
	}
	if r := g.do("POST", "/v1/chat/completions", chat, "Authorization: Bearer "+second); r.Status != 401 {
		t.Errorf("old key after rotation: %d %s, want 401", r.Status, r.Body)
	}
	if r := g.do("POST", "/v1/chat/completions", chat, "Authorization: Bearer "+rotated); r.Status != 200 {
		t.Errorf("new key after rotation: %d %s", r.Status, r.Body)
	}
	// A second model, so the charts stack by model.
	if r := g.do("POST", "/v1/chat/completions", strings.Replace(chat, "gpt-4o-mini", "llama-3", 1), "Authorization: Bearer "+primary); r.Status != 200 {
		t.Errorf("completion with the primary key: %d %s", r.Status, r.Body)
	}

	// Sign out clears the key.
	p.do("sign out", chromedp.Click(chromedp.CSS(`button.signout`)), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Sign in"]`)))
	if got := p.eval("after sign-out", `JSON.stringify([sessionStorage.length, localStorage.length, document.cookie])`); got != `[0,0,""]` {
		t.Errorf("after sign-out [sessionStorage, localStorage, cookies] = %s, want nothing kept", got)
	}
	p.do("reload after sign-out", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Sign in"]`)))

	// Admin: sign in, find the user, top up with a double click, assign a plan.
	p.do("admin sign-in",
		chromedp.Click(chromedp.CSS(`#role-admin`)),
		chromedp.SendKeys(chromedp.CSS(`input[name=key]`), testAdminKey),
		chromedp.Click(chromedp.CSS(`form[aria-label="Sign in"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-metric=requests]`)))
	p.waitText(`[data-metric=requests] .card-value`, "3")
	p.do("system charts", chromedp.WaitVisible(chromedp.CSS(`svg.chart rect`)))
	p.screenshot("console-admin-system.png")

	p.do("plans", chromedp.Navigate(console+"#/plans"), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Create a plan"]`)))
	p.do("create a plan",
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a plan"] input[name=name]`), "Pro"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a plan"] input[name=price_per_month]`), "49"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a plan"] input[name=daily_request_limit]`), "5000"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a plan"] input[name=monthly_request_limit]`), "100000"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a plan"] input[name=daily_token_limit]`), "2000000"),
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Create a plan"] input[name=monthly_token_limit]`), "50000000"),
		chromedp.Click(chromedp.CSS(`form[aria-label="Create a plan"] button[type=submit]`)))
	p.waitText(`table[data-table=plans]`, "Pro")

	p.do("users", chromedp.Navigate(console+"#/users"), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Search users"]`)))
	p.do("search",
		chromedp.SendKeys(chromedp.CSS(`input[name=q]`), "ada@"),
		chromedp.Click(chromedp.CSS(`form[aria-label="Search users"] button[type=submit]`)))
	p.waitText(`table[data-table=users]`, "ada@example.com")
	// The list may still be re-rendered by the search's answer: a node
	// found by CDP can be gone by the time it is clicked, so the link of
	// ada's row is looked up and clicked in the page, in one step.
	p.clickWithin(`table[data-table=users] tr`, "ada@example.com", "a")
	p.do("open the user", chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Top up"]`)))
	before := p.text(`[data-metric=balance] .card-value`)
	p.do("top up with a double click",
		chromedp.SendKeys(chromedp.CSS(`form[aria-label="Top up"] input[name=credits]`), "5000"),
		// A real double click: a click, then a second one with click count 2.
		chromedp.Click(chromedp.CSS(`button[data-action=top-up]`)),
		chromedp.DoubleClick(chromedp.CSS(`button[data-action=top-up]`)))
	p.waitText(`form[aria-label="Top up"] .form-status`, "balance")
	balance := func(s string) int64 {
		n, err := strconv.ParseInt(strings.ReplaceAll(s, ",", ""), 10, 64)
		if err != nil {
			t.Fatalf("balance %q: %v", s, err)
		}
		return n
	}
	after := p.text(`[data-metric=balance] .card-value`)
	if balance(after)-balance(before) != 5000 {
		t.Errorf("a double-clicked top-up of 5,000 moved the balance from %s to %s", before, after)
	}
	ledger := g.do("GET", "/admin/users/1/ledger", nil, "Authorization: Bearer "+testAdminKey).json()
	var topUps int
	for _, e := range ledger["entries"].([]any) {
		if e.(map[string]any)["kind"] == "top_up" {
			topUps++
		}
	}
	if topUps != 1 {
		t.Errorf("%d top-up entries in the ledger after a double click, want 1", topUps)
	}
	p.do("assign the plan",
		chromedp.SetValue(chromedp.CSS(`form[aria-label="Assign a plan"] input[name=duration_months]`), "3"),
		chromedp.Click(chromedp.CSS(`form[aria-label="Assign a plan"] button[type=submit]`)))
	p.waitText(`form[aria-label="Assign a plan"] .form-status`, "Plan Pro assigned")

	p.do("security", chromedp.Navigate(console+"#/security"), chromedp.WaitVisible(chromedp.CSS(`[data-metric=refusals-day]`)))
	p.waitText(`[data-metric=refusals-day] .card-value`, "1")
	p.do("verify the audit chain", chromedp.Click(chromedp.CSS(`button[data-verify]`)))
	p.waitText(`[data-verify-result]`, "Intact")

	// The user's overview shows the plan.
	p.do("admin sign-out", chromedp.Click(chromedp.CSS(`button.signout`)), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Sign in"]`)))
	p.do("user sign-in again",
		chromedp.Click(chromedp.CSS(`#role-user`)),
		chromedp.SendKeys(chromedp.CSS(`input[name=key]`), primary),
		chromedp.Click(chromedp.CSS(`form[aria-label="Sign in"] button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS(`[data-plan]`)))
	if got := p.eval("plan", `document.querySelector("[data-plan]").dataset.plan`); got != "Pro" {
		t.Errorf("the user's overview shows plan %q, want Pro", got)
	}
	p.do("overview chart", chromedp.WaitVisible(chromedp.CSS(`svg.chart rect`)))
	p.screenshot("console-overview.png")

	// Rotating every key keeps the console signed in with the new secret.
	p.do("rotate all",
		chromedp.Navigate(console+"#/keys"), chromedp.WaitVisible(chromedp.CSS(`table[data-table=keys]`)),
		chromedp.Click(chromedp.CSS(`button[data-rotate-all]`)),
		chromedp.Click(chromedp.CSS(`dialog button[data-action=confirm]`)),
		chromedp.WaitVisible(chromedp.CSS(`dialog [data-secret]`)))
	if n := p.eval("rotated keys", `String(document.querySelectorAll("dialog [data-secret]").length)`); n != "2" {
		t.Errorf("rotate all showed %s new keys, want 2", n)
	}
	p.do("close the new keys", chromedp.Click(chromedp.CSS(`dialog button[data-action=done]`)), chromedp.WaitNotPresent(chromedp.CSS(`dialog`)))
	if r := g.do("GET", "/user/balance", nil, "Authorization: Bearer "+primary); r.Status != 401 {
		t.Errorf("the primary key after rotating all: %d, want 401", r.Status)
	}
	p.do("still signed in", chromedp.Navigate(console+"#/overview"), chromedp.WaitVisible(chromedp.CSS(`[data-plan]`)))

	// Phone width: nothing wider than the screen.
	p.do("phone width", chromedp.EmulateViewport(390, 844), chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`[data-plan]`)))
	if got := p.eval("overflow", `String(document.documentElement.scrollWidth <= window.innerWidth)`); got != "true" {
		t.Errorf("at 390px the page scrolls sideways (scrollWidth %s)", p.eval("width", `String(document.documentElement.scrollWidth)`))
	}

	// The session ends on its own after 30 idle minutes.
	p.eval("age the session", `(() => { const k = "gatewayz.console.session"; const s = JSON.parse(sessionStorage.getItem(k));
		s.seen -= 31 * 60 * 1000; sessionStorage.setItem(k, JSON.stringify(s)); return "ok"; })()`)
	p.do("idle expiry", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`form[aria-label="Sign in"]`)))
	if got := p.eval("after expiry", `String(sessionStorage.length)`); got != "0" {
		t.Errorf("an expired session left %s sessionStorage entries", got)
	}

	// Nothing left localhost, no CSP violation, no script error.
	if got := p.eval("csp", `JSON.stringify(window.__csp)`); got != "[]" {
		t.Errorf("CSP violations: %s", got)
	}
	urls, problems := log.snapshot()
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil {
			t.Errorf("unparsable request URL %q", raw)
			continue
		}
		switch u.Scheme {
		case "data", "blob", "about", "chrome", "devtools":
			continue
		}
		if u.Host != "localhost:9080" {
			t.Errorf("the console requested %s: not this origin", raw)
		}
	}
	if len(urls) < 10 {
		t.Errorf("only %d requests seen: the network log is not working", len(urls))
	}
	for _, m := range problems {
		t.Errorf("browser console: %s", m)
	}
}
