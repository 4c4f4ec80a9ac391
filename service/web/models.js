// The Models view: every model with its spec and versions.
import { api } from "./api.js";
import { el, fmtNumber, problemBox } from "./ui.js";

const $ = (id) => document.getElementById(id);

export async function showModels(params) {
  const list = $("model-list");
  if (!list.children.length) list.append(el("div", { class: "empty small" }, el("p", { class: "muted" }, "Loading models…")));
  let models;
  try {
    models = (await api("/v1/models")).data;
  } catch (error) {
    list.replaceChildren(problemBox(error, "Could not list the models"));
    return;
  }
  // GET /v1/models/{model} loads the model, so only loaded models are described at once; the others
  // show what the list and the versions tell, with a button to load the rest.
  const cards = await Promise.all(models.map(async (summary) => {
    const versions = await api(`/v1/models/${encodeURIComponent(summary.id)}/versions`).catch(() => null);
    const current = versions?.data.find((v) => v.version === summary.version);
    const card = summaryCard(summary, versions);
    if (current?.state === "ready") await describe(card, summary.id);
    return card;
  }));
  list.replaceChildren(...cards);
  if (!cards.length) list.append(el("div", { class: "empty small" }, el("p", {}, "No models.")));
  const wanted = params?.get("model");
  const card = wanted && list.querySelector(`[data-model="${CSS.escape(wanted)}"]`);
  if (card) { card.classList.add("highlight"); card.scrollIntoView({ block: "start" }); }
}

const round = (values) => values.map((v) => fmtNumber(v, 3)).join(", ");

function row(label, ...value) {
  return el("div", { class: "spec-row" }, el("dt", {}, label), el("dd", {}, ...value));
}

function summaryCard(summary, versions) {
  const card = el("article", { class: "model-card", dataset: { model: summary.id } });
  card.head = el("header", { class: "model-head" },
    el("div", {}, el("h3", {}, summary.id), el("p", { class: "muted" }, summary.description)),
    el("span", { class: "badge" }, "not loaded"));
  card.spec = el("dl", { class: "spec" },
    row("Architecture", el("code", {}, summary.architecture)),
    row("Version", `v${summary.version}`),
    row("Input size", `${summary.input_size} × ${summary.input_size}`),
    row("Classes", fmtNumber(summary.num_classes)));
  card.more = el("div", { class: "spec-more" },
    el("button", { class: "btn small", type: "button", onclick: () => describe(card, summary.id) }, "Show preprocessing, methods and layers"),
    el("p", { class: "hint" }, "Loads the model into the service."));
  card.append(...[card.head, card.spec, card.more, versionsTable(summary.id, versions),
    el("div", { class: "actions" }, el("a", { class: "btn small", href: `#explain?model=${encodeURIComponent(summary.id)}` }, "Explain with this model"))].filter(Boolean));
  return card;
}

async function describe(card, id) {
  const button = card.more.querySelector("button");
  if (button) { button.disabled = true; button.textContent = "Loading the model…"; }
  let detail;
  try {
    detail = await api(`/v1/models/${encodeURIComponent(id)}`);
  } catch (error) {
    card.more.replaceChildren(problemBox(error, "The model did not load"));
    return;
  }
  const p = detail.preprocessing;
  const status = detail.status.replace(/_/g, " ");
  card.head.querySelector(".badge").replaceWith(
    el("span", { class: `badge ${detail.status === "ready" ? "succeeded" : detail.status === "failed" ? "failed" : ""}` }, status));
  card.spec.append(...[
    row("Preprocessing", `resize short side to ${p.resize_short_side_to} (${p.interpolation}), centre crop ${p.center_crop}`),
    row("Mean / std", el("span", { class: "mono" }, `[${round(p.mean)}] / [${round(p.std)}]`)),
    row("CAM layer", detail.default_layer ? el("code", {}, detail.default_layer) : "none: an ONNX model, explained by occlusion and RISE"),
    detail.attention?.length ? row("Attention", detail.attention.join(", ")) : null,
    row("Weights", el("code", { class: "digest", title: detail.weights_digest }, detail.weights_digest.slice(0, 16)))].filter(Boolean));
  card.more.replaceChildren(
    el("div", { class: "methods" }, el("h4", {}, "Methods"), el("div", { class: "chips" }, detail.methods.map((m) => el("span", { class: "chip static" }, m)))),
    el("details", { class: "layers" }, el("summary", {}, `${detail.layers.length} targetable layers`),
      el("div", { class: "layer-list" }, detail.layers.map((l) => el("code", { class: l === detail.default_layer ? "default" : null }, l)))));
}

function versionsTable(id, versions) {
  if (!versions) return null;
  return el("div", { class: "versions" }, el("h4", {}, "Versions"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", {}, "Architecture"), el("th", {}, "State"), el("th", {}, ""))),
      el("tbody", {}, versions.data.map((v) => el("tr", {},
        el("td", {}, `v${v.version}`, v.default ? el("span", { class: "tag subtle" }, versions.pinned === v.version ? "pinned" : "default") : null),
        el("td", {}, el("code", {}, v.architecture)),
        el("td", {}, v.state.replace(/_/g, " ")),
        el("td", {}, el("a", { href: `#explain?model=${encodeURIComponent(`${id}@${v.version}`)}` }, "Explain")))))));
}
