// The API key: kept in this browser (localStorage), sent by api.js on every call, asked for in a
// small dialog when the service answers 401, and set, changed or forgotten from the top bar.
import { el, svgEl } from "./ui.js";

const STORAGE = "gazer.apiKey";
let memoryKey = null;      // used when localStorage is not available
let pending = null;        // {promise, resolve, manage} while the dialog is open
let dialog = null;         // the <dialog> and its parts, built on first use
let needed = false;        // the service has answered 401 at least once
let rejectedKey = null;    // the stored key the service last answered 401 to

export function currentKey() {
  try { return localStorage.getItem(STORAGE) || null; } catch { return memoryKey; }
}

function storeKey(key) {
  memoryKey = key || null;
  try {
    if (key) localStorage.setItem(STORAGE, key); else localStorage.removeItem(STORAGE);
  } catch { /* private mode: the key lives until the page is closed */ }
  renderButton();
}

// Keys look like gz_<id>_<secret>; the id part is not secret and tells keys apart.
function keyLabel(key) {
  const parts = key.split("_");
  return parts.length === 3 && parts[0] === "gz" && parts[1].length === 8 ? `gz_${parts[1]}_…` : `…${key.slice(-4)}`;
}

const keyIcon = () => svgEl("svg", { viewBox: "0 0 24 24", "aria-hidden": "true", class: "key-icon" },
  svgEl("circle", { cx: "8", cy: "15", r: "4" }),
  svgEl("path", { d: "m10.85 12.15 8.15-8.15m-3 3 2.5 2.5M14.5 8.5l2 2" }));

// Called by api.js for a 401: resolves to the key to retry with, or null when the person cancels.
export function askForKey({ problem, rejected } = {}) {
  needed = true;
  if (rejected) rejectedKey = currentKey();
  renderButton();
  return openDialog({ manage: false, problem, rejected });
}

// Called by api.js for an answer other than 401 to a call that carried `key`: a key the service
// refused before (not yet in its key file, say) is no longer shown as refused.
export function keyAccepted(key) {
  if (key === rejectedKey) {
    rejectedKey = null;
    renderButton();
  }
}

// The top-bar control (and the "Enter API key" button of a 401 problem): set, change or forget.
export function manageKey() {
  return openDialog({ manage: true });
}

function openDialog({ manage, problem, rejected }) {
  const parts = build();
  if (pending) {
    if (!manage) showState(parts, { manage: false, problem, rejected });
    return pending.promise;
  }
  let resolve;
  const promise = new Promise((done) => { resolve = done; });
  pending = { promise, resolve, manage };
  showState(parts, { manage, problem, rejected });
  parts.input.value = "";
  parts.input.type = "password";
  parts.reveal.textContent = "Show";
  parts.root.showModal();
  parts.input.focus();
  return promise;
}

function showState(parts, { manage, problem, rejected }) {
  const key = currentKey();
  parts.lead.replaceChildren(...(manage
    ? ["Requests from this page carry this key as ", el("code", {}, "Authorization: Bearer"), "."]
    : ["This service needs an API key for this request. Saving it sends the request again."]));
  parts.error.hidden = !rejected;
  if (rejected) {
    parts.error.replaceChildren(el("strong", {}, "The key was not accepted. "),
      problem?.detail ? `${problem.detail.charAt(0).toUpperCase()}${problem.detail.slice(1)}.` : "Check it and try again.");
  }
  parts.current.replaceChildren(...(key ? ["Current key ", el("code", {}, keyLabel(key)), key === rejectedKey ? " (not accepted)" : ""] : []));
  parts.current.hidden = !key;
  parts.forget.hidden = !key;
  parts.input.placeholder = key ? "Paste a new key" : "gz_…";
}

function finish(value, { changed = false } = {}) {
  const current = pending;
  pending = null;
  if (dialog.root.open) dialog.root.close();
  if (!current) return;
  current.resolve(value);
  if (changed && current.manage) window.dispatchEvent(new CustomEvent("gazer:key-changed"));
}

function build() {
  if (dialog) return dialog;
  const input = el("input", { type: "password", id: "api-key-input", name: "api-key", autocomplete: "off",
    spellcheck: "false", autocapitalize: "off", required: true, "aria-describedby": "api-key-help" });
  const reveal = el("button", { class: "btn ghost small key-reveal", type: "button", "aria-controls": "api-key-input",
    onclick: () => {
      input.type = input.type === "password" ? "text" : "password";
      reveal.textContent = input.type === "password" ? "Show" : "Hide";
      input.focus();
    } }, "Show");
  const lead = el("p", { class: "key-lead", id: "api-key-lead" });
  const error = el("div", { class: "key-error", role: "alert", hidden: true });
  const current = el("p", { class: "key-current" });
  const forget = el("button", { class: "btn ghost small danger key-forget", type: "button",
    onclick: () => { storeKey(null); finish(null, { changed: true }); } }, "Forget key");
  const form = el("form", { class: "key-form", novalidate: true },
    el("header", { class: "key-head" },
      el("span", { class: "key-badge" }, keyIcon()),
      el("div", {}, el("h2", { id: "api-key-title" }, "API key"), current)),
    lead,
    error,
    el("label", { class: "key-label", for: "api-key-input" }, "Key"),
    el("div", { class: "key-field" }, input, reveal),
    el("p", { class: "hint", id: "api-key-help" }, "Kept in this browser only. The service's operator makes keys with ",
      el("code", {}, "gazer keys create"), "."),
    el("footer", { class: "key-actions" },
      forget,
      el("button", { class: "btn", type: "button", onclick: () => finish(null) }, "Cancel"),
      el("button", { class: "btn primary", type: "submit" }, "Save key")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim().replace(/^bearer\s+/i, "");
    if (!key) { input.focus(); input.setAttribute("aria-invalid", "true"); return; }
    input.removeAttribute("aria-invalid");
    storeKey(key);
    finish(key, { changed: true });
  });
  const root = el("dialog", { class: "key-dialog", "aria-labelledby": "api-key-title", "aria-describedby": "api-key-lead" }, form);
  root.addEventListener("cancel", (event) => { event.preventDefault(); finish(null); });
  document.body.append(root);
  dialog = { root, input, reveal, lead, error, current, forget };
  return dialog;
}

function renderButton() {
  const button = document.getElementById("key-btn");
  if (!button) return;
  const key = currentKey();
  const state = key ? (key === rejectedKey ? "rejected" : "set") : needed ? "needed" : "none";
  button.dataset.state = state;
  button.title = {
    set: `API key set (${key && keyLabel(key)}): change or forget it`,
    rejected: `The service did not accept the key ${key && keyLabel(key)}: change it`,
    needed: "This service needs an API key: set one",
    none: "Set an API key (only needed when the service asks for one)",
  }[state];
  button.querySelector(".key-state").textContent = { set: "set", rejected: "not accepted", needed: "needed", none: "not set" }[state];
}

export function initKeyControl() {
  const button = document.getElementById("key-btn");
  button.prepend(keyIcon());
  button.addEventListener("click", () => manageKey());
  window.addEventListener("gazer:ask-key", () => manageKey());
  window.addEventListener("storage", (event) => { if (event.key === STORAGE) renderButton(); });
  renderButton();
}
