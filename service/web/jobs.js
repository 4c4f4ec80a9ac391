// The Jobs view: upload a data set, start fine-tuning or activation maximization from forms generated
// from the OpenAPI schemas, follow jobs live over server-sent events, cancel, read the results.
import { api, apiBlob, ApiError, eventStream, modelsWithVersions, openapi, resolve } from "./api.js";
import { accuracyBars, bars, confusionMatrix, lineChart } from "./plot.js";
import { collectObject, inputFor, plainText, renderObject } from "./schema.js";
import { showSweep, stopSweep } from "./sweep.js";
import { downloadBlob, el, fill, fmtMs, fmtNumber, fmtTime, pct, problemBox, spinner, stat, toast } from "./ui.js";

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);
const FORMS = { "fine-tune": "finetune-form", sweep: "sweep-form", "explain-dataset": "explain-dataset-form",
  "activation-maximization": "maximize-form" };
const SUBMIT = { "fine-tune": "Start fine-tuning", sweep: "Start the sweep", "explain-dataset": "Explain the data set",
  "activation-maximization": "Start activation maximization" };
const cards = new Map();     // job id -> {root, ...}
const streams = new Map();   // job id -> AbortController of its event stream
// Chromium opens at most 6 connections to one host: more streams than this left none for the
// page's own calls (cancel, refresh, explain hung); the other unfinished jobs are polled
const MAX_STREAMS = 3;
const POLL_MS = 3000;
let poller = null;
let datasets = [];
let datasetsUnlisted = false;   // the last listing failed (a 403 for a key without the jobs scope, say)
let formsBuilt = false;
const MEANS_SHOWN = 32;     // classes whose mean Grad-CAM a report draws (each a request of its own)
const MISTAKES_SHOWN = 8;
const KINDS = { "fine-tune": "Fine-tune", sweep: "Sweep", "explain-dataset": "Explain data set", "activation-maximization": "Activation maximization" };

export async function initJobs() {
  $("dataset-form").addEventListener("submit", uploadDataset);
  $("jobs-refresh").addEventListener("click", () => loadJobs());
  window.addEventListener("pagehide", stopAll);
  for (const tab of document.querySelectorAll("[data-jobform]")) {
    tab.addEventListener("click", () => {
      for (const other of document.querySelectorAll("[data-jobform]")) {
        other.classList.toggle("active", other === tab);
        other.setAttribute("aria-selected", String(other === tab));   // what a screen reader says is shown
      }
      for (const [kind, id] of Object.entries(FORMS)) $(id).hidden = kind !== tab.dataset.jobform;
    });
  }
  document.body.append(el("datalist", { id: "model-ids" }));
  window.addEventListener("gazer:models-changed", () => refreshModelList());
  await Promise.all([buildForms(), loadDatasets()]);
}

export async function showJobs() {
  await Promise.all([loadDatasets(), loadJobs(), refreshModelList()]);
}

// ------------------------------------------------------------------------------------------------ forms
async function buildForms() {
  if (formsBuilt) return;
  let spec;
  try {
    spec = await openapi();
  } catch (error) {
    $("finetune-form").replaceChildren(problemBox(error, "Could not read the API description"));
    return;
  }
  formsBuilt = true;
  for (const [kind, id] of Object.entries(FORMS)) {
    const form = $(id);
    const schema = resolve(spec, spec.paths[`/v1/jobs/${kind}`].post.requestBody.content["application/json"].schema);
    form.replaceChildren();
    if (schema.description) form.append(el("p", { class: "hint" }, plainText(schema.description)));
    renderObject(spec, schema, form, { custom: (path, field) => customInput(path, field, id), split: true });
    suggestFromModel(form);
    const message = el("div", { class: "form-message" });
    form.append(el("div", { class: "actions" },
      el("button", { class: "btn primary", type: "submit" }, SUBMIT[kind]),
      el("button", { class: "btn ghost", type: "reset" }, "Reset to defaults")), message);
    form.addEventListener("submit", (event) => { event.preventDefault(); submitJob(kind, form, message); });
  }
  refreshModelList();
}

function customInput(path, schema, formId) {
  const field = path.replace(/^base\./, "");   // a sweep's base is a fine-tune's fields
  if (field === "method" || field === "layer" || field === "target.layer") {
    // the chosen model's methods or layers offered (suggestFromModel), any text still taken
    const input = inputFor(schema, { name: path });
    input.setAttribute("list", `${formId}-${field === "method" ? "methods" : "layers"}`);
    return input;
  }
  if (field === "dataset_id") {
    const select = el("select", { name: path, "data-type": "string", required: true, class: "dataset-select" });
    fillDatasetSelect(select);
    return select;
  }
  if (field === "base_model" || field === "model") {
    const input = inputFor(schema, { name: path });
    input.setAttribute("list", "model-ids");
    return input;
  }
  if (field === "output_model") {
    const input = inputFor(schema, { name: path, required: true });
    input.placeholder = "e.g. pets";
    input.pattern = "[A-Za-z0-9_.\\-]{1,64}";
    return input;
  }
  return null;
}

// A form's method and layer fields offer the methods and layers of the model its model field names,
// read from the model's detail whenever that field changes (and for its default at once).
function suggestFromModel(form) {
  const model = form.querySelector("input[name='model']");
  if (!model || !form.querySelector(`[list^='${form.id}-']`)) return;
  const lists = { methods: el("datalist", { id: `${form.id}-methods` }), layers: el("datalist", { id: `${form.id}-layers` }) };
  form.append(lists.methods, lists.layers);
  const fill = async () => {
    const ref = model.value.trim() || model.placeholder;
    try {
      const detail = await api(`/v1/models/${encodeURIComponent(ref)}`);
      if (model.value.trim() && model.value.trim() !== ref) return;   // changed again meanwhile
      lists.methods.replaceChildren(...detail.methods.map((name) => el("option", { value: name })));
      lists.layers.replaceChildren(...detail.layers.map((name) => el("option", { value: name })));
    } catch {
      lists.methods.replaceChildren();   // an unknown model: nothing to offer (the submit says why)
      lists.layers.replaceChildren();
    }
  };
  model.addEventListener("change", fill);
  form.addEventListener("reset", () => setTimeout(fill));
  fill();
}

function fillDatasetSelect(select, chosen) {
  const keep = chosen || select.value;
  select.replaceChildren(...(datasets.length
    ? datasets.map((d) => el("option", { value: d.id }, `${d.name} · ${d.classes.length} classes, ${d.images} images`))
    : [el("option", { value: "" }, datasetsUnlisted ? "The data sets could not be listed" : "Upload a data set first")]));
  if (keep && datasets.some((d) => d.id === keep)) select.value = keep;
}

async function refreshModelList() {
  try {
    const models = await modelsWithVersions();
    $("model-ids").replaceChildren(...models.flatMap((m) => [el("option", { value: m.id }),
      ...(m.versions.length > 1 ? m.versions.map((v) => el("option", { value: `${m.id}@${v.version}` })) : [])]));
  } catch { /* the datalist is only a convenience */ }
}

async function submitJob(kind, form, message) {
  message.replaceChildren();
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const body = collectObject(form);   // throws on a field that is not JSON
    const job = await api(`/v1/jobs/${kind}`, { method: "POST", json: body });
    toast(`Job ${job.id.slice(0, 8)} queued`, "success");
    upsertCard(job, { prepend: true });
    follow(job);
  } catch (error) {
    message.replaceChildren(problemBox(error, "The job was not started"));
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------ data sets
// the files an upload left out, each with why, opened by a click or a key (a hover alone reached no phone or keyboard)
function leftOut(d) {
  const more = d.unreadable_count - d.unreadable.length;
  return el("details", { class: "ds-left-out" },
    el("summary", { class: "warn" }, `${d.unreadable_count} ${d.unreadable_count === 1 ? "file" : "files"} left out`),
    el("ul", {}, d.unreadable.map((u) => el("li", {}, `${u.file}: ${u.reason}`)),
      more > 0 ? el("li", { class: "muted" }, `and ${more} more`) : null));
}

async function loadDatasets(select) {
  try {
    datasets = (await api("/v1/datasets")).data.sort((a, b) => b.created_at - a.created_at);
  } catch (error) {
    datasets = [];   // not the last listing's, which may be another key's
    datasetsUnlisted = true;
    $("dataset-message").replaceChildren(problemBox(error, "Could not list the data sets"));
    for (const node of document.querySelectorAll(".dataset-select")) fillDatasetSelect(node, select);
    return;
  }
  datasetsUnlisted = false;
  $("dataset-message").querySelector(".problem")?.remove();   // an earlier listing's error
  const list = $("dataset-list");
  list.replaceChildren(...datasets.map((d) => el("li", {},
    el("div", { class: "ds-main" }, el("b", {}, d.name), el("span", { class: "muted" }, ` ${d.id.slice(0, 8)}`)),
    el("div", { class: "ds-meta" }, `${d.classes.length} classes · ${d.images} images`),
    el("div", { class: "ds-classes" }, d.classes.slice(0, 12).map((c) => el("span", { class: "chip static" }, c, el("small", {}, d.counts[c]))),
      d.classes.length > 12 ? el("span", { class: "muted" }, ` +${d.classes.length - 12}`) : null),
    d.unreadable_count ? leftOut(d) : null,
    el("button", { class: "btn ghost small", type: "button", onclick: () => useDataset(d.id) }, "Fine-tune on this"))));
  if (!datasets.length) list.append(el("li", { class: "empty-line" }, "No data sets yet."));
  for (const node of document.querySelectorAll(".dataset-select")) fillDatasetSelect(node, select);
}

function useDataset(id) {
  document.querySelector('[data-jobform="fine-tune"]').click();
  const select = $("finetune-form").querySelector(".dataset-select");
  if (select) { select.value = id; select.focus(); }
}

async function uploadDataset(event) {
  event.preventDefault();
  const file = $("dataset-file").files[0];
  const message = $("dataset-message");
  message.replaceChildren();
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const name = $("dataset-name").value.trim();
  if (name) form.append("name", name);
  const button = event.target.querySelector("button");
  button.disabled = true;
  button.replaceChildren(spinner(), "Uploading…");
  try {
    const created = await api("/v1/datasets", { method: "POST", form });
    event.target.reset();
    await loadDatasets(created.id);
    message.replaceChildren(el("p", { class: "ok" }, `Uploaded ${created.name}: ${created.classes.length} classes, ${created.images} images`,
      created.unreadable_count ? ` (${created.unreadable_count} images left out: unreadable or outside the CLASS/IMAGE layout; the data set's list says why for each)` : ""));
  } catch (error) {
    message.replaceChildren(problemBox(error, "The data set was not stored"));
  } finally {
    button.disabled = false;
    button.replaceChildren("Upload");
  }
}

// ------------------------------------------------------------------------------------------------ jobs
async function loadJobs() {
  let jobs;
  try {
    jobs = (await api("/v1/jobs")).data;
  } catch (error) {
    $("job-list").replaceChildren(problemBox(error, "Could not list the jobs"));
    stopAll();
    for (const card of cards.values()) { revokeUrls(card); stopSweep(card); }
    cards.clear();
    return;
  }
  jobs.sort((a, b) => b.created_at - a.created_at);
  const list = $("job-list");
  list.querySelector(".empty")?.remove();
  list.querySelector(":scope > .problem")?.remove();   // an earlier listing's error
  const listed = new Set(jobs.map((job) => job.id));
  for (const [id, card] of [...cards]) {   // not listed now (another key's, or removed): not shown
    if (listed.has(id)) continue;
    stopFollowing(id);
    revokeUrls(card);
    stopSweep(card);
    card.root.remove();
    cards.delete(id);
  }
  for (const job of jobs) {
    upsertCard(job);
    list.append(cards.get(job.id).root);   // keeps the newest first
    if (!TERMINAL.has(job.state)) follow(job);
  }
  if (!jobs.length && !cards.size) {
    list.replaceChildren(el("div", { class: "empty small" },
      el("h3", {}, "No jobs yet"),
      el("p", {}, "Upload a data set and start a fine-tune, or ask what a class looks like to the network with activation maximization.")));
  }
}

// Follow a job live: one server-sent-events stream per unfinished job (read with fetch, which can
// send the API key, unlike EventSource), closed at its `end` event, aborted when no longer needed.
function follow(job) {
  if (streams.has(job.id) || TERMINAL.has(job.state)) return;
  if (streams.size >= MAX_STREAMS) {
    poller ??= setInterval(pollUnfollowed, POLL_MS);
    return;
  }
  const controller = new AbortController();
  streams.set(job.id, controller);
  const card = cards.get(job.id);
  if (card) card.root.dataset.live = "true";
  let ended = false;
  let expired = false;
  const onEvent = (type, data) => {
    if (type === "expired") {
      expired = true;   // its time is up, or the server is stopping: the poller follows it again
    } else if (type === "progress") {
      upsertCard(JSON.parse(data));
    } else if (type === "end") {
      ended = true;
      stopFollowing(job.id);
      const done = JSON.parse(data);
      upsertCard(done);
      toast(`${KINDS[done.type] ?? done.type} ${done.state}`, done.state === "succeeded" ? "success" : "info");
    }
  };
  eventStream(`/v1/jobs/${encodeURIComponent(job.id)}/events`, { signal: controller.signal, onEvent })
    .then(() => { if (!ended) throw new Error("the stream closed before the job ended"); })
    .catch((error) => {
      if (controller.signal.aborted || error.name === "AbortError") return;
      if (streams.get(job.id) === controller) streams.delete(job.id);
      if (expired) {
        poller ??= setInterval(pollUnfollowed, POLL_MS);
        return;
      }
      const current = cards.get(job.id);
      if (current) {
        delete current.root.dataset.live;
        current.live.replaceChildren(el("span", { class: "warn" }, "Live updates stopped; press Refresh."));
      }
    });
}

function stopFollowing(id) {
  streams.get(id)?.abort();
  streams.delete(id);
  const card = cards.get(id);
  if (card) delete card.root.dataset.live;
}

function stopAll() {
  for (const id of [...streams.keys()]) stopFollowing(id);
  for (const card of cards.values()) stopSweep(card);
  clearInterval(poller);
  poller = null;
}

// The unfinished jobs without a stream, from one listing every POLL_MS; each takes a stream
// when one is free.
async function pollUnfollowed() {
  if (![...cards.entries()].some(([id, card]) => !streams.has(id) && !TERMINAL.has(card.root.dataset.state))) {
    clearInterval(poller);
    poller = null;
    return;
  }
  let jobs;
  try {
    jobs = (await api("/v1/jobs")).data;
  } catch {
    return;   // tried again at the next tick
  }
  for (const job of jobs) {
    const card = cards.get(job.id);
    if (!card || streams.has(job.id)) continue;
    const before = card.root.dataset.state;
    upsertCard(job);
    if (!TERMINAL.has(before) && TERMINAL.has(job.state)) {
      toast(`${KINDS[job.type] ?? job.type} ${job.state}`, job.state === "succeeded" ? "success" : "info");
    }
    follow(job);
  }
}

function title(job) {
  const params = job.params || {};
  if (job.type === "fine-tune") {
    return [el("span", { class: "job-kind" }, KINDS["fine-tune"]), el("span", {}, `${params.base_model} → `, el("b", {}, params.output_model),
      params.trial ? ` · trial ${params.trial.number} of a sweep` : "")];
  }
  if (job.type === "sweep") {
    const base = params.base || {};
    return [el("span", { class: "job-kind" }, KINDS["sweep"]), el("span", {}, `${base.base_model} → `, el("b", {}, base.output_model),
      ` · ${params.trials} trials`)];
  }
  if (job.type === "explain-dataset") {
    return [el("span", { class: "job-kind" }, KINDS["explain-dataset"]), el("span", {}, `${params.model} · `, el("b", {}, params.method),
      ` on ${params.dataset_id}`)];
  }
  const target = params.target || {};
  const what = target.classes?.length ? `class ${target.classes.join(", ")}` : target.layer ? `${target.layer} [${(target.channels || []).join(", ")}]` : "";
  return [el("span", { class: "job-kind" }, KINDS["activation-maximization"]), el("span", {}, `${params.model} · `, el("b", {}, what))];
}

function upsertCard(job, { prepend = false } = {}) {
  let card = cards.get(job.id);
  if (!card) {
    const cancel = el("button", { class: "btn ghost small danger", type: "button", onclick: () => cancelJob(job.id, cancel) }, "Cancel");
    card = {
      root: el("article", { class: "job-card", dataset: { jobId: job.id } }),
      head: el("header", { class: "job-head" }),
      progress: el("div", { class: "job-progress" }),
      live: el("div", { class: "job-live" }),
      body: el("div", { class: "job-body" }),
      cancel,
      renderedState: null,
      urls: [],      // blob: URLs of the artifacts shown, revoked when the body is replaced
    };
    card.root.append(card.head, card.progress, card.live, card.body);
    cards.set(job.id, card);
    const list = $("job-list");
    list.querySelector(".empty")?.remove();
    if (prepend) list.prepend(card.root); else list.append(card.root);
  }
  card.root.dataset.state = job.state;
  fill(card.head,
    el("div", { class: "job-title" }, title(job)),
    el("div", { class: "job-right" },
      el("span", { class: `badge ${job.state}` }, job.cancel_requested && job.state === "running" ? "cancelling" : job.state),
      TERMINAL.has(job.state) ? null : card.cancel),
    el("div", { class: "job-sub muted" }, `${job.id.slice(0, 8)} · created ${fmtTime(job.created_at)}`,
      job.finished_at && job.started_at ? ` · ran ${fmtMs((job.finished_at - job.started_at) * 1000)}` : ""));
  renderProgress(card, job);
  if (TERMINAL.has(job.state) && card.renderedState !== job.state) {
    card.renderedState = job.state;
    card.progress.replaceChildren();
    card.live.replaceChildren();
    revokeUrls(card);
    try {
      card.body.replaceChildren(...renderResult(job, card));
    } catch (error) {   // one job's result this page cannot draw must not stop the rest of the list
      console.error(error);
      card.body.replaceChildren(el("pre", {}, JSON.stringify(job.result, null, 2)));
    }
  }
  if (job.type === "sweep") showSweep(card, job);   // its trials, live while it runs
}

function renderProgress(card, job) {
  if (TERMINAL.has(job.state)) return;
  const progress = job.progress || {};
  const fraction = progress.fraction ?? 0;
  const parts = [];
  if (job.state === "queued") parts.push("Waiting for a worker");
  if (progress.phase) parts.push(progress.phase);
  if (progress.epoch) parts.push(`epoch ${progress.epoch}/${job.params.epochs ?? "?"}`);
  if (progress.step && progress.steps) parts.push(`step ${progress.step}/${progress.steps}`);
  if (progress.images != null && progress.total) parts.push(`${progress.images}/${progress.total} images`);
  const metrics = progress.metrics || {};
  const shown = Object.entries(metrics).filter(([k, v]) => k !== "epoch" && (typeof v === "number" || Array.isArray(v))).slice(0, 4)
    .map(([k, v]) => `${k.replace(/_/g, " ")} ${Array.isArray(v) ? v.map((x) => fmtNumber(x, 3)).join(", ") : k.includes("accuracy") ? pct(v) : fmtNumber(v, 3)}`);
  fill(card.progress,
    el("div", { class: "progress-track", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(fraction * 100) },
      el("span", { class: `progress-fill${job.state === "queued" ? " idle" : ""}`, style: `width:${Math.max(2, fraction * 100)}%` })),
    el("div", { class: "progress-text" }, el("span", {}, parts.join(" · ") || "Starting"), el("b", {}, pct(fraction, 0))),
    shown.length ? el("div", { class: "progress-metrics muted" }, shown.join(" · ")) : null);
}

async function cancelJob(id, button) {
  button.disabled = true;
  try {
    upsertCard(await api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }));
  } catch (error) {
    if (error?.problem?.status === 409) {   // it ended meanwhile: shown as it ended
      try {
        upsertCard(await api(`/v1/jobs/${encodeURIComponent(id)}`));
        return;
      } catch { /* the refusal is shown instead */ }
    }
    cards.get(id)?.live.replaceChildren(problemBox(error, "Cancel failed"));
  } finally {
    button.disabled = false;
  }
}

function revokeUrls(card) {
  for (const url of card.urls) URL.revokeObjectURL(url);
  card.urls = [];
}

function renderResult(job, card) {
  if (job.state === "failed") return [problemBox(new ApiError(job.error || { title: "Failed", detail: "the job failed" }), "The job failed")];
  if (job.state === "cancelled") return [el("p", { class: "muted" }, "Cancelled.")];
  if (job.state === "pruned") return [el("p", { class: "muted" }, "Pruned by its sweep.")];
  if (!job.result) return [];
  if (job.type === "fine-tune") return job.params?.trial ? trialResult(job.result) : fineTuneResult(job.result, card);
  if (job.type === "activation-maximization") return maximizationResult(job, card);
  if (job.type === "explain-dataset") return explainDatasetResult(job.result, card);
  if (job.type === "sweep") return [];   // its trials: showSweep
  return [el("pre", {}, JSON.stringify(job.result, null, 2))];
}

function fineTuneResult(result, card) {
  const metrics = result.metrics;
  const ref = `${result.model.id}@${result.model.version}`;
  const history = metrics.history || [];
  const series = (key) => history.map((h) => [h.epoch, h[key]]);
  return [
    el("div", { class: "result-summary" },
      stat("Model", ref), stat("Validation accuracy", pct(metrics.val_accuracy)), stat("Validation loss", fmtNumber(metrics.val_loss, 3)),
      bestEpoch(metrics),
      metrics.train_images_per_second ? stat("Training speed", `${fmtNumber(metrics.train_images_per_second, 1)} img/s`) : null),
    el("div", { class: "result-links" },
      el("a", { class: "btn primary small", href: `#explain?model=${encodeURIComponent(ref)}` }, `Explain with ${ref}`),
      el("a", { class: "btn ghost small", href: `#models?model=${encodeURIComponent(result.model.id)}` }, "Model details")),
    el("div", { class: "charts" },
      lossChart(history),
      lineChart([{ name: "train accuracy", points: series("train_accuracy") }, { name: "validation accuracy", points: series("val_accuracy"), dashed: true }],
        { title: "Accuracy per epoch", percent: true, yMin: 0, yMax: 1 }),
      metrics.confusion_matrix ? confusionMatrix(metrics.confusion_matrix, metrics.classes) : confusionFile(metrics),
      accuracyBars(metrics.per_class_accuracy)),
    result.report ? fineTuneReport(result.report, card) : null,
  ];
}

// Too many classes to draw (the result leaves the matrix out): the whole matrix as a file.
function confusionFile(metrics) {
  return el("figure", { class: "chart-figure" }, el("figcaption", {}, "Confusion matrix (validation, best epoch)"),
    el("p", { class: "muted" }, `${(metrics.classes || []).length} classes: too many to draw here.`),
    metrics.confusion_matrix_url ? downloadButton(metrics.confusion_matrix_url, "confusion-matrix.json", "Download confusion-matrix.json") : null);
}

// A sweep's trial keeps its metrics, and its weights only until the sweep publishes the best trial.
function trialResult(result) {
  const metrics = result.metrics || {};
  return [
    el("div", { class: "result-summary" },
      stat("Trial", `${result.trial}`), stat("Validation accuracy", pct(metrics.val_accuracy)),
      stat("Validation loss", fmtNumber(metrics.val_loss, 3)), bestEpoch(metrics)),
    metrics.history?.length ? el("div", { class: "charts" }, lossChart(metrics.history)) : null,
  ];
}

function bestEpoch(metrics) {
  return stat("Best epoch", `${metrics.best_epoch} of ${(metrics.history || []).length}${metrics.stopped_early ? " (stopped early)" : ""}`);
}

function lossChart(history) {
  const series = (key) => history.map((h) => [h.epoch, h[key]]);
  return lineChart([{ name: "train loss", points: series("train_loss") }, { name: "validation loss", points: series("val_loss"), dashed: true }],
    { title: "Loss per epoch" });
}

// The validation report: where each class's evidence lies (per class the mean Grad-CAM of the images
// it got right), and the mistakes with their Grad-CAM maps for the predicted and the true class (from
// report.json, fetched with the key).
function fineTuneReport(report, card) {
  const flagged = report.background_reliance_flagged || [];
  const means = el("div", { class: "gallery report-means" });
  const mistakes = el("div", { class: "gallery report-mistakes" });
  const section = el("section", { class: "report" },
    el("h3", {}, "Validation report"),
    el("div", { class: "result-summary" },
      stat("Mistakes", fmtNumber(report.mistakes)),
      stat("Background reliance flagged", flagged.length ? flagged.join(", ") : "none")),
    el("div", { class: "charts" }, bars(
      `Background reliance (${report.score_method} at ${report.score_layer}); flagged: more evidence near the border than inside`,
      report.background_reliance, (value) => fmtNumber(value, 2), flagged)),
    means,
    mistakes,
    el("div", { class: "result-links" }, downloadButton(report.url, "report.json", "Download report.json")));
  means.append(el("p", { class: "muted" }, spinner(), " Loading the report"));
  const loading = api(report.url);
  loading.then((document_) => {
    const shown = document_.classes.slice(0, MEANS_SHOWN);
    fill(means, shown.map((entry) => el("figure", { class: "gallery-item class-mean" },
      entry.mean_gradcam ? artifactImage(entry.mean_gradcam.picture, `mean Grad-CAM of ${entry.label}`, card)
        : el("div", { class: "gallery-frame muted" }, "none right"),
      el("figcaption", {}, el("b", {}, entry.label),
        el("span", { class: "muted block" }, `mean Grad-CAM of the ${entry.correct} of ${entry.images} validation `
          + `image${entry.images === 1 ? "" : "s"} it got right`)))),
      document_.classes.length > shown.length
        ? el("p", { class: "muted" }, `${shown.length} of ${document_.classes.length} classes shown; all are in report.json`) : null);
  }).catch((error) => means.replaceChildren(problemBox(error, "Could not load the report")));
  if (report.mistakes) {
    mistakes.append(el("p", { class: "muted" }, spinner(), " Loading the mistakes"));
    loading.then((document_) => {
      const shown = document_.mistakes.filter((mistake) => mistake.pictures).slice(0, MISTAKES_SHOWN);
      fill(mistakes, shown.map((mistake) => el("figure", { class: "gallery-item mistake" },
        el("div", { class: "mistake-pictures" },
          artifactImage(mistake.pictures.image, mistake.file, card),
          artifactImage(mistake.pictures.gradcam_predicted, `Grad-CAM for ${mistake.predicted.label}`, card),
          artifactImage(mistake.pictures.gradcam_true, `Grad-CAM for ${mistake.true.label}`, card)),
        el("figcaption", {}, el("b", {}, mistake.file),
          el("span", { class: "muted block" }, `${mistake.true.label} (p ${pct(mistake.true.probability)}) taken for `,
            `${mistake.predicted.label} (p ${pct(mistake.predicted.probability)})`),
          el("span", { class: "muted block" }, `the crop, then Grad-CAM for ${mistake.predicted.label} and for ${mistake.true.label}`)))),
      document_.mistakes.length > shown.length
        ? el("p", { class: "muted" }, `${shown.length} of ${document_.mistakes.length} mistakes shown; all are in report.json`) : null);
    }).catch((error) => mistakes.replaceChildren(problemBox(error, "Could not load the report")));
  }
  return section;
}

// An explain-dataset job: per class its mean map, plus the heatmaps and the table to download.
function explainDatasetResult(result, card) {
  const classes = result.classes || [];
  const faithful = classes.some((entry) => entry.scored !== undefined || entry.deletion !== undefined);
  // flat maps rank no pixel first, so they have no deletion or insertion score (results from before
  // flat maps were left out have scores and no `scored`)
  const scores = (entry) => entry.scored === 0 ? "no faithfulness scores: every map flat"
    : `deletion ${fmtNumber(entry.deletion, 3)} · insertion ${fmtNumber(entry.insertion, 3)}`
      + (entry.scored < entry.images ? ` (${entry.scored} scored, the rest flat)` : "");
  return [
    el("div", { class: "result-summary" },
      stat("Model", `${result.model.id}@${result.model.version}`), stat("Method", `${result.method}${result.layer ? ` at ${result.layer}` : ""}`),
      stat("Explained", `${fmtNumber(result.explained)} of ${fmtNumber(result.images)}`),
      result.failed ? stat("Not explained", fmtNumber(result.failed)) : null),   // each with its error in the table
    el("div", { class: "gallery" }, classes.filter((entry) => entry.mean_map).map((entry) => el("figure", { class: "gallery-item class-mean" },
      artifactImage(entry.mean_map, `mean map of ${entry.label}`, card),
      el("figcaption", {}, el("b", {}, entry.label),
        el("span", { class: "muted block" }, `${entry.images} image${entry.images === 1 ? "" : "s"} · mean top-1 p ${pct(entry.mean_probability)}`),
        faithful ? el("span", { class: "muted block" }, scores(entry)) : null)))),
    el("div", { class: "result-links" },
      downloadButton(result.heatmaps, "heatmaps.zip", "Download heatmaps (zip)"),
      downloadButton(result.table, "explanations.csv", "Download table (CSV)")),
  ];
}

// An artifact to save (served under /v1/, so it needs the key): fetched with the key on click.
function downloadButton(url, filename, text) {
  const button = el("button", { class: "btn ghost small", type: "button", dataset: { download: filename } }, text);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      downloadBlob(await apiBlob(url), filename);
    } catch (error) {
      toast(error.problem ? `${error.problem.title}: ${error.problem.detail}` : String(error.message || error), "error");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

// An artifact (served under /v1/, so it needs the key): fetched with the key, shown through a
// blob: URL. The <img> goes in once decoded; a placeholder holds its place until then.
function artifactImage(url, alt, card) {
  const frame = el("a", { class: "gallery-frame loading", target: "_blank", rel: "noopener", "aria-label": `${alt} (full size)` });
  apiBlob(url).then(async (blob) => {
    const objectUrl = URL.createObjectURL(blob);
    card.urls.push(objectUrl);
    const image = el("img", { src: objectUrl, alt });
    await image.decode();
    frame.href = objectUrl;
    frame.classList.remove("loading");
    frame.replaceChildren(image);
  }).catch((error) => {
    frame.classList.remove("loading");
    frame.classList.add("failed");
    frame.title = error.problem ? `${error.problem.title}: ${error.problem.detail}` : String(error.message || error);
    frame.replaceChildren(el("span", {}, "Image not loaded"));
  });
  return frame;
}

function maximizationResult(job, card) {
  const result = job.result;
  const history = result.activation_per_step || [];
  const steps = result.activation_steps || history.map((row, index) => index + 1);   // older results: every step
  const count = result.images.length;
  const label = (target) => target.label !== undefined ? `${target.label}` : `${target.layer} · channel ${target.channel}`;
  const chart = history.length > 1 ? lineChart(result.images.slice(0, 4).map((image, i) => ({
    name: label(image.target), points: history.map((row, index) => [steps[index], row[i]]) })), { title: "Activation per step", xLabel: "step" }) : null;
  return [
    el("div", { class: "gallery" }, result.images.map((image) => el("figure", { class: "gallery-item" },
      artifactImage(image.url, label(image.target), card),
      el("figcaption", {},
        el("b", {}, label(image.target)),
        image.target.class !== undefined ? el("span", { class: "muted" }, ` class ${image.target.class}`) : null,
        el("span", { class: "muted block" }, `activation ${fmtNumber(image.activation, 3)}`,
          image.probability !== null && image.probability !== undefined ? ` · p ${pct(image.probability)}` : "",
          image.served_probability !== null && image.served_probability !== undefined
            ? ` · through predict ${pct(image.served_probability)}` : ""))))),
    el("p", { class: "muted" }, `${count} image${count === 1 ? "" : "s"} from ${result.model.id}@${result.model.version}`),
    chart ? el("div", { class: "charts" }, chart) : null,
  ];
}
