// The console's shell: sign-in and registration, the navigation of the
// signed-in role, and a hash router (#/keys, #/users/12, ...) that hands
// the main area to a view.

import * as api from "./api.js";
import { el, replace, field, form, secretBox, errorBox, loading } from "./ui.js";
import { userViews } from "./user.js";
import { adminViews } from "./admin.js";

const root = document.getElementById("app");

const NAV = {
  user: [["overview", "Overview"], ["keys", "Keys"], ["usage", "Usage"], ["activity", "Activity"], ["profile", "Profile"]],
  admin: [["system", "System"], ["users", "Users"], ["plans", "Plans"], ["security", "Security"]],
};

let renderSeq = 0;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return { name: parts[0] || "", args: parts.slice(1).map(decodeURIComponent) };
}

function go(name) {
  if (location.hash !== "#/" + name) location.hash = "#/" + name;
  else render();
}

async function render() {
  const s = api.currentSession();
  if (!s) return renderSignIn();
  const views = s.role === "admin" ? adminViews : userViews;
  const nav = NAV[s.role];
  let { name, args } = route();
  if (!views[name]) {
    name = nav[0][0];
    history.replaceState(null, "", "#/" + name);
    args = [];
  }
  const main = el("main", { id: "main", tabindex: "-1" });
  const menu = el("ul", {}, nav.map(([id, label]) =>
    el("li", {}, el("a", { href: "#/" + id, "aria-current": id === name ? "page" : null }, label))));
  replace(root,
    el("header", { class: "topbar" },
      el("a", { class: "brand", href: "#/" + nav[0][0] }, el("img", { src: root.dataset.base + "/assets/icon.svg", alt: "", width: 24, height: 24 }), "Gatewayz"),
      el("span", { class: "role" }, s.role === "admin" ? "Administrator" : "User"),
      el("nav", { "aria-label": "Sections" }, menu),
      el("button", { type: "button", class: "secondary signout", on: { click: () => { api.signOut(); location.hash = ""; renderSignIn("You are signed out. The key was removed from this browser."); } } }, "Sign out")),
    main);
  const seq = ++renderSeq;
  main.append(loading("the page"));
  try {
    const content = await views[name]({ args, go, rerender: render });
    if (seq !== renderSeq) return;
    replace(main, content);
  } catch (err) {
    if (seq !== renderSeq) return;
    replace(main, errorBox(err));
  }
  if (document.activeElement === document.body) main.focus({ preventScroll: true });
}

function renderSignIn(notice) {
  renderSeq++;
  const keyInput = el("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false", placeholder: "gw_live_…" });
  const roleUser = el("input", { type: "radio", name: "role", value: "user", id: "role-user", checked: true });
  const roleAdmin = el("input", { type: "radio", name: "role", value: "admin", id: "role-admin" });
  const signin = form({ class: "stack", "aria-label": "Sign in" }, [
    el("fieldset", { class: "roles" }, el("legend", {}, "Sign in as"),
      el("label", { for: "role-user" }, roleUser, " User"),
      el("label", { for: "role-admin" }, roleAdmin, " Administrator")),
    field("API key", keyInput, "Your key stays in this tab only and is forgotten when you sign out or after 30 idle minutes."),
    el("button", { type: "submit", class: "primary" }, "Sign in"),
  ], async () => {
    const key = keyInput.value.trim();
    const role = roleAdmin.checked ? "admin" : "user";
    if (!key) throw new Error("Enter your API key.");
    await api.get(role === "admin" ? "/admin/stats" : "/user/profile", { key });
    api.startSession(key, role);
    keyInput.value = "";
    go(NAV[role][0][0]);
  });

  const username = el("input", { type: "text", name: "username", required: true, autocomplete: "username", maxlength: 100 });
  const email = el("input", { type: "email", name: "email", required: true, autocomplete: "email" });
  const result = el("div", { class: "register-result" });
  const register = form({ class: "stack", "aria-label": "Create an account" }, [
    field("Username", username),
    field("Email", email),
    el("button", { type: "submit", class: "secondary" }, "Create account"),
  ], async () => {
    const r = await api.post("/auth/register", { username: username.value.trim(), email: email.value.trim() });
    replace(result,
      el("p", {}, `Welcome, ${r.username || username.value.trim()}! Your account has ${r.credits !== undefined ? Number(r.credits).toLocaleString("en-US") : "its starting"} credits.`),
      secretBox(r.api_key, "Your API key"),
      el("button", { type: "button", class: "primary", on: { click: () => { api.startSession(r.api_key, "user"); go("overview"); } } }, "Continue to the console"));
    register.querySelectorAll("input").forEach((i) => { i.value = ""; });
    return "";
  });

  replace(root,
    el("main", { id: "main", class: "signin" },
      el("div", { class: "signin-brand" }, el("img", { src: root.dataset.base + "/assets/icon.svg", alt: "", width: 40, height: 40 }), el("h1", {}, "Gatewayz console")),
      notice ? el("p", { class: "notice", role: "status" }, notice) : null,
      el("div", { class: "signin-grid" },
        el("section", { class: "panel" }, el("h2", {}, "Sign in"), signin),
        el("section", { class: "panel" }, el("h2", {}, "New here?"), el("p", { class: "muted" }, "Create an account to get an API key and starting credits."), register, result))));
}

api.whenExpired(() => renderSignIn("Your session ended. Sign in again with your key."));
api.loadSession();
// Only "#/..." is a route: "#main" is the skip link's target.
window.addEventListener("hashchange", () => { if (location.hash.startsWith("#/") && api.currentSession()) render(); });
render();
