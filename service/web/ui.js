// Small DOM helpers shared by the views.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An API problem (or any error) as a readable message: title, detail, field errors, valid values.
export function problemBox(error, context) {
  const problem = error?.problem ?? { title: "Something went wrong", detail: String(error?.message ?? error) };
  const fields = (problem.errors || []).filter((item) => !problem.detail?.includes(item.message));
  return el("div", { class: "problem", role: "alert" },
    el("div", { class: "problem-title" },
      el("span", { class: "problem-icon", "aria-hidden": "true" }, "!"),
      el("strong", {}, problem.title),
      problem.status ? el("span", { class: "problem-status" }, problem.status) : null,
      context ? el("span", { class: "problem-context" }, context) : null),
    el("p", { class: "problem-detail" }, problem.detail),
    fields.length ? el("ul", { class: "problem-fields" }, fields.map((item) => el("li", {}, el("code", {}, item.field), " ", item.message))) : null,
    problem.valid?.length ? el("p", { class: "problem-valid" }, "Valid: ", problem.valid.join(", ")) : null,
    problem.status === 401 ? el("p", { class: "problem-actions" }, el("button", { class: "btn small", type: "button",
      onclick: () => window.dispatchEvent(new CustomEvent("gazer:ask-key")) }, "Enter API key")) : null);
}

export function toast(message, kind = "info") {
  const area = document.getElementById("toasts");
  const node = el("div", { class: `toast ${kind}` }, message);
  area.append(node);
  setTimeout(() => node.classList.add("leaving"), 3500);
  setTimeout(() => node.remove(), 4000);
}

export const pct = (value, digits = 1) => `${(value * 100).toFixed(digits)}%`;

export function fmtNumber(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
  return value.toFixed(digits).replace(/\.?0+$/, "");
}

export function fmtMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

export function fmtTime(epochSeconds) {
  if (!epochSeconds) return "";
  const date = new Date(epochSeconds * 1000);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function humanize(name) {
  const text = name.replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function spinner() {
  return el("span", { class: "spinner", "aria-hidden": "true" });
}

export function downloadBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 5000);
}

// replaceChildren that skips null, undefined and false (as `el` does).
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// A labelled figure in a result's summary row.
export function stat(label, value) {
  return el("div", { class: "stat" }, el("span", { class: "stat-label" }, label), el("span", { class: "stat-value" }, value));
}
