// The Models view: every model with its spec and versions; upload a model (safetensors weights for
// an architecture, or an ONNX file), pin the version a plain name means, delete a version or a
// whole model. A change is announced as `gazer:models-changed`, so that the other views' model
// lists (the explain picker, the jobs forms' suggestions) are read again.
import { api, openapi, resolve } from "./api.js";
import { collectObject, plainText, renderObject } from "./schema.js";
import { el, fmtNumber, problemBox, spinner, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
// POST /v1/models's fields that the upload form draws from the schema, under "More settings"
const UPLOAD_OPTIONS = ["input_size", "resize_size", "mean", "std", "interpolation", "cam_layer"];
const FORMATS = {
  weights: { field: "weights", accept: ".safetensors", label: "Weights (.safetensors)" },
  onnx: { field: "onnx", accept: ".onnx", label: "ONNX" },
};
let listing = 0;   // the newest showModels call: an older one that ends later draws nothing

export async function initModels() {
  const panel = $("model-upload");
  try {
    const spec = await openapi();
    panel.replaceChildren(uploadForm(spec, resolve(spec, spec.paths["/v1/models"].post.requestBody.content["multipart/form-data"].schema)));
  } catch (error) {
    panel.replaceChildren(problemBox(error, "Could not read the API description: models cannot be uploaded from here"));
  }
}

export async function showModels(params) {
  const generation = ++listing;
  const list = $("model-list");
  if (!list.children.length) list.append(el("div", { class: "empty small" }, el("p", { class: "muted" }, "Loading models…")));
  let models;
  try {
    models = (await api("/v1/models")).data;
  } catch (error) {
    if (generation === listing) list.replaceChildren(problemBox(error, "Could not list the models"));
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
  if (generation !== listing) return;
  list.replaceChildren(...cards);
  if (!cards.length) list.append(el("div", { class: "empty small" }, el("p", {}, "No models.")));
  $("upload-names")?.replaceChildren(...models.map((m) => el("option", { value: m.id })));
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
  card.message = el("div", { class: "model-message" });
  const all = versions?.data.map((v) => v.version) || [];
  card.append(...[card.head, card.spec, card.more, versionsTable(card, summary, versions), card.message,
    el("div", { class: "actions" },
      el("a", { class: "btn small", href: `#explain?model=${encodeURIComponent(summary.id)}` }, "Explain with this model"),
      all.length && !summary.builtin ? el("button", { class: "btn ghost small danger", type: "button", "aria-label": `Delete model ${summary.id}`,
        onclick: () => confirmDeleteModel(card, summary.id, all) }, "Delete model") : null)].filter(Boolean));
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
    row("Explain cost", `a forward counts ${detail.forward_cost} (forwards of efficientnet_lite0 at 224)`),
    row("Weights", el("code", { class: "digest", title: detail.weights_digest }, detail.weights_digest.slice(0, 16)))].filter(Boolean));
  card.more.replaceChildren(
    el("div", { class: "methods" }, el("h4", {}, "Methods"), el("div", { class: "chips" }, detail.methods.map((m) => el("span", { class: "chip static" }, m)))),
    el("details", { class: "layers" }, el("summary", {}, `${detail.layers.length} targetable layers`),
      el("div", { class: "layer-list" }, detail.layers.map((l) => el("code", { class: l === detail.default_layer ? "default" : null }, l)))));
}

// A built-in model has one version, which is neither pinned nor deleted: no buttons for it.
function versionsTable(card, { id, builtin }, versions) {
  if (!versions) return null;
  const only = versions.data.length === 1;
  const pinning = (v) => builtin ? null : versions.pinned === v.version
    ? el("button", { class: "btn ghost small", type: "button", "aria-label": `Unpin ${id}`, onclick: () => confirmUnpin(card, id) }, "Unpin")
    : el("button", { class: "btn ghost small", type: "button", "aria-label": `Pin ${id}@${v.version}`, onclick: () => confirmPin(card, id, v.version) }, "Pin");
  return el("div", { class: "versions" }, el("h4", {}, "Versions"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", {}, "State"), el("th", {}, ""))),
      el("tbody", {}, versions.data.map((v) => el("tr", { dataset: { version: v.version } },
        el("td", {}, `v${v.version}`, v.default ? el("span", { class: "tag subtle" }, versions.pinned === v.version ? "pinned" : "default") : null,
          el("code", { class: "version-architecture" }, v.architecture)),
        el("td", {}, v.state.replace(/_/g, " ")),
        el("td", {}, el("div", { class: "version-actions" },
          el("a", { href: `#explain?model=${encodeURIComponent(`${id}@${v.version}`)}` }, "Explain"),
          pinning(v),
          builtin ? null : el("button", { class: "btn ghost small danger", type: "button", "aria-label": `Delete ${id}@${v.version}`,
            onclick: () => confirmDeleteVersion(card, id, v.version, { pinned: versions.pinned === v.version, only }) }, "Delete"))))))));
}

// ------------------------------------------------------------------------------------------------ pin, delete
// A change every client sees asks first: the question and its two buttons in the card's message
// area; the API's refusal (403 for a key that may not, 409 for a built-in model, ...) shows there.
function confirmThen(card, question, verb, action, { danger = true } = {}) {
  const yes = el("button", { class: `btn small ${danger ? "danger" : "primary"}`, type: "button" }, verb);
  const no = el("button", { class: "btn small ghost", type: "button", onclick: () => card.message.replaceChildren() }, "Cancel");
  yes.addEventListener("click", async () => {
    yes.disabled = no.disabled = true;
    yes.replaceChildren(spinner(), verb);
    await action();
  });
  card.message.replaceChildren(el("div", { class: "confirm", role: "group", "aria-label": verb },
    el("p", {}, question), el("div", { class: "confirm-actions" }, no, yes)));
  yes.focus();
}

function confirmPin(card, id, version) {
  confirmThen(card, `From now on ${id} means ${id}@${version}, for every client, until another version is pinned.`,
    `Pin v${version}`, () => changeModels(card, id, `${id} means ${id}@${version} now`,
      () => api(`/v1/models/${encodeURIComponent(id)}/default`, { method: "PUT", json: { version } })), { danger: false });
}

function confirmUnpin(card, id) {
  confirmThen(card, `From now on ${id} means its newest version that loads, for every client.`, "Unpin",
    () => changeModels(card, id, `${id} means its newest version now`,
      () => api(`/v1/models/${encodeURIComponent(id)}/default`, { method: "DELETE" })), { danger: false });
}

function confirmDeleteVersion(card, id, version, { pinned, only }) {
  const after = only ? ` It is the only version: ${id} goes with it.`
    : pinned ? ` It is pinned: ${id} then means its newest version that loads.` : "";
  confirmThen(card, `Delete ${id}@${version}? Its files are removed, and the number is not given again.${after}`,
    `Delete v${version}`, () => changeModels(card, id, `${id}@${version} deleted`,
      () => api(`/v1/models/${encodeURIComponent(`${id}@${version}`)}`, { method: "DELETE" })));
}

function confirmDeleteModel(card, id, all) {
  confirmThen(card, `Delete ${id} and every version of it (${all.map((v) => `v${v}`).join(", ")})? Its files are removed.`,
    "Delete model", () => changeModels(card, id, `${id} deleted`,
      () => api(`/v1/models/${encodeURIComponent(id)}`, { method: "DELETE" })));
}

// Runs a change; then the lists are read again everywhere (a failure may have changed part of it:
// some versions deleted), and a refusal shows the problem on the model's card.
async function changeModels(card, id, done, change) {
  let failure = null;
  try {
    await change();
  } catch (error) {
    failure = error;
  }
  window.dispatchEvent(new CustomEvent("gazer:models-changed"));
  await showModels();
  if (!failure) {
    toast(done, "success");
    return;
  }
  const shown = $("model-list").querySelector(`[data-model="${CSS.escape(id)}"]`) || card;
  shown.message?.replaceChildren(problemBox(failure, "Not done"));
}

// ------------------------------------------------------------------------------------------------ upload
function uploadForm(spec, body) {
  const props = body.properties;
  const hint = (name, fallback) => el("p", { class: "hint" }, plainText(props[name]?.description) || fallback);
  const name = el("input", { type: "text", id: "upload-name", name: "name", required: true, pattern: "[A-Za-z0-9_.\\-]{1,64}",
    placeholder: "e.g. defects", list: "upload-names", autocomplete: "off", spellcheck: "false" });
  const architecture = el("input", { type: "text", id: "upload-architecture", name: "architecture", required: true,
    placeholder: "resnet50 or timm:efficientnet_b0", autocomplete: "off", spellcheck: "false" });
  const file = el("input", { type: "file", id: "upload-file", required: true, accept: FORMATS.weights.accept });
  const labels = el("input", { type: "file", id: "upload-labels", accept: ".txt,text/plain" });
  const formats = Object.entries(FORMATS).map(([value, format]) => el("label", { class: "check" },
    el("input", { type: "radio", name: "format", value, checked: value === "weights" }), format.label));
  const options = el("div", { class: "upload-options" });
  renderObject(spec, { type: "object", properties: Object.fromEntries(UPLOAD_OPTIONS.filter((n) => props[n]).map((n) => [n, props[n]])) },
    options);
  const message = el("div", { class: "form-message", id: "upload-message" });
  const fileHint = el("p", { class: "hint" });
  const submit = el("button", { class: "btn primary", type: "submit" }, "Upload");
  const forWeights = el("div", { class: "field" },
    el("label", { for: "upload-architecture" }, "Architecture", el("span", { class: "req", title: "required" }, " *")),
    architecture, hint("architecture", "a torchvision classification builder or timm:NAME"));
  const form = el("form", { id: "model-upload-form", class: "upload-form" },
    el("div", { class: "option-grid" },
      el("div", { class: "field" },
        el("label", { for: "upload-name" }, "Name", el("span", { class: "req", title: "required" }, " *")),
        name, hint("name", "1-64 letters, digits, '_', '-', '.'")),
      el("fieldset", { class: "field format-choice" }, el("legend", {}, "Format"), formats),
      forWeights),
    el("div", { class: "option-grid upload-files" },
      el("div", { class: "field" },
        el("label", { for: "upload-file" }, "File", el("span", { class: "req", title: "required" }, " *")),
        file, fileHint),
      el("div", { class: "field" }, el("label", { for: "upload-labels" }, "Labels"), labels, hint("labels", "text, one class name per line"))),
    el("details", { class: "more options" }, el("summary", {}, "Preprocessing and CAM layer"), options),
    el("div", { class: "actions" }, submit),
    message,
    el("datalist", { id: "upload-names" }));
  const sync = () => {
    const format = form.elements.format.value;
    file.accept = FORMATS[format].accept;
    fileHint.textContent = plainText(props[FORMATS[format].field]?.description);
    forWeights.hidden = format !== "weights";
    architecture.disabled = format !== "weights";   // a hidden required field would block the form
    const camLayer = options.querySelector('[name="cam_layer"]');
    if (camLayer) { camLayer.disabled = format !== "weights"; camLayer.closest(".field").hidden = format !== "weights"; }
  };
  for (const radio of form.querySelectorAll('input[name="format"]')) radio.addEventListener("change", sync);
  form.addEventListener("reset", () => setTimeout(sync));
  form.addEventListener("submit", (event) => { event.preventDefault(); upload(form, { name, architecture, file, labels, options, message, submit }); });
  sync();
  return el("details", { class: "panel upload-panel" },
    el("summary", {}, el("h2", {}, "Upload a model")),
    el("p", { class: "hint" }, "Your weights for a torchvision or timm architecture as a .safetensors state dict, or a self-contained ONNX ",
      "classifier. An existing name gets a new version; a plain name then means the newest one (unless one is pinned). ",
      "Where the service needs keys, this takes one with the admin scope."),
    form);
}

async function upload(form, { name, architecture, file, labels, options, message, submit }) {
  message.replaceChildren();
  const format = form.elements.format.value;
  const chosen = file.files[0];
  if (!chosen) return;
  const body = new FormData();
  body.append("name", name.value.trim());
  if (format === "weights") body.append("architecture", architecture.value.trim());
  body.append(FORMATS[format].field, chosen, chosen.name);
  if (labels.files[0]) body.append("labels", labels.files[0], labels.files[0].name);
  submit.disabled = true;
  submit.replaceChildren(spinner(), "Uploading and checking…");
  try {
    const extra = collectObject(options);   // throws on a field that is not a number
    if (format !== "weights") delete extra.cam_layer;
    for (const [key, value] of Object.entries(extra)) body.append(key, Array.isArray(value) ? value.join(",") : String(value));
    const created = await api("/v1/models", { method: "POST", form: body });
    const ref = `${created.id}@${created.version}`;
    form.reset();
    message.replaceChildren(el("p", { class: "ok" }, `Uploaded ${ref}. `,
      el("a", { href: `#explain?model=${encodeURIComponent(ref)}` }, `Explain with ${ref}`)));
    window.dispatchEvent(new CustomEvent("gazer:models-changed"));
    await showModels(new URLSearchParams({ model: created.id }));
  } catch (error) {
    message.replaceChildren(problemBox(error, "The model was not stored"));
  } finally {
    submit.disabled = false;
    submit.replaceChildren("Upload");
  }
}
