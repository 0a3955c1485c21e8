// The views of a signed-in user: overview, keys, usage, activity, profile.
// Each is an async function returning the page's content.

import * as api from "./api.js";
import {
  el, replace, num, when, day, card, section, table, emptyState, loading, errorBox, field, form, button,
  dialog, confirmDialog, secretBox, download, progress, stackedBars, pivot, tabs, lines, badge,
} from "./ui.js";

// optional resolves to null on a 404 (e.g. no active plan).
async function optional(p) {
  try { return await p; } catch (err) { if (err.status === 404) return null; throw err; }
}

function dailyChart(daily, metric, caption) {
  return stackedBars(daily.dates, pivot(daily.rows, daily.dates, "date", "model", metric), {
    caption, width: 960, labelText: day, unit: metric === "credits" ? " credits" : metric === "tokens" ? " tokens" : " requests",
    empty: "No requests in the last 30 days. Make a request with one of your keys and it shows up here.",
  });
}

// chartSwitch shows daily usage with a credits / tokens / requests toggle.
function chartSwitch(daily, title) {
  const holder = el("div", { class: "chart-holder" }, dailyChart(daily, "credits", title + ": credits per day by model"));
  const pick = tabs("Chart metric", [["credits", "Credits"], ["tokens", "Tokens"], ["requests", "Requests"]], "credits",
    (m) => replace(holder, dailyChart(daily, m, `${title}: ${m} per day by model`)));
  return el("div", {}, pick, holder);
}

async function overview() {
  const [bal, daily, usage, plan] = await Promise.all([
    api.get("/user/balance"),
    api.get("/user/usage/daily?days=30"),
    api.get("/user/plan/usage"),
    optional(api.get("/user/plan")),
  ]);
  const limits = usage.limits, used = usage.usage;
  return el("div", { class: "page" },
    el("h1", {}, "Overview"),
    el("div", { class: "cards" },
      card("Balance", num(bal.credits), "credits", { "data-metric": "balance" }),
      card("Held by requests in flight", num(bal.reserved), `${num(bal.available)} available`, { "data-metric": "held" }),
      card("Spent today", num(daily.today.credits), `${num(daily.today.requests)} requests · ${num(daily.today.tokens)} tokens`, { "data-metric": "today" }),
      card("Spent this month", num(daily.this_month.credits), `${num(daily.this_month.requests)} requests · ${num(daily.this_month.tokens)} tokens`, { "data-metric": "month" })),
    section(`Plan: ${usage.plan_name}`,
      plan ? el("p", { class: "muted" }, `${plan.plan_description || ""} Renews or ends ${when(plan.end_date)}.`) :
        el("p", { class: "muted" }, "No paid plan: the trial limits apply. An administrator can assign you a plan."),
      el("div", { class: "meters", "data-plan": usage.plan_name },
        progress("Requests today", used.daily_requests, limits.daily_request_limit),
        progress("Tokens today", used.daily_tokens, limits.daily_token_limit),
        progress("Requests this month", used.monthly_requests, limits.monthly_request_limit),
        progress("Tokens this month", used.monthly_tokens, limits.monthly_token_limit))),
    section("Last 30 days", chartSwitch(daily, "Last 30 days")));
}

// keyForm collects every option of POST /user/api-keys.
function keyForm(onCreated) {
  const name = el("input", { type: "text", name: "key_name", required: true, maxlength: 100 });
  const env = el("select", { name: "environment_tag" }, ["live", "test", "staging", "development"].map((v) => el("option", { value: v }, v)));
  const scopeRead = el("input", { type: "text", name: "scope_read", placeholder: "* (everything)" });
  const scopeWrite = el("input", { type: "text", name: "scope_write", placeholder: "e.g. chat, api_keys" });
  const scopeAdmin = el("input", { type: "text", name: "scope_admin" });
  const days = el("input", { type: "number", name: "expiration_days", min: 1, max: 3650, inputmode: "numeric" });
  const maxReq = el("input", { type: "number", name: "max_requests", min: 1, inputmode: "numeric" });
  const ips = el("textarea", { name: "ip_allowlist", rows: 2, placeholder: "203.0.113.7\n10.0.0.0/8" });
  const domains = el("textarea", { name: "domain_referrers", rows: 2, placeholder: "example.com\n*.example.com" });
  const customScopes = el("input", { type: "checkbox", name: "custom_scopes", id: "custom-scopes" });
  const scopeBox = el("div", { class: "grid3", hidden: true },
    field("Read", scopeRead, "Comma-separated resources"), field("Write", scopeWrite, "chat is needed for inference"), field("Admin", scopeAdmin));
  customScopes.addEventListener("change", () => { scopeBox.hidden = !customScopes.checked; });
  return form({ class: "stack", "aria-label": "Create a key" }, [
    el("div", { class: "grid2" }, field("Name", name), field("Environment", env)),
    el("div", { class: "grid2" },
      field("Expires after (days)", days, "Empty: never expires"),
      field("Maximum requests", maxReq, "Empty: no cap")),
    el("div", { class: "grid2" },
      field("IP allowlist", ips, "One address or CIDR per line. Empty: any address"),
      field("Allowed referrer domains", domains, "One per line. Empty: any referrer")),
    el("label", { for: "custom-scopes", class: "check" }, customScopes, " Limit what this key may do (default: the same scope as the key you signed in with)"),
    scopeBox,
    el("button", { type: "submit", class: "primary" }, "Create key"),
  ], async (f) => {
    const body = { key_name: name.value.trim(), environment_tag: env.value };
    if (days.value) body.expiration_days = Number(days.value);
    if (maxReq.value) body.max_requests = Number(maxReq.value);
    if (ips.value.trim()) body.ip_allowlist = lines(ips.value);
    if (domains.value.trim()) body.domain_referrers = lines(domains.value);
    if (customScopes.checked) {
      body.scope_permissions = {};
      for (const [perm, input] of [["read", scopeRead], ["write", scopeWrite], ["admin", scopeAdmin]]) {
        const list = lines(input.value);
        if (list.length) body.scope_permissions[perm] = list;
      }
    }
    const r = await api.post("/user/api-keys", body);
    f.reset();
    scopeBox.hidden = true;
    await onCreated(r);
    return `Key "${r.key_name}" created.`;
  });
}

function scopesText(s) {
  const parts = Object.entries(s || {}).filter(([, v]) => v && v.length).map(([k, v]) => `${k}: ${v.join(", ")}`);
  return parts.length ? parts.join("; ") : "none";
}

async function showNewKeys(title, keys) {
  await dialog(title, el("div", {}, keys.map((k) => secretBox(k.secret, k.label))), [{ label: "I have copied it", class: "primary", id: "done" }]);
}

async function keys(ctx) {
  const page = el("div", { class: "page" });
  const listHolder = el("div", {}, loading("your keys"));
  const chartHolder = el("div", { id: "key-chart" });

  async function refresh() {
    let data;
    try { data = await api.get("/user/api-keys"); } catch (err) { replace(listHolder, errorBox(err)); return; }
    replace(listHolder, table([
      { label: "Name", value: (k) => el("span", { class: "key-name" }, k.key_name, k.is_primary ? badge("primary") : null) },
      { label: "Key", value: (k) => el("code", {}, k.api_key) },
      { label: "Environment", value: (k) => k.environment_tag },
      { label: "Status", value: (k) => !k.is_active ? badge("inactive", "bad") : k.expiration_date && new Date(k.expiration_date) <= new Date() ? badge("expired", "bad") : badge("active", "good") },
      { label: "Scopes", value: (k) => scopesText(k.scope_permissions) },
      { label: "Limits", value: (k) => [k.ip_allowlist.length ? `IPs: ${k.ip_allowlist.join(", ")}` : null, k.domain_referrers.length ? `Referrers: ${k.domain_referrers.join(", ")}` : null].filter(Boolean).join(" · ") || "—" },
      { label: "Expires", value: (k) => k.expiration_date ? when(k.expiration_date) : "never" },
      { label: "Last used", value: (k) => when(k.last_used_at) },
      { label: "Requests", num: true, value: (k) => k.max_requests ? `${num(k.requests_used)} / ${num(k.max_requests)}` : num(k.requests_used) },
      { label: "Actions", value: (k) => el("div", { class: "row-actions" },
        button("Usage", () => keyChart(k), { class: "link", "aria-label": `Usage of ${k.key_name}` }),
        button("Rotate", () => rotate(k), { class: "link", "aria-label": `Rotate ${k.key_name}` }),
        button("Delete", () => remove(k), { class: "link danger", "aria-label": `Delete ${k.key_name}` })) },
    ], data.keys, "You have no keys. Create one below.", { "data-table": "keys" }));
  }

  async function keyChart(k) {
    replace(chartHolder, loading("the key's usage"));
    try {
      const daily = await api.get(`/user/usage/daily?days=30&key_id=${k.id}`);
      replace(chartHolder, section(`Usage of ${k.key_name}`, chartSwitch(daily, k.key_name)));
      chartHolder.scrollIntoView({ block: "nearest" });
    } catch (err) {
      replace(chartHolder, errorBox(err));
    }
  }

  async function rotate(k) {
    if (!(await confirmDialog("Rotate key", `Rotate "${k.key_name}"? A new secret replaces ${k.api_key}; the old one stops working once the rotation grace period ends.`, "Rotate"))) return;
    const r = await api.put(`/user/api-keys/${k.id}`, { action: "rotate" });
    adoptIfCurrent(k, r.api_key);
    await showNewKeys("New key", [{ secret: r.api_key, label: k.key_name }]);
    await refresh();
  }

  async function remove(k) {
    if (!(await confirmDialog("Delete key", `Delete "${k.key_name}" (${k.api_key})? Requests with it fail at once. This cannot be undone.`, "Delete key", true))) return;
    await api.del(`/user/api-keys/${k.id}`, { confirmation: "DELETE_KEY" });
    await refresh();
  }

  async function rotateAll() {
    if (!(await confirmDialog("Rotate all keys", "Give every active key a new secret? The old secrets stop working once the rotation grace period ends; update every client.", "Rotate all"))) return;
    const [before, me] = await Promise.all([api.get("/user/api-keys"), api.get("/user/balance")]);
    if (!before.keys.length) throw new Error("You have no keys to rotate.");
    const mine = before.keys.find((k) => k.api_key === me.api_key);
    const r = await api.put(`/user/api-keys/${before.keys[0].id}`, { action: "bulk_rotate" });
    const own = mine && r.new_keys.find((nk) => nk.key_id === mine.id);
    if (own) api.replaceKey(own.new_api_key);
    await showNewKeys(`${r.rotated_count} keys rotated`, r.new_keys.map((k) => ({ secret: k.new_api_key, label: k.key_name })));
    await refresh();
  }

  // adoptIfCurrent keeps the console signed in when the signed-in key was
  // the one rotated.
  function adoptIfCurrent(k, secret) {
    const s = api.currentSession();
    if (s && s.key.startsWith(k.api_key.replace("…", ""))) api.replaceKey(secret);
  }

  const created = el("div", { class: "created" });
  page.append(
    el("div", { class: "page-head" }, el("h1", {}, "API keys"), button("Rotate all", rotateAll, { class: "secondary", "data-rotate-all": "" })),
    section(null, listHolder),
    chartHolder,
    section("Create a key", keyForm(async (r) => {
      replace(created, secretBox(r.api_key, `New key "${r.key_name}"`));
      await refresh();
    }), created));
  await refresh();
  return page;
}

async function usage() {
  const keyList = await api.get("/user/api-keys");
  const keySel = el("select", { name: "key_id" }, el("option", { value: "" }, "All keys"),
    keyList.keys.map((k) => el("option", { value: k.id }, `${k.key_name} (${k.api_key})`)));
  const model = el("input", { type: "text", name: "model", placeholder: "e.g. gpt-4o-mini" });
  const date = el("input", { type: "date", name: "date" });
  const holder = el("div", {}, loading("your requests"));
  const filters = () => ({ key_id: keySel.value, model: model.value.trim(), date: date.value });

  async function refresh() {
    replace(holder, loading("your requests"));
    const r = await api.get("/user/usage" + api.query(Object.assign(filters(), { limit: 200 })));
    replace(holder, table([
      { label: "Time", value: (x) => when(x.timestamp) },
      { label: "Model", value: (x) => x.model },
      { label: "Key", value: (x) => x.key_name ? `${x.key_name} (${x.api_key})` : `deleted key #${x.key_id}` },
      { label: "Tokens in", num: true, value: (x) => num(x.prompt_tokens) },
      { label: "Tokens out", num: true, value: (x) => num(x.completion_tokens) },
      { label: "Credits", num: true, value: (x) => num(x.credits) },
      { label: "Usage", value: (x) => x.estimated ? badge("estimated", "warn") : badge("reported") },
      { label: "Status", value: (x) => badge(String(x.status), x.status >= 400 ? "bad" : "good") },
    ], r.records, "No requests match. Requests made with your keys through /v1 appear here.", { "data-table": "usage" }));
  }

  const filterForm = form({ class: "filters", "aria-label": "Filter requests" }, [
    field("Key", keySel), field("Model", model), field("Day (UTC)", date),
    el("button", { type: "submit", class: "primary" }, "Apply"),
  ], async () => { await refresh(); return ""; });

  const exportBtn = button("Export CSV", async () => {
    const resp = await api.request("/user/usage/export" + api.query(filters()), { raw: true, headers: { Accept: "text/csv" } });
    download(await resp.blob(), "gatewayz-usage.csv");
  }, { class: "secondary" });

  const page = el("div", { class: "page" },
    el("div", { class: "page-head" }, el("h1", {}, "Usage"), exportBtn),
    section(null, filterForm, holder));
  try { await refresh(); } catch (err) { replace(holder, errorBox(err)); }
  return page;
}

function details(d) {
  if (!d) return "";
  return Object.entries(d).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

async function activity() {
  const r = await api.get("/user/api-keys/audit-logs?limit=200");
  return el("div", { class: "page" },
    el("h1", {}, "Activity"),
    el("p", { class: "muted" }, "What happened to your account and keys, newest first. Entries are hash-chained and cannot be altered."),
    section(null, table([
      { label: "Time", value: (e) => when(e.timestamp) },
      { label: "Action", value: (e) => e.action },
      { label: "Key", value: (e) => e.api_key_id ? `#${e.api_key_id}` : "—" },
      { label: "By", value: (e) => e.actor || "—" },
      { label: "Address", value: (e) => e.ip || "—" },
      { label: "Details", value: (e) => el("span", { class: "details" }, details(e.details)) },
    ], r.logs, "No activity yet.", { "data-table": "activity" })));
}

async function profile(ctx) {
  const p = await api.get("/user/profile");
  const username = el("input", { type: "text", name: "username", value: p.username || "", maxlength: 100, required: true });
  const name = el("input", { type: "text", name: "name", value: p.name || "", maxlength: 200 });
  const email = el("input", { type: "email", name: "email", value: p.email || "", required: true });
  const save = form({ class: "stack", "aria-label": "Profile" }, [
    el("div", { class: "grid3" }, field("Username", username), field("Name", name), field("Email", email)),
    el("button", { type: "submit", class: "primary" }, "Save"),
  ], async () => {
    await api.put("/user/profile", { username: username.value.trim(), name: name.value.trim(), email: email.value.trim() });
    return "Saved.";
  });

  const confirmInput = el("input", { type: "text", name: "confirm", autocomplete: "off", spellcheck: "false" });
  const delBtn = el("button", { type: "submit", class: "danger", disabled: true }, "Delete my account");
  confirmInput.addEventListener("input", () => { delBtn.disabled = confirmInput.value !== "DELETE"; });
  const deletion = form({ class: "stack", "aria-label": "Delete account" }, [
    field("Type DELETE to confirm", confirmInput, "Deletes the account and every key at once. Usage and audit history are kept."),
    delBtn,
  ], async () => {
    if (confirmInput.value !== "DELETE") throw new Error("Type DELETE to confirm.");
    await api.del("/user/account", { confirmation: "DELETE_ACCOUNT" });
    api.signOut();
    location.hash = "";
    location.reload();
  });

  return el("div", { class: "page" },
    el("h1", {}, "Profile"),
    section("Account",
      el("dl", { class: "facts" },
        el("dt", {}, "User id"), el("dd", {}, String(p.user_id ?? p.id ?? "—")),
        el("dt", {}, "Status"), el("dd", {}, p.subscription_status || "—"),
        el("dt", {}, "Member since"), el("dd", {}, when(p.registration_date || p.created_at))),
      save),
    el("p", { class: "muted" }, "Low-balance alerts are not offered by this gateway yet."),
    section("Delete account", deletion));
}

export const userViews = { overview, keys, usage, activity, profile };
