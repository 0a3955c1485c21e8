// Building blocks of the console's pages. Every piece of text reaches the
// page through text nodes (el's string children, textContent): nothing
// here parses HTML, so names, emails and models from the API render as
// text whatever they contain.

const SVG = "http://www.w3.org/2000/svg";

// el creates an element. attrs sets attributes (null and false leave one
// out), except `on`, an object of event listeners. Children are nodes or
// strings (text); null and false children are skipped.
export function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "on") {
      for (const [type, fn] of Object.entries(value)) node.addEventListener(type, fn);
    } else if (value !== null && value !== undefined && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// replace empties node and fills it with children.
export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 2 });

// num formats a count with thousands separators ("—" for none).
export function num(v) {
  if (v === null || v === undefined || v === "") return "—";
  return Number.isInteger(v) ? integer.format(v) : decimal.format(v);
}

// when formats an ISO time in the reader's locale ("—" for none).
export function when(v) {
  if (!v) return "—";
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function day(v) {
  const d = new Date(v.length === 10 ? v + "T00:00:00Z" : v);
  return d.toLocaleDateString(undefined, { month: "short", day: "numeric", timeZone: "UTC" });
}

// card is a headline number with a label and an optional note.
export function card(label, value, note, attrs) {
  return el("div", Object.assign({ class: "card" }, attrs || {}),
    el("div", { class: "card-label" }, label),
    el("div", { class: "card-value" }, value),
    note ? el("div", { class: "card-note" }, note) : null);
}

export function section(title, ...children) {
  return el("section", { class: "panel" }, title ? el("h2", {}, title) : null, ...children);
}

// table renders rows with columns [{label, value: row => node|string, num}]
// or the empty state when there are none.
export function table(columns, rows, empty, attrs) {
  if (!rows || rows.length === 0) return emptyState(empty);
  return el("div", { class: "table-wrap" },
    el("table", attrs || {},
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      el("tbody", {}, rows.map((r) => el("tr", {}, columns.map((c) => el("td", { class: c.num ? "num" : null, "data-label": c.label }, c.value(r))))))));
}

export function emptyState(message) {
  return el("div", { class: "empty" }, Array.isArray(message) ? message : [message || "Nothing here yet."]);
}

export function loading(what) {
  return el("p", { class: "loading", role: "status" }, `Loading ${what}…`);
}

export function errorBox(err) {
  return el("div", { class: "error", role: "alert" }, err && err.message ? err.message : String(err));
}

// field is a labelled input; control is the input, select or textarea.
export function field(label, control, hint) {
  const id = control.id || "f-" + Math.random().toString(36).slice(2, 10);
  control.id = id;
  return el("div", { class: "field" },
    el("label", { for: id }, label),
    control,
    hint ? el("div", { class: "hint", id: id + "-hint" }, hint) : null);
}

// button runs fn on click, disabled with a busy label while it runs, so a
// double click cannot send twice.
export function button(label, fn, attrs) {
  const b = el("button", Object.assign({ type: "button" }, attrs || {}), label);
  b.addEventListener("click", async (ev) => {
    if (b.disabled) return;
    b.disabled = true;
    b.setAttribute("aria-busy", "true");
    try {
      await fn(ev);
    } finally {
      b.disabled = false;
      b.removeAttribute("aria-busy");
    }
  });
  return b;
}

// form builds a <form> whose submit runs fn(form) with the submit buttons
// disabled; an error thrown by fn is shown above the buttons.
export function form(attrs, children, fn) {
  const status = el("div", { class: "form-status", role: "status", "aria-live": "polite" });
  const f = el("form", Object.assign({ novalidate: false }, attrs || {}), children, status);
  let busy = false;
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (busy) return;
    busy = true;
    const buttons = f.querySelectorAll("button[type=submit]");
    buttons.forEach((b) => { b.disabled = true; b.setAttribute("aria-busy", "true"); });
    replace(status);
    status.className = "form-status";
    try {
      const msg = await fn(f);
      if (msg) {
        status.className = "form-status ok";
        replace(status, msg);
      }
    } catch (err) {
      status.className = "form-status error";
      replace(status, err.message || String(err));
    } finally {
      busy = false;
      buttons.forEach((b) => { b.disabled = false; b.removeAttribute("aria-busy"); });
    }
  });
  return f;
}

// dialog opens a modal with title and body; actions are buttons. It
// resolves when closed, with the value the closing action returned.
export function dialog(title, body, actions) {
  return new Promise((resolve) => {
    let result;
    const d = el("dialog", { class: "dialog", "aria-labelledby": "dlg-title" },
      el("h2", { id: "dlg-title" }, title),
      el("div", { class: "dialog-body" }, body),
      el("div", { class: "actions" }, (actions || [{ label: "Close" }]).map((a) =>
        button(a.label, async () => {
          if (a.run) {
            const r = await a.run();
            if (r === false) return;
            result = r;
          }
          d.close();
        }, { class: a.class || "secondary", disabled: a.disabled || false, "data-action": a.id || null }))));
    d.addEventListener("close", () => { d.remove(); resolve(result); });
    document.body.append(d);
    d.showModal();
  });
}

// confirmDialog asks a yes/no question; resolves to true on confirm.
export async function confirmDialog(title, message, confirmLabel, danger) {
  const r = await dialog(title, el("p", {}, message), [
    { label: "Cancel" },
    { label: confirmLabel, class: danger ? "danger" : "primary", id: "confirm", run: () => true },
  ]);
  return r === true;
}

// secretBox shows a key once, with a copy button and the warning that it
// will not be shown again.
export function secretBox(secret, label) {
  const code = el("code", { class: "secret", "data-secret": "" }, secret);
  const state = el("span", { class: "copy-state", role: "status", "aria-live": "polite" });
  const copy = button("Copy", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      replace(state, "Copied");
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      replace(state, "Selected: press Ctrl+C to copy");
    }
  }, { class: "primary", "data-copy": "" });
  return el("div", { class: "secret-box" },
    label ? el("div", { class: "card-label" }, label) : null,
    el("div", { class: "secret-row" }, code, copy, state),
    el("p", { class: "warning" }, "Copy this key now and keep it safe: it will not be shown again."));
}

// randomToken is 128 random bits as hex (works outside secure contexts,
// where crypto.randomUUID is missing).
export function randomToken() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// download saves a Blob under name.
export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// progress shows used of limit as a labelled bar.
export function progress(label, used, limit) {
  const pct = limit > 0 ? Math.min(100, Math.round((used / limit) * 100)) : 0;
  const bar = el("progress", { max: 100, value: pct, "aria-label": label });
  return el("div", { class: "meter" + (pct >= 90 ? " high" : "") },
    el("div", { class: "meter-head" }, el("span", {}, label), el("span", {}, `${num(used)} / ${num(limit)}`)),
    bar);
}

// palette slots: charts colour series with the classes s0..s7.
const SLOTS = 8;

// stackedBars draws an SVG bar chart: one bar per label, stacked by series
// ([{name, values}]), with a legend and a <title> per segment. The chart
// scales to its container (viewBox).
export function stackedBars(labels, series, opts) {
  const o = Object.assign({ width: 720, height: 220, unit: "", caption: "" }, opts || {});
  const shown = series.filter((s) => s.values.some((v) => v > 0));
  if (shown.length === 0) return emptyState(o.empty || "No data for this period yet.");
  const W = o.width, H = o.height, left = 48, bottom = 24, top = 10;
  const totals = labels.map((_, i) => shown.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const maxV = niceMax(Math.max(...totals));
  const bw = (W - left - 8) / labels.length;
  const y = (v) => top + (H - top - bottom) * (1 - v / maxV);
  const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": o.caption || "chart" });
  for (let t = 0; t <= 4; t++) {
    const v = (maxV / 4) * t;
    svg.append(el("svg:line", { x1: left, x2: W - 4, y1: y(v), y2: y(v), class: "grid" }),
      el("svg:text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, short(v)));
  }
  const every = Math.ceil(labels.length / Math.max(2, Math.floor(W / 90)));
  labels.forEach((label, i) => {
    let acc = 0;
    const x = left + i * bw + bw * 0.12;
    shown.forEach((s, si) => {
      const v = s.values[i] || 0;
      if (v <= 0) return;
      const y0 = y(acc), y1 = y(acc + v);
      acc += v;
      svg.append(el("svg:rect", { x, y: y1, width: Math.max(1, bw * 0.76), height: Math.max(0.5, y0 - y1), class: "s" + (series.indexOf(s) % SLOTS) },
        el("svg:title", {}, `${o.labelText ? o.labelText(label) : label} · ${s.name}: ${num(v)}${o.unit}`)));
    });
    if (i % every === 0) {
      svg.append(el("svg:text", { x: left + i * bw + bw / 2, y: H - 6, class: "axis", "text-anchor": "middle" }, o.labelText ? o.labelText(label) : label));
    }
  });
  const legend = el("ul", { class: "legend" }, shown.map((s) =>
    el("li", {}, el("span", { class: "swatch s" + (series.indexOf(s) % SLOTS), "aria-hidden": "true" }), s.name)));
  return el("figure", { class: "chart-wrap" }, o.caption ? el("figcaption", {}, o.caption) : null, svg, legend);
}

// niceMax is the top of the axis: four steps of 1, 2 or 5 times a power of
// ten, at least 1 (the charted values are whole counts).
function niceMax(v) {
  const quarter = Math.max(1, v / 4);
  const p = Math.pow(10, Math.floor(Math.log10(quarter)));
  for (const m of [1, 2, 5, 10]) if (m * p >= quarter) return 4 * m * p;
  return 40 * p;
}

function short(v) {
  if (v >= 1e9) return decimal.format(v / 1e9) + "B";
  if (v >= 1e6) return decimal.format(v / 1e6) + "M";
  if (v >= 1e4) return decimal.format(v / 1e3) + "k";
  return num(Math.round(v * 100) / 100);
}

// pivot turns rows [{[x]: label, [key]: name, [metric]: v}] into series
// over labels.
export function pivot(rows, labels, xField, seriesField, metric) {
  const index = new Map(labels.map((l, i) => [l, i]));
  const by = new Map();
  for (const r of rows) {
    const name = r[seriesField] || "(none)";
    if (!by.has(name)) by.set(name, new Array(labels.length).fill(0));
    const i = index.get(r[xField]);
    if (i !== undefined) by.get(name)[i] += r[metric] || 0;
  }
  return Array.from(by, ([name, values]) => ({ name, values })).sort((a, b) => a.name.localeCompare(b.name));
}

// tabs is a row of toggle buttons; onPick(value) runs on a change.
export function tabs(label, options, current, onPick) {
  const group = el("div", { class: "tabs", role: "group", "aria-label": label });
  for (const [value, text] of options) {
    group.append(el("button", { type: "button", "aria-pressed": value === current ? "true" : "false", on: { click: () => {
      group.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", "false"));
      group.querySelector(`[data-value="${value}"]`).setAttribute("aria-pressed", "true");
      onPick(value);
    } }, "data-value": value }, text));
  }
  return group;
}

// lines splits a textarea's value into trimmed, non-empty lines (commas
// separate too).
export function lines(s) {
  return s.split(/[\n,]/).map((x) => x.trim()).filter(Boolean);
}

export function badge(text, kind) {
  return el("span", { class: "badge " + (kind || "") }, text);
}
