// The console's only way to the server: the management API, called with
// the signed-in key as a Bearer token, exactly as any other client does.
//
// The key lives in this module and in sessionStorage (so a reload keeps
// the tab signed in), never in localStorage, a cookie or a URL. It expires
// after IDLE_MS without a call and after MAX_MS in any case; sign-out
// removes it.

const STORE = "gatewayz.console.session";
const IDLE_MS = 30 * 60 * 1000;
const MAX_MS = 8 * 60 * 60 * 1000;

let session = null; // {key, role: "user"|"admin", since, seen}
let onExpired = () => {};

// ApiError carries the API's own message and status.
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(STORE) || "null");
    if (s && typeof s.key === "string" && (s.role === "user" || s.role === "admin") && !expired(s)) {
      session = s;
    } else {
      sessionStorage.removeItem(STORE);
    }
  } catch {
    sessionStorage.removeItem(STORE);
  }
  return session;
}

function expired(s) {
  const now = Date.now();
  return now - s.seen > IDLE_MS || now - s.since > MAX_MS;
}

export function currentSession() {
  if (session && expired(session)) {
    signOut();
    onExpired();
  }
  return session;
}

export function startSession(key, role) {
  const now = Date.now();
  session = { key, role, since: now, seen: now };
  sessionStorage.setItem(STORE, JSON.stringify(session));
}

// replaceKey swaps in a rotated key for the signed-in one.
export function replaceKey(key) {
  if (!session) return;
  session.key = key;
  sessionStorage.setItem(STORE, JSON.stringify(session));
}

export function signOut() {
  session = null;
  sessionStorage.removeItem(STORE);
}

export function whenExpired(fn) {
  onExpired = fn;
  setInterval(() => currentSession(), 15 * 1000);
}

function touch() {
  if (!session) return;
  session.seen = Date.now();
  sessionStorage.setItem(STORE, JSON.stringify(session));
}

// message turns an error body into one sentence: the API's detail (a
// string, or FastAPI-style validation items), else the OpenAI-style
// error.message, else the status.
function message(status, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  if (body && body.error && body.error.message) return body.error.message;
  if (status === 0) return "The server could not be reached.";
  return `The server answered ${status}.`;
}

// request calls the API. opts: {method, body, key (instead of the
// session's), headers, raw (return the Response)}. An error status throws
// an ApiError with the API's message; a 401 with the session's key ends
// the session.
export async function request(path, opts) {
  const o = opts || {};
  const headers = Object.assign({ Accept: "application/json" }, o.headers || {});
  const key = o.key || (currentSession() && session.key);
  if (key) headers.Authorization = "Bearer " + key;
  let body;
  if (o.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(o.body);
  }
  let resp;
  try {
    resp = await fetch(path, { method: o.method || "GET", headers, body, credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
  } catch {
    throw new ApiError(0, message(0));
  }
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch { /* not JSON */ }
    if (resp.status === 401 && !o.key && session) {
      signOut();
      onExpired();
    }
    throw new ApiError(resp.status, message(resp.status, data), data);
  }
  if (!o.key) touch();
  if (o.raw) return resp;
  return resp.json();
}

export const get = (path, opts) => request(path, opts);
export const post = (path, body, opts) => request(path, Object.assign({ method: "POST", body }, opts || {}));
export const put = (path, body, opts) => request(path, Object.assign({ method: "PUT", body }, opts || {}));
export const del = (path, body, opts) => request(path, Object.assign({ method: "DELETE", body }, opts || {}));

// query builds "?a=1&b=2" from the non-empty values of params.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}
