// The views of the administrator: system, users (and one user's page),
// plans, security.

import * as api from "./api.js";
import {
  el, replace, num, when, card, section, table, loading, errorBox, field, form, button,
  confirmDialog, dialog, download, stackedBars, pivot, tabs, lines, badge, randomToken,
} from "./ui.js";

function hourOrDay(period) {
  return period === "hour"
    ? (t) => new Date(t).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : (t) => new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
}

const REFUSAL_NAMES = {
  unknown_key: "Bad key", key_expired: "Expired key", key_inactive: "Inactive key",
  ip_denied: "IP not allowed", referrer_denied: "Referrer not allowed",
};

function systemCharts(s) {
  const labels = s.buckets;
  const x = hourOrDay(s.period);
  const per = s.period === "hour" ? "hour" : "day";
  const outcomeRows = s.usage.map((r) => Object.assign({}, r, { series: r.outcome }));
  const refusals = s.refusals.map((r) => Object.assign({}, r, { name: REFUSAL_NAMES[r.kind] || r.kind }));
  return el("div", { class: "charts" },
    section(`Requests per ${per} by model`, stackedBars(labels, pivot(s.usage, labels, "start", "model", "requests"), { width: 480, labelText: x, unit: " requests", caption: `Requests per ${per} by model` })),
    section(`Credits per ${per} by model`, stackedBars(labels, pivot(s.usage, labels, "start", "model", "credits"), { width: 480, labelText: x, unit: " credits", caption: `Credits per ${per} by model` })),
    section(`Tokens per ${per} by model`, stackedBars(labels, pivot(s.usage, labels, "start", "model", "tokens"), { width: 480, labelText: x, unit: " tokens", caption: `Tokens per ${per} by model` })),
    section(`Requests per ${per} by outcome`, stackedBars(labels, pivot(outcomeRows, labels, "start", "series", "requests"), { width: 480, labelText: x, unit: " requests", caption: `Requests per ${per} by outcome` })),
    section(`Refusals per ${per} by reason`, stackedBars(labels, pivot(refusals, labels, "start", "name", "count"), { width: 480, labelText: x, unit: " refusals", caption: `Refusals per ${per} by reason`, empty: "No refused requests in this period." })));
}

async function system() {
  const holder = el("div", {}, loading("system statistics"));
  async function show(period) {
    replace(holder, loading("system statistics"));
    try {
      const s = await api.get(`/admin/stats?period=${period}`);
      const outcomes = Object.entries(s.outcomes_since_start).filter(([k]) => k !== "free").sort((a, b) => b[1] - a[1]);
      replace(holder,
        el("div", { class: "cards" },
          card("Requests", num(s.totals.requests), s.period === "hour" ? "last 24 hours" : "last 30 days", { "data-metric": "requests" }),
          card("Tokens", num(s.totals.tokens), `${num(s.totals.prompt_tokens)} in · ${num(s.totals.completion_tokens)} out`),
          card("Credits charged", num(s.totals.credits)),
          card("Open reservations", num(s.open_reservations), "requests in flight holding credits", { "data-metric": "open-reservations" })),
        systemCharts(s),
        el("div", { class: "grid2" },
          section("Outcomes since start", table([
            { label: "Outcome", value: (o) => o[0].replaceAll("_", " ") },
            { label: "Requests", num: true, value: (o) => num(o[1]) },
          ], outcomes, "No metered requests since the server started.")),
          section("Upstream latency since start", table([
            { label: "Endpoint", value: (l) => l.endpoint },
            { label: "Requests", num: true, value: (l) => num(l.count) },
            { label: "p50", num: true, value: (l) => ms(l.p50_seconds) },
            { label: "p90", num: true, value: (l) => ms(l.p90_seconds) },
            { label: "p99", num: true, value: (l) => ms(l.p99_seconds) },
          ], s.upstream_latency, "No upstream requests since the server started."))));
    } catch (err) {
      replace(holder, errorBox(err));
    }
  }
  const page = el("div", { class: "page" },
    el("div", { class: "page-head" }, el("h1", {}, "System"), tabs("Period", [["hour", "24 hours"], ["day", "30 days"]], "hour", show)),
    holder);
  await show("hour");
  return page;
}

function ms(seconds) {
  return `${num(Math.round(seconds * 1000))} ms`;
}

async function users(ctx) {
  if (ctx.args[0]) return userPage(ctx);
  const q = el("input", { type: "search", name: "q", placeholder: "email, name or id" });
  const holder = el("div", {}, loading("users"));
  async function search() {
    const r = await api.get("/admin/users" + api.query({ q: q.value.trim(), limit: 100 }));
    replace(holder,
      el("p", { class: "muted" }, `${num(r.total)} ${r.total === 1 ? "user" : "users"}${r.query ? ` matching "${r.query}"` : ""}`),
      table([
        { label: "Id", num: true, value: (u) => String(u.user_id) },
        { label: "User", value: (u) => el("a", { href: `#/users/${u.user_id}` }, u.username || u.email) },
        { label: "Email", value: (u) => u.email },
        { label: "Balance", num: true, value: (u) => num(u.credits) },
        { label: "Held", num: true, value: (u) => num(u.reserved) },
        { label: "Plan", value: (u) => u.plan_name || "Trial" },
        { label: "Spent (30 days)", num: true, value: (u) => num(u.spent_last_30_days) },
        { label: "Joined", value: (u) => when(u.created_at) },
      ], r.users, "No user matches. Users appear here when they register.", { "data-table": "users" }));
  }
  const page = el("div", { class: "page" },
    el("h1", {}, "Users"),
    section(null, form({ class: "filters", role: "search", "aria-label": "Search users" }, [
      field("Search", q), el("button", { type: "submit", class: "primary" }, "Search"),
    ], async () => { await search(); return ""; }), holder));
  try { await search(); } catch (err) { replace(holder, errorBox(err)); }
  return page;
}

const LIMIT_FIELDS = [
  ["requests_per_minute", "Requests per minute"], ["requests_per_hour", "Requests per hour"], ["requests_per_day", "Requests per day"],
  ["tokens_per_minute", "Tokens per minute"], ["tokens_per_hour", "Tokens per hour"], ["tokens_per_day", "Tokens per day"],
];

async function userPage(ctx) {
  const uid = Number(ctx.args[0]);
  if (!Number.isInteger(uid) || uid <= 0) throw new Error("No such user.");
  const [u, usage, ledger, plans] = await Promise.all([
    api.get(`/admin/users/${uid}`),
    api.get(`/admin/users/${uid}/usage?limit=50`),
    api.get(`/admin/users/${uid}/ledger?limit=50`),
    api.get("/admin/plans"),
  ]);
  const p = u.user;

  // Top up: one Idempotency-Key per intended top-up, renewed only after a
  // success, so a double click or a retry never credits twice.
  let idem = randomToken();
  const credits = el("input", { type: "number", name: "credits", min: 1, required: true, inputmode: "numeric" });
  const note = el("input", { type: "text", name: "note", maxlength: 200 });
  const balanceValue = el("span", {}, num(u.credits));
  const topUp = form({ class: "stack", "aria-label": "Top up" }, [
    el("div", { class: "grid2" }, field("Credits", credits), field("Note", note, "Shown in the ledger")),
    el("button", { type: "submit", class: "primary", "data-action": "top-up" }, "Add credits"),
  ], async () => {
    const amount = Number(credits.value);
    if (!Number.isInteger(amount) || amount <= 0) throw new Error("Enter a whole number of credits above zero.");
    const r = await api.post("/admin/add_credits", { user_id: uid, credits: amount, note: note.value.trim() || undefined }, { headers: { "Idempotency-Key": idem } });
    idem = randomToken();
    credits.value = "";
    note.value = "";
    replace(balanceValue, num(r.new_balance));
    return r.replayed ? `Already credited (same request): balance ${num(r.new_balance)}.` : `Added ${num(amount)} credits: balance ${num(r.new_balance)}.`;
  });

  const active = plans.plans.filter((x) => x.is_active);
  const planSel = el("select", { name: "plan_id", required: true }, active.map((x) => el("option", { value: x.id }, `${x.name} (${num(x.price_per_month)}/month)`)));
  const months = el("input", { type: "number", name: "duration_months", min: 1, max: 1200, value: 1, required: true });
  const assign = active.length ? form({ class: "stack", "aria-label": "Assign a plan" }, [
    el("div", { class: "grid2" }, field("Plan", planSel), field("Months", months)),
    el("button", { type: "submit", class: "primary" }, "Assign plan"),
  ], async () => {
    const r = await api.post("/admin/assign-plan", { user_id: uid, plan_id: Number(planSel.value), duration_months: Number(months.value) });
    return r.message;
  }) : el("p", { class: "empty" }, "No active plan. Create one under Plans first.");

  const current = u.rate_limits || {};
  const limitInputs = LIMIT_FIELDS.map(([name]) => el("input", { type: "number", name, min: 0, value: current[name] ?? "", inputmode: "numeric" }));
  const limits = form({ class: "stack", "aria-label": "Rate limits" }, [
    el("div", { class: "grid3" }, LIMIT_FIELDS.map(([, label], i) => field(label, limitInputs[i]))),
    el("p", { class: "hint" }, "0 means no limit at this level; an empty field takes the default."),
    el("button", { type: "submit", class: "primary" }, "Save limits"),
  ], async () => {
    const rate = {};
    LIMIT_FIELDS.forEach(([name], i) => { if (limitInputs[i].value !== "") rate[name] = Number(limitInputs[i].value); });
    const r = await api.post("/admin/limit", { user_id: uid, rate_limits: rate });
    return r.message;
  });

  return el("div", { class: "page" },
    el("p", {}, el("a", { href: "#/users" }, "← All users")),
    el("h1", {}, p.username || p.email),
    el("div", { class: "cards" },
      card("Balance", balanceValue, "credits", { "data-metric": "balance" }),
      card("Held", num(u.reserved), "by requests in flight"),
      card("Plan", u.plan ? u.plan.name : "Trial", u.plan ? `until ${when(u.plan.end_date)}` : "no plan assigned", { "data-metric": "plan" }),
      card("Keys", num(u.total_keys))),
    section("Account", el("dl", { class: "facts" },
      el("dt", {}, "Email"), el("dd", {}, p.email),
      el("dt", {}, "Name"), el("dd", {}, p.name || "—"),
      el("dt", {}, "User id"), el("dd", {}, String(p.user_id)),
      el("dt", {}, "Joined"), el("dd", {}, when(p.created_at)))),
    el("div", { class: "grid2" }, section("Top up", topUp), section("Plan", assign)),
    section("Rate limits", limits),
    section("Keys", table([
      { label: "Name", value: (k) => k.key_name },
      { label: "Key", value: (k) => el("code", {}, k.api_key) },
      { label: "Environment", value: (k) => k.environment_tag },
      { label: "Status", value: (k) => k.is_active ? badge("active", "good") : badge("inactive", "bad") },
      { label: "Requests", num: true, value: (k) => num(k.requests_used) },
      { label: "Last used", value: (k) => when(k.last_used_at) },
    ], u.keys, "This user has no keys.")),
    section("Recent requests", table([
      { label: "Time", value: (x) => when(x.timestamp) },
      { label: "Model", value: (x) => x.model },
      { label: "Key", value: (x) => x.api_key || `#${x.key_id}` },
      { label: "Tokens", num: true, value: (x) => num(x.total_tokens) },
      { label: "Credits", num: true, value: (x) => num(x.credits) },
      { label: "Status", value: (x) => String(x.status) },
    ], usage.records, "No requests yet.")),
    section("Ledger", table([
      { label: "Time", value: (e) => when(e.time) },
      { label: "Kind", value: (e) => e.kind.replaceAll("_", " ") },
      { label: "Amount", num: true, value: (e) => (e.amount > 0 ? "+" : "") + num(e.amount) },
      { label: "Balance after", num: true, value: (e) => num(e.balance_after) },
      { label: "Note", value: (e) => e.note || e.request_id || "—" },
    ], ledger.entries, "No credit movements yet.", { "data-table": "ledger" })));
}

function planForm(plan, onSaved) {
  const v = plan || {};
  const inputs = {
    name: el("input", { type: "text", name: "name", value: v.name || "", required: true, maxlength: 100 }),
    description: el("input", { type: "text", name: "description", value: v.description || "" }),
    price_per_month: el("input", { type: "number", name: "price_per_month", min: 0, step: "0.01", value: v.price_per_month ?? "" }),
    daily_request_limit: el("input", { type: "number", name: "daily_request_limit", min: 0, value: v.daily_request_limit ?? "" }),
    monthly_request_limit: el("input", { type: "number", name: "monthly_request_limit", min: 0, value: v.monthly_request_limit ?? "" }),
    daily_token_limit: el("input", { type: "number", name: "daily_token_limit", min: 0, value: v.daily_token_limit ?? "" }),
    monthly_token_limit: el("input", { type: "number", name: "monthly_token_limit", min: 0, value: v.monthly_token_limit ?? "" }),
    features: el("input", { type: "text", name: "features", value: (v.features || []).join(", ") }),
    models: el("input", { type: "text", name: "models", value: (v.models || []).join(", "), placeholder: "e.g. gpt-4o*" }),
  };
  return form({ class: "stack", "aria-label": plan ? "Edit plan" : "Create a plan" }, [
    el("div", { class: "grid3" }, field("Name", inputs.name), field("Description", inputs.description), field("Price per month", inputs.price_per_month)),
    el("div", { class: "grid2" },
      field("Requests per day", inputs.daily_request_limit), field("Requests per month", inputs.monthly_request_limit),
      field("Tokens per day", inputs.daily_token_limit), field("Tokens per month", inputs.monthly_token_limit)),
    el("div", { class: "grid2" }, field("Features", inputs.features, "Comma-separated"), field("Models", inputs.models, "Comma-separated patterns; empty: every model")),
    el("button", { type: "submit", class: "primary" }, plan ? "Save plan" : "Create plan"),
  ], async (f) => {
    const body = { name: inputs.name.value.trim(), description: inputs.description.value.trim(), features: lines(inputs.features.value), models: lines(inputs.models.value) };
    for (const k of ["daily_request_limit", "monthly_request_limit", "daily_token_limit", "monthly_token_limit"]) {
      if (inputs[k].value !== "") body[k] = Number(inputs[k].value);
    }
    if (inputs.price_per_month.value !== "") body.price_per_month = Number(inputs.price_per_month.value);
    const r = plan ? await api.put(`/admin/plans/${plan.id}`, body) : await api.post("/admin/plans", body);
    if (!plan) f.reset();
    await onSaved(r);
    return plan ? "Saved." : `Plan "${body.name}" created.`;
  });
}

async function plans() {
  const holder = el("div", {}, loading("plans"));
  async function refresh() {
    const r = await api.get("/admin/plans");
    replace(holder, table([
      { label: "Name", value: (x) => x.name },
      { label: "Price / month", num: true, value: (x) => num(x.price_per_month) },
      { label: "Requests (day / month)", num: true, value: (x) => `${num(x.daily_request_limit)} / ${num(x.monthly_request_limit)}` },
      { label: "Tokens (day / month)", num: true, value: (x) => `${num(x.daily_token_limit)} / ${num(x.monthly_token_limit)}` },
      { label: "Models", value: (x) => x.models.length ? x.models.join(", ") : "all" },
      { label: "Status", value: (x) => x.is_active ? badge("active", "good") : badge("inactive", "bad") },
      { label: "Actions", value: (x) => el("div", { class: "row-actions" },
        button("Edit", () => dialog(`Edit ${x.name}`, planForm(x, refresh), [{ label: "Close" }]), { class: "link", "aria-label": `Edit ${x.name}` }),
        x.is_active ? button("Deactivate", async () => {
          if (!(await confirmDialog("Deactivate plan", `Deactivate "${x.name}"? It can no longer be assigned; current subscribers keep it until it ends.`, "Deactivate", true))) return;
          await api.del(`/admin/plans/${x.id}`);
          await refresh();
        }, { class: "link danger", "aria-label": `Deactivate ${x.name}` }) : null) },
    ], r.plans, "No plans yet. Create the first one below.", { "data-table": "plans" }));
  }
  const page = el("div", { class: "page" },
    el("h1", {}, "Plans"),
    section(null, holder),
    section("Create a plan", planForm(null, refresh)));
  try { await refresh(); } catch (err) { replace(holder, errorBox(err)); }
  return page;
}

async function security() {
  const [s, stats, logs] = await Promise.all([
    api.get("/admin/security"),
    api.get("/admin/stats?period=hour"),
    api.get("/admin/audit-logs?limit=500"),
  ]);
  const events = logs.logs.filter((e) => e.action.startsWith("security.")).slice(0, 50);
  const kinds = Object.keys(s.refusals_last_day);
  const verifyOut = el("div", { role: "status", "aria-live": "polite", "data-verify-result": "" });
  const labels = stats.buckets;
  const refusals = stats.refusals.map((r) => Object.assign({}, r, { name: REFUSAL_NAMES[r.kind] || r.kind }));
  return el("div", { class: "page" },
    el("h1", {}, "Security"),
    el("div", { class: "cards" },
      card("Refusals, last hour", num(s.total_last_hour)),
      card("Refusals, last 24 hours", num(s.total_last_day), null, { "data-metric": "refusals-day" }),
      card("Keys expiring soon", num(s.keys_expiring_soon.length), `within ${s.expiring_within_days} days`)),
    section("Refusals per hour by reason", stackedBars(labels, pivot(refusals, labels, "start", "name", "count"),
      { labelText: hourOrDay("hour"), unit: " refusals", caption: "Refusals per hour by reason", empty: "No refused requests in the last 24 hours." })),
    section("Refusals by reason (24 hours)", table([
      { label: "Reason", value: (k) => REFUSAL_NAMES[k.replace("security.", "")] || k },
      { label: "Last hour", num: true, value: (k) => num(s.refusals_last_hour[k]) },
      { label: "Last 24 hours", num: true, value: (k) => num(s.refusals_last_day[k]) },
    ], kinds, "No refusals.")),
    section("Refused for credits or request caps (since the server started)", table([
      { label: "Reason", value: (o) => o[1] },
      { label: "Requests", num: true, value: (o) => num(stats.outcomes_since_start[o[0]] || 0) },
    ], [["insufficient_credits", "Not enough credits"], ["request_limit", "Key request cap reached"]], "")),
    el("div", { class: "grid2" },
      section("Most refused keys", table([
        { label: "Key", value: (x) => el("code", {}, x.key_prefix) },
        { label: "Refusals", num: true, value: (x) => num(x.refusals) },
      ], s.top_refused_keys, "No refused keys in the last 24 hours.")),
      section("Most refused addresses", table([
        { label: "Address", value: (x) => x.ip },
        { label: "Refusals", num: true, value: (x) => num(x.refusals) },
      ], s.top_refused_ips, "No refused addresses in the last 24 hours."))),
    section("Recent security events", table([
      { label: "Time", value: (e) => when(e.timestamp) },
      { label: "Event", value: (e) => REFUSAL_NAMES[e.action.replace("security.", "")] || e.action },
      { label: "Key", value: (e) => (e.details && e.details.key_prefix) || "—" },
      { label: "Address", value: (e) => (e.details && e.details.ip) || e.ip || "—" },
    ], events, "No security events recorded.")),
    section("Audit log",
      el("p", { class: "muted" }, "Every change is recorded in a hash chain: verification recomputes it and reports the first broken link, if any."),
      el("div", { class: "actions" },
        button("Verify the chain", async () => {
          replace(verifyOut, loading("the verification"));
          try {
            const v = await api.get("/admin/audit-logs/verify");
            verifyOut.className = v.valid ? "ok" : "error";
            replace(verifyOut, v.valid ? `Intact: ${num(v.entries)} entries verified.` : `Broken: ${v.message || v.error || "the chain does not verify"}`);
          } catch (err) {
            replace(verifyOut, errorBox(err));
          }
        }, { class: "primary", "data-verify": "" }),
        button("Export (JSON lines)", async () => {
          const resp = await api.request("/admin/audit-logs/export", { raw: true, headers: { Accept: "application/x-ndjson" } });
          download(await resp.blob(), "gatewayz-audit.jsonl");
        }, { class: "secondary" })),
      verifyOut));
}

export const adminViews = { system, users, plans, security };
