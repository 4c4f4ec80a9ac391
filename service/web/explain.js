// The Explain view: images in, top-k predictions and maps out; click a class to explain it;
// compare several methods side by side.
import { api, ApiError, modelsWithVersions, openapi } from "./api.js";
import { colourBar, colourHeatmap, composite, loadImage } from "./heatmap.js";
import { explainSchema, inputFor, plainText } from "./schema.js";
import { downloadBlob, el, fill, fmtMs, fmtNumber, humanize, pct, problemBox, spinner } from "./ui.js";

// four different views: at the default layer `cam` would repeat Grad-CAM's map (core/explain/cam.py, at_classifier_layer)
const PREFERRED_COMPARE = ["gradcam", "saliency", "integrated_gradients", "smoothgrad"];
const $ = (id) => document.getElementById(id);

const state = {
  schema: null,           // explainSchema(openapi)
  details: new Map(),     // model ref -> GET /v1/models/{ref}
  model: null,            // selected ref
  served: null,           // what it meant when last looked up: NAME@VERSION
  method: null,
  optionValues: {},       // method -> {option: value}
  images: [],             // {key, file, name, url, original (HTMLImageElement|null), card, target, result, maps: []}
  active: null,
  view: { opacity: 0.5, heatmapOnly: false },
  toolbar: null,
  notice: null,
};
let nextKey = 1;

// ------------------------------------------------------------------------------------------------ setup
export async function initExplain() {
  const input = $("file-input");
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
  const zone = $("dropzone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) zone.addEventListener(type, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => { event.preventDefault(); addFiles([...event.dataTransfer.files]); });
  // A drop anywhere on the view works too.
  const view = $("view-explain");
  view.addEventListener("dragover", (event) => event.preventDefault());
  view.addEventListener("drop", (event) => { if (!zone.contains(event.target)) { event.preventDefault(); addFiles([...event.dataTransfer.files]); } });

  $("model-select").addEventListener("change", () => selectModel($("model-select").value));
  $("method-select").addEventListener("change", () => selectMethod($("method-select").value));
  $("explain-btn").addEventListener("click", () => explainAll());
  $("compare-btn").addEventListener("click", () => { const image = activeImage(); if (image) compare(image); });

  buildToolbar();
  // a model uploaded, pinned or deleted: the picker read again, and what a name means too
  window.addEventListener("gazer:models-changed", () => {
    state.details.clear();
    if (state.schema) refreshModels(null, { keepMissing: false, reselect: true });
  });
  try {
    state.schema = explainSchema(await openapi());
  } catch (error) {
    showNotice(error, "Could not read the API description");
    return;
  }
  renderGeneralOptions();
}

export async function showExplain(params) {
  if (!state.schema) return;
  await refreshModels(params.get("model"));
}

function showNotice(error, context) {
  state.notice?.remove();
  state.notice = problemBox(error, context);
  state.notice.dataset.context = context;
  $("explain-results").prepend(state.notice);
}

// `context`: only a notice said of that (a 401 listing the models, gone once a key lists them)
function clearNotice(context) {
  if (context !== undefined && state.notice?.dataset.context !== context) return;
  state.notice?.remove();
  state.notice = null;
}

// ------------------------------------------------------------------------------------------------ models
// `keepMissing`: a wanted model the list lacks stays chosen (its 404 shows); `reselect`: the
// chosen name is looked up again even if it is still chosen (it may mean another version now).
async function refreshModels(wanted, { keepMissing = true, reselect = false } = {}) {
  const select = $("model-select");
  let models;
  try {
    models = await modelsWithVersions();
  } catch (error) {
    showNotice(error, "Could not list the models");
    return;
  }
  clearNotice("Could not list the models");
  const previous = wanted || state.model || select.value;
  select.replaceChildren();
  for (const model of models) {
    const versions = model.versions.length ? model.versions : [{ version: model.version, default: true }];
    if (versions.length === 1) {
      select.append(el("option", { value: model.id }, `${model.id}  ·  v${model.version}`));
    } else {
      select.append(el("optgroup", { label: model.id },
        el("option", { value: model.id }, `${model.id}  ·  default (v${model.version})`),
        versions.map((v) => el("option", { value: `${model.id}@${v.version}` }, `${model.id}@${v.version}${v.state === "failed" ? "  (failed)" : ""}`))));
    }
  }
  const listed = [...select.options].some((o) => o.value === previous);
  if (previous && !listed && keepMissing) {
    select.append(el("option", { value: previous }, previous));
  }
  select.value = previous && (listed || keepMissing) ? previous : select.options[0]?.value || "";
  if (select.value && (reselect || select.value !== state.model)) await selectModel(select.value);
  else if (!select.value) updateButtons();
}

async function modelDetail(ref) {
  if (!state.details.has(ref)) {
    state.details.set(ref, api(`/v1/models/${encodeURIComponent(ref)}`).catch((error) => { state.details.delete(ref); throw error; }));
  }
  return state.details.get(ref);
}

// Another model's classes: a chosen class, and its map, are not this one's.
function forgetTargets() {
  for (const image of state.images || []) {
    image.target = null;
    image.result = null;
    image.card?.predictions.replaceChildren();   // the old model's classes, which a click would explain
  }
}

async function selectModel(ref) {
  if (state.model !== ref) forgetTargets();
  state.model = ref;
  let detail;
  try {
    detail = await modelDetail(ref);
  } catch (error) {
    showNotice(error, `Model ${ref}`);
    return;
  }
  if (state.model !== ref) return;
  const served = `${detail.id}@${detail.version}`;
  if (state.served && state.served !== served) forgetTargets();   // the same name, another version now
  state.served = served;
  state.layerMethods = detail.layer_methods;
  const methods = state.schema.order.filter((m) => detail.methods.includes(m))
    .concat(detail.methods.filter((m) => !state.schema.order.includes(m)));
  const select = $("method-select");
  const keep = methods.includes(state.method) ? state.method
    : methods.includes(detail.default_method) ? detail.default_method : methods[0];
  select.replaceChildren(...methods.map((m) => el("option", { value: m }, m)));
  select.value = keep;
  selectMethod(keep);

  const layer = $("layer-select");
  if (layer) {
    layer.replaceChildren(el("option", { value: "" }, detail.default_layer ? `default (${detail.default_layer})` : "none: an ONNX model"),
      ...detail.layers.filter((l) => l !== detail.default_layer).map((l) => el("option", { value: l }, l)));
  }
  const chips = $("compare-methods");
  const checked = new Set(chips.querySelectorAll("input:checked").length
    ? [...chips.querySelectorAll("input:checked")].map((i) => i.value) : PREFERRED_COMPARE);
  let selected = methods.filter((m) => checked.has(m));
  if (!selected.length) selected = methods.slice(0, 4);
  chips.replaceChildren(...methods.map((m) => el("label", { class: "chip" },
    el("input", { type: "checkbox", value: m, checked: selected.includes(m) }), m)));
  updateButtons();
}

// a method that explains the input's pixels takes no layer: the select is off, and no form sends it
function takesLayer(method) {
  return (state.layerMethods || []).includes(method);
}

function showLayerUse(method) {
  const layer = $("layer-select");
  if (!layer) return;
  layer.disabled = !takesLayer(method);
  layer.title = layer.disabled ? `${method} explains the input's pixels, at no layer` : "";
}

function selectMethod(method) {
  state.method = method;
  showLayerUse(method);
  const container = $("method-options");
  container.replaceChildren();
  const options = state.schema.options[method] || [];
  const values = state.optionValues[method] ??= {};
  $("method-hint").textContent = options.length ? "" : "This method takes no options.";
  for (const option of options) {
    const id = `opt-${method}-${option.name}`.replace(/\W/g, "-");
    const input = inputFor(option, { name: option.name, value: values[option.name] ?? option.default });
    input.id = id;
    // kept as typed: the form sends text, and the service names a value it cannot take (422)
    const keep = () => { values[option.name] = input.type === "checkbox" ? input.checked : input.value.trim(); };
    input.addEventListener("input", keep);
    input.addEventListener("change", keep);
    const bounds = [option.minimum !== undefined ? `${option.minimum}` : null, option.maximum !== undefined ? `${option.maximum}` : null];
    const range = bounds[0] !== null && bounds[1] !== null ? `${bounds[0]}–${bounds[1]}` : "";
    container.append(el("div", { class: "field" },
      el("label", { for: id }, humanize(option.name), range ? el("span", { class: "range" }, range) : null),
      input,
      option.doc ? el("p", { class: "hint" }, option.doc, option.default !== undefined ? ` (default ${option.default})` : "") : null));
  }
}

function renderGeneralOptions() {
  const props = state.schema.props;
  const container = $("general-options");
  const topK = inputFor(props.top_k, { name: "top_k" });
  topK.id = "opt-top-k";
  const resizeChoices = [...(props.resize.description || "").matchAll(/(?:^|; )(\w+):/g)].map((m) => m[1]);
  const resize = el("select", { id: "opt-resize", name: "resize" },
    (resizeChoices.length ? resizeChoices : [props.resize.default]).map((c) => el("option", { value: c, selected: c === props.resize.default }, c)));
  const layer = el("select", { id: "layer-select", name: "layer" });
  container.append(
    el("div", { class: "field" }, el("label", { for: "opt-top-k" }, "Top classes"), topK, el("p", { class: "hint" }, plainText(props.top_k.description))),
    el("div", { class: "field" }, el("label", { for: "opt-resize" }, "Resize"), resize, el("p", { class: "hint" }, plainText(props.resize.description))),
    el("div", { class: "field wide" }, el("label", { for: "layer-select" }, "Layer"), layer, el("p", { class: "hint" }, plainText(props.layer.description))));
}

function updateButtons() {
  const ready = Boolean(state.model && state.method);
  $("explain-btn").disabled = !ready || !state.images.length;
  $("compare-btn").disabled = !ready || !state.images.length;
  if (state.toolbar) state.toolbar.hidden = !state.images.length;
}

// ------------------------------------------------------------------------------------------------ images
async function addFiles(files) {
  if (!files.length) return;
  $("explain-empty").hidden = true;
  for (const file of files) {
    const image = { key: nextKey++, file, name: file.name || "image", url: URL.createObjectURL(file), original: null,
      target: null, result: null, maps: [] };
    try { image.original = await loadImage(image.url); } catch { image.original = null; }
    state.images.push(image);
    image.card = buildCard(image);
    $("explain-results").append(image.card.root);
    addThumb(image);
  }
  setActive(state.images[state.images.length - files.length]);
  updateButtons();
}

function addThumb(image) {
  const thumb = el("div", { class: "thumb", title: image.name, tabindex: "0", role: "button", "aria-label": `Show ${image.name}`,
                           dataset: { key: image.key } },
    image.original ? el("img", { src: image.url, alt: image.name }) : el("span", { class: "thumb-missing" }, "?"),
    el("button", { class: "thumb-remove", type: "button", "aria-label": `Remove ${image.name}`, onclick: (event) => { event.stopPropagation(); removeImage(image); } }, "×"));
  const show = () => { setActive(image); image.card.root.scrollIntoView({ behavior: "smooth", block: "nearest" }); };
  thumb.addEventListener("click", show);
  thumb.addEventListener("keydown", (event) => {
    if (event.target === thumb && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      show();
    }
  });
  image.thumb = thumb;
  $("thumbs").append(thumb);
}

function removeImage(image) {
  state.images = state.images.filter((i) => i !== image);
  image.thumb.remove();
  image.card.root.remove();
  URL.revokeObjectURL(image.url);
  if (state.active === image) setActive(state.images[0] || null);
  if (!state.images.length) { $("explain-empty").hidden = false; clearNotice(); }
  updateButtons();
}

function setActive(image) {
  state.active = image;
  for (const other of state.images) {
    other.thumb?.classList.toggle("active", other === image);
    other.card.root.classList.toggle("active", other === image);
  }
}

const activeImage = () => state.active || state.images[0];

// ------------------------------------------------------------------------------------------------ cards
function buildCard(image) {
  const explanationCanvas = el("canvas", { class: "map-canvas", "aria-label": "explanation" });
  const mapSlot = el("div", { class: "map-slot empty-map" }, el("span", {}, "Press Explain to see the map"));
  const predictions = el("ol", { class: "predictions" });
  const meta = el("div", { class: "card-meta" });
  const faith = el("div", { class: "faithfulness" });
  const compareArea = el("div", { class: "compare-area" });
  const error = el("div", { class: "card-error" });
  const download = el("button", { class: "btn ghost small", type: "button", disabled: true,
    onclick: () => downloadCanvas(explanationCanvas, `${stem(image.name)}-${image.result?.explanation.method || "map"}.png`) }, "Download PNG");
  const root = el("article", { class: "result-card", dataset: { key: image.key } },
    el("header", { class: "card-head" },
      el("h3", { title: image.name }, image.name),
      meta,
      el("div", { class: "card-actions" },
        el("button", { class: "btn ghost small", type: "button", onclick: () => { setActive(image); compare(image); } }, "Compare methods"),
        download)),
    error,
    el("div", { class: "card-body" },
      el("div", { class: "pair" },
        el("figure", { class: "frame" },
          image.original ? el("img", { class: "original", src: image.url, alt: `original: ${image.name}` })
            : el("div", { class: "no-preview" }, "No preview: this browser cannot show the file"),
          el("figcaption", {}, "Original")),
        el("figure", { class: "frame" }, mapSlot, el("figcaption", { class: "map-caption" }, "Explanation"))),
      el("aside", { class: "side" },
        el("h4", {}, "Predictions"),
        predictions,
        el("p", { class: "hint" }, "Click a class to explain it."),
        faith)),
    compareArea);
  root.addEventListener("click", () => setActive(image));
  return { root, mapSlot, explanationCanvas, predictions, meta, faith, compareArea, error, download };
}

function stem(name) {
  return name.replace(/\.[^.]+$/, "") || "image";
}

function downloadCanvas(canvas, filename) {
  canvas.toBlob((blob) => blob && downloadBlob(blob, filename), "image/png");
}

function renderPredictions(image) {
  const { predictions } = image.card;
  const result = image.result;
  const chosen = result.explanation.target.index;
  predictions.replaceChildren(...result.predictions.map((p, rank) => el("li", {},
    el("button", { type: "button", class: `prediction${p.index === chosen ? " selected" : ""}`, "data-index": p.index,
      "data-rank": rank + 1, title: `Explain class ${p.index} (${p.label})`,
      onclick: (event) => { event.stopPropagation(); explainOne(image, p.index); } },
      el("span", { class: "p-label" }, el("span", { class: "p-rank" }, rank + 1), p.label),
      el("span", { class: "p-value" }, pct(p.probability)),
      el("span", { class: "p-bar" }, el("span", { style: `width:${Math.max(0.5, p.probability * 100)}%` }))))));
  if (!result.predictions.some((p) => p.index === chosen)) {
    const t = result.explanation.target;
    predictions.append(el("li", {}, el("div", { class: "prediction selected static" },
      el("span", { class: "p-label" }, el("span", { class: "p-rank" }, "·"), t.label), el("span", { class: "p-value" }, pct(t.probability)))));
  }
}

function renderFaithfulness(container, scores) {
  container.replaceChildren();
  if (!scores) return;
  container.append(el("h4", {}, "Faithfulness"), el("dl", { class: "scores" },
    el("div", {}, el("dt", { title: "area under p(target) as the map's top pixels are blacked out; lower is better" }, "Deletion ↓"), el("dd", {}, fmtNumber(scores.deletion, 3))),
    el("div", {}, el("dt", { title: "area under p(target) as they are restored into a blurred copy; higher is better" }, "Insertion ↑"), el("dd", {}, fmtNumber(scores.insertion, 3)))));
}

// An attention map's raw gate range: the map is scaled to [0, 1], so this is what it started from.
function gateTag(gate) {
  return el("span", { class: `tag subtle gate${gate.flat ? " warn" : ""}`, title: gate.flat
    ? "the gate barely varies over this image: the map is all zeros rather than stretched noise"
    : "the attention gate's raw values over this image (a multiplier of the features)" },
  `gate ${fmtNumber(gate.min, 3)}–${fmtNumber(gate.max, 3)}, mean ${fmtNumber(gate.mean, 3)}${gate.flat ? " · flat" : ""}`);
}

const totalMs = (timings) => Object.values(timings || {}).reduce((a, b) => a + b, 0);

async function showMap(image, result, elapsed, model) {
  const card = image.card;
  const explanation = result.explanation;
  const width = image.original?.naturalWidth;
  const height = image.original?.naturalHeight;
  const heat = await colourHeatmap(explanation.heatmap_png, width, height, explanation.crop);
  image.heat = heat;
  card.mapSlot.classList.remove("empty-map", "loading");
  card.mapSlot.replaceChildren(card.explanationCanvas);
  const canvas = card.explanationCanvas;
  canvas.dataset.method = explanation.method;
  canvas.dataset.target = explanation.target.index;
  image.maps = image.maps.filter((m) => m.canvas !== canvas);
  image.maps.push({ canvas, heat });
  draw(image.original, heat, canvas);
  card.download.disabled = false;
  const t = explanation.target;
  fill(card.root.querySelector(".map-caption"),
    el("span", {}, el("b", {}, explanation.method), " · ", t.label, " ", el("span", { class: "muted" }, `(${pct(t.probability)})`)));
  fill(card.meta,
    el("span", { class: "tag" }, model),
    explanation.layer ? el("span", { class: "tag subtle", title: "layer explained" }, explanation.layer) : null,
    explanation.gate ? gateTag(explanation.gate) : null,
    explanation.flat && !explanation.gate ? el("span", { class: "tag subtle warn", title: "the map is one value everywhere: "
      + "this method found nothing to point at for this class at this layer; try another layer or method" }, "flat map") : null,
    el("span", { class: "tag subtle", title: `server: ${Object.entries(explanation.timings_ms).map(([k, v]) => `${k} ${fmtMs(v)}`).join(", ")}` },
      `${fmtMs(totalMs(explanation.timings_ms))} server · ${fmtMs(elapsed)} total`));
  renderPredictions(image);
  renderFaithfulness(card.faith, explanation.faithfulness);
}

function draw(original, heat, canvas) {
  composite(canvas, original, heat, { opacity: state.view.opacity, heatmapOnly: state.view.heatmapOnly || !original });
}

function redrawAll() {
  for (const image of state.images) for (const map of image.maps) draw(image.original, map.heat, map.canvas);
}

function buildToolbar() {
  const slider = el("input", { type: "range", id: "opacity", min: 0, max: 1, step: 0.01, value: state.view.opacity, "aria-label": "Heatmap opacity" });
  const value = el("output", { for: "opacity", class: "muted" }, `${Math.round(state.view.opacity * 100)}%`);
  slider.addEventListener("input", () => {
    state.view.opacity = Number(slider.value);
    value.textContent = `${Math.round(state.view.opacity * 100)}%`;
    redrawAll();
  });
  const only = el("input", { type: "checkbox", id: "heatmap-only" });
  only.addEventListener("change", () => { state.view.heatmapOnly = only.checked; slider.disabled = only.checked; redrawAll(); });
  state.toolbar = el("div", { class: "view-toolbar" },
    el("label", { class: "slider", for: "opacity" }, "Opacity", slider, value),
    el("label", { class: "check" }, only, "Heatmap only"),
    el("span", { class: "legend-bar" }, el("span", { class: "muted" }, "low"), colourBar(), el("span", { class: "muted" }, "high")));
  state.toolbar.hidden = true;
  $("explain-results").prepend(state.toolbar);
}

// ------------------------------------------------------------------------------------------------ requests
function methodFields(form, method) {
  for (const option of state.schema.options[method] || []) {
    const value = state.optionValues[method]?.[option.name] ?? option.default;
    if (value !== undefined && value !== null && value !== "") form.append(option.name, value);
  }
}

function baseForm(method, { faithfulness } = {}) {
  const form = new FormData();
  form.append("method", method);
  form.append("outputs", "heatmap");
  const topK = $("opt-top-k").value.trim();
  if (topK !== "") form.append("top_k", topK);
  form.append("resize", $("opt-resize").value);
  const layer = $("layer-select")?.value;
  if (layer && takesLayer(method)) form.append("layer", layer);
  if (faithfulness ?? $("faithfulness").checked) form.append("faithfulness", "true");
  methodFields(form, method);
  return form;
}

// `model`: the one selected when the work began; an answer that comes back after another was
// selected is dropped (it was shown under the new model's name, with the old one's classes)
async function post(form, model) {
  return api(`/v1/models/${encodeURIComponent(model)}/explain`, { method: "POST", form });
}

function setBusy(button, busy, label) {
  button.disabled = busy;
  button.classList.toggle("busy", busy);
  if (label) button.dataset.label ??= button.textContent;
  button.replaceChildren(...(busy ? [spinner(), label || button.dataset.label] : [button.dataset.label || button.textContent]));
}

async function explainAll() {
  if (!state.images.length) return;
  clearNotice();
  const button = $("explain-btn");
  setBusy(button, true, "Explaining…");
  const model = state.model;
  // groups of images, one request each: all at first, halved while the service finds a request too large
  const groups = [[...state.images]];
  const stopWaiting = () => {
    for (const image of groups.flat()) image.card.mapSlot.classList.remove("loading");
  };
  for (const image of state.images) {
    image.card.error.replaceChildren();
    image.card.mapSlot.classList.add("loading");
  }
  let shown = false;
  try {
    while (groups.length) {
      const pending = groups[0] = groups[0].filter((image) => state.images.includes(image));  // not those removed since
      if (!pending.length) {
        groups.shift();
        continue;
      }
      const form = baseForm(state.method);
      for (const image of pending) form.append("file", image.file, image.name);
      const started = performance.now();
      try {
        const body = await post(form, model);
        const elapsed = performance.now() - started;
        if (state.model !== model) return stopWaiting();
        groups.shift();
        await Promise.all(body.results.map((result, index) => {
          pending[index].result = result;
          pending[index].target = result.explanation.target.index;
          return showMap(pending[index], result, elapsed, model);
        }));
        const first = pending[0].card.root;  // on a phone the results start below the form
        if (!shown && first.getBoundingClientRect().top > window.innerHeight) first.scrollIntoView({ block: "start" });
        shown = true;
      } catch (error) {
        const culprits = filesAtFault(error, pending);
        if (state.model !== model) return stopWaiting();
        if (!culprits.size && error.problem?.status === 413 && pending.length > 1) {
          // over a limit of one request (its bytes, files or pixels), not of a file: sent in halves
          const half = Math.ceil(pending.length / 2);
          groups.splice(0, 1, pending.slice(0, half), pending.slice(half));
          continue;
        }
        if (!culprits.size) {
          stopWaiting();
          showNotice(error, pending.length > 1 ? `Explaining ${pending.length} images` : `Explaining ${pending[0].name}`);
          return;
        }
        // files refused (unreadable, too large): each said on its card, and the others explained without them
        for (const [culprit, item] of culprits) {
          culprit.card.mapSlot.classList.remove("loading");
          const status = item.status ?? error.problem.status;
          const title = status === error.problem.status ? error.problem.title : `Refused (${status})`;
          const own = { ...error, problem: { ...error.problem, status, title, detail: item.message, errors: [] } };
          culprit.card.error.replaceChildren(problemBox(own, `Explaining ${culprit.name}`));
        }
        const rest = pending.filter((image) => !culprits.has(image));
        if (rest.length) groups[0] = rest;
        else groups.shift();
      }
    }
  } finally {
    setBusy(button, false);
    updateButtons();
  }
}

// The images whose files the service refused (its problem names their fields, `file.N`), each with
// its error (what is said of that file, its own status); none where the refusal is the request's.
function filesAtFault(error, images) {
  const found = new Map();
  for (const item of error?.problem?.errors ?? []) {
    const index = /^file\.(\d+)$/.exec(item.field);
    const image = index ? images[Number(index[1])] : undefined;
    if (!image) return new Map();
    found.set(image, item);
  }
  return found;
}

async function explainOne(image, target) {
  setActive(image);
  image.card.error.replaceChildren();
  image.card.mapSlot.classList.add("loading");
  for (const button of image.card.predictions.querySelectorAll(".prediction")) {
    button.classList.toggle("pending", Number(button.dataset.index) === target);
  }
  const form = baseForm(state.method);
  form.append("target", target);
  form.append("file", image.file, image.name);
  const model = state.model;
  const started = performance.now();
  try {
    const body = await post(form, model);
    if (state.model !== model) return;
    image.result = body.results[0];
    image.target = target;
    await showMap(image, image.result, performance.now() - started, model);
  } catch (error) {
    if (state.model === model) image.card.error.replaceChildren(problemBox(error, `Explaining class ${target}`));
  } finally {
    image.card.mapSlot.classList.remove("loading");
    for (const button of image.card.predictions.querySelectorAll(".prediction.pending")) {
      button.classList.remove("pending");
    }
  }
}

async function compare(image) {
  if (image.comparing) return;   // a second click on the card's button ran every method twice
  const methods = [...$("compare-methods").querySelectorAll("input:checked")].map((i) => i.value);
  const card = image.card;
  card.error.replaceChildren();
  if (!methods.length) {
    card.error.replaceChildren(problemBox(new ApiError({ title: "Nothing to compare", detail: "Tick at least one method under Compare methods." })));
    return;
  }
  const button = $("compare-btn");
  setBusy(button, true, "Comparing…");
  image.comparing = true;
  const faithfulness = $("faithfulness").checked;
  const cells = methods.map((method) => {
    const canvas = el("canvas", { class: "map-canvas", "aria-label": `${method} map` });
    const slot = el("div", { class: "map-slot loading" }, spinner());
    const info = el("div", { class: "compare-info" }, el("span", { class: "muted" }, "waiting…"));
    const save = el("button", { class: "icon-btn", type: "button", title: `Download the ${method} map as PNG`, "aria-label": `Download ${method} PNG`,
      disabled: true, onclick: () => downloadCanvas(canvas, `${stem(image.name)}-${method}.png`) }, "↓");
    const root = el("figure", { class: "compare-cell", dataset: { method } },
      el("div", { class: "compare-head" }, el("b", {}, method), save), slot, info);
    return { method, canvas, slot, info, save, root };
  });
  const target = image.target;
  const model = state.model;
  fill(card.compareArea,
    el("div", { class: "compare-title" }, el("h4", {}, "Compared"),
      el("span", { class: "muted" }, target !== null ? `class ${target}${image.result ? ` · ${image.result.explanation.target.label}` : ""}` : "top-1 class")),
    el("div", { class: "compare-grid" }, cells.map((c) => c.root)));
  image.maps = image.maps.filter((m) => m.canvas === card.explanationCanvas);
  try {
    for (const cell of cells) {
      if (state.model !== model) {  // the classes and maps are another model's from here on
        cell.slot.classList.remove("loading");
        fill(cell.info, el("span", { class: "muted" }, "not run: another model was chosen"));
        continue;
      }
      const form = baseForm(cell.method, { faithfulness });
      if (target !== null) form.append("target", target);
      form.append("file", image.file, image.name);
      const started = performance.now();
      try {
        const body = await post(form, model);
        const elapsed = performance.now() - started;
        if (state.model !== model) {
          cell.slot.classList.remove("loading");
          fill(cell.info, el("span", { class: "muted" }, "dropped: another model was chosen"));
          continue;
        }
        const explanation = body.results[0].explanation;
        const { naturalWidth, naturalHeight } = image.original ?? {};
        const heat = await colourHeatmap(explanation.heatmap_png, naturalWidth, naturalHeight, explanation.crop);
        cell.slot.classList.remove("loading");
        cell.slot.replaceChildren(cell.canvas);
        cell.canvas.dataset.target = explanation.target.index;
        image.maps.push({ canvas: cell.canvas, heat });
        draw(image.original, heat, cell.canvas);
        cell.save.disabled = false;
        const scores = explanation.faithfulness;
        fill(cell.info,
          el("span", { class: "time", title: `server ${fmtMs(totalMs(explanation.timings_ms))}` }, fmtMs(elapsed)),
          scores ? el("span", { class: "muted" }, `del ${fmtNumber(scores.deletion, 3)} · ins ${fmtNumber(scores.insertion, 3)}`) : null);
      } catch (error) {
        cell.slot.classList.remove("loading");
        cell.slot.replaceChildren(problemBox(error));
        cell.info.replaceChildren();
      }
    }
  } finally {
    image.comparing = false;
    setBusy(button, false);
    updateButtons();
  }
}
