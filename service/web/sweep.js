// A sweep's card: its trials as a table (each trial's job, the values it tried, its state and
// validation accuracy), the best one marked, the model it published and the parameters'
// importances. The trials are read from GET /v1/jobs?parent=ID, again while the sweep runs, and
// from the sweep's result once it ends (which keeps them after their job records are gone).
import { api } from "./api.js";
import { bars } from "./plot.js";
import { el, fill, fmtNumber, pct, problemBox, stat } from "./ui.js";

const REFRESH_MS = 3000;   // trials change state between the sweep's own progress events
const UNFINISHED = new Set(["queued", "running"]);

// Called with each new record of the sweep: draws what is known, and reads its trials again
// when they may have changed (the sweep's counts or state moved), every REFRESH_MS while it runs.
export function showSweep(card, job) {
  const sweep = card.sweep ??= { root: el("section", { class: "sweep" }), trials: [], error: null,
    loading: false, again: false, timer: null, seen: null };
  sweep.job = job;
  if (sweep.root.parentNode !== card.body) card.body.append(sweep.root);   // after a failed sweep's problem, say
  const running = UNFINISHED.has(job.state);
  if (running && !sweep.timer) sweep.timer = setInterval(() => loadTrials(card), REFRESH_MS);
  if (!running) stopSweep(card);
  const seen = JSON.stringify([job.state, job.progress?.trials, job.progress?.best?.job_id]);
  render(card);
  if (seen !== sweep.seen) {
    sweep.seen = seen;
    loadTrials(card);
  }
}

// The card is gone or the sweep has ended: no more reading.
export function stopSweep(card) {
  if (!card.sweep) return;
  clearInterval(card.sweep.timer);
  card.sweep.timer = null;
}

// One listing at a time; a call while one is out asks for another once it is back.
async function loadTrials(card) {
  const sweep = card.sweep;
  if (sweep.loading) { sweep.again = true; return; }
  sweep.loading = true;
  try {
    sweep.trials = (await api(`/v1/jobs?parent=${encodeURIComponent(sweep.job.id)}`)).data;
    sweep.error = null;
  } catch (error) {
    sweep.error = error;
  } finally {
    sweep.loading = false;
  }
  render(card);
  if (sweep.again) {
    sweep.again = false;
    loadTrials(card);
  }
}

// A value at a dotted path ("head.dropout") of a fine-tune's params.
const at = (params, path) => path.split(".").reduce((node, key) => node?.[key], params);

// One row per trial, from its job record (current) and the sweep's record of it (kept).
function trialRows(job, listed) {
  const result = job.result || {};
  const space = Object.keys(job.params?.space || {});
  const metric = result.metric || job.params?.metric || "val_accuracy";
  const kept = new Map((result.trials || []).map((record) => [record.job_id, record]));
  const records = new Map(listed.map((trial) => [trial.id, trial]));
  return [...new Set([...kept.keys(), ...records.keys()])].map((id) => {
    const record = kept.get(id);
    const trial = records.get(id);
    const metrics = trial?.result?.metrics || trial?.progress?.metrics || {};
    const value = (name) => metrics[name] ?? (metric === name ? record?.value : undefined);
    return {
      id,
      number: record?.number ?? trial?.params?.trial?.number,
      params: record?.params ?? Object.fromEntries(space.map((name) => [name, at(trial?.params, name)])),
      state: trial?.state ?? record?.state,
      epoch: trial?.state === "running" ? trial.progress?.epoch : undefined,
      epochs: trial?.params?.epochs,
      valAccuracy: value("val_accuracy"),
      valLoss: value("val_loss"),
      refused: record?.refused,
    };
  }).sort((a, b) => (a.number ?? Infinity) - (b.number ?? Infinity));
}

function paramText(value) {
  if (value === null || value === undefined) return "default";
  if (typeof value !== "number" || Number.isInteger(value)) return String(value);
  return Math.abs(value) < 1e-3 ? value.toExponential(2) : String(Number(value.toPrecision(3)));
}

const accuracyText = (value) => (value === null || value === undefined ? "–" : pct(value));

function render(card) {
  const { job, trials, error } = card.sweep;
  const result = job.result || {};
  const space = Object.keys(job.params?.space || {});
  const metric = result.metric || job.params?.metric || "val_accuracy";
  const best = (result.best || job.progress?.best)?.job_id;
  const rows = trialRows(job, trials);
  const running = UNFINISHED.has(job.state);
  const importances = result.importances && Object.keys(result.importances).length ? result.importances : null;
  fill(card.sweep.root,
    summary(job, rows, rows.find((row) => row.id === best), metric),
    error ? problemBox(error, "Could not list the trials") : null,
    rows.length ? trialsTable(rows, space, metric, best)
      : el("p", { class: "muted" }, running ? "No trials started yet." : "No trials."),
    importances ? el("div", { class: "charts" }, bars("Parameter importance (fANOVA)", importances, (value) => pct(value, 0))) : null);
}

// Trials ended, the best one (so far) and the model published, with links to use it.
function summary(job, rows, bestRow, metric) {
  const published = job.result?.output_model;
  const ref = published ? `${published.id}@${published.version}` : null;
  const ended = rows.filter((row) => row.state && !UNFINISHED.has(row.state)).length;
  const score = (row) => (metric === "val_loss" ? `val loss ${fmtNumber(row.valLoss, 3)}` : accuracyText(row.valAccuracy));
  return [
    el("div", { class: "result-summary" },
      stat("Trials", `${ended} of ${job.params?.trials ?? rows.length} ended`),
      bestRow ? stat(UNFINISHED.has(job.state) ? "Best so far" : "Best trial", `#${bestRow.number} · ${score(bestRow)}`) : null,
      ref ? stat("Published", ref) : null),
    ref ? el("div", { class: "result-links" },
      el("a", { class: "btn primary small", href: `#explain?model=${encodeURIComponent(ref)}` }, `Explain with ${ref}`),
      el("a", { class: "btn ghost small", href: `#models?model=${encodeURIComponent(published.id)}` }, "Model details")) : null,
  ];
}

function trialsTable(rows, space, metric, best) {
  const byLoss = metric === "val_loss";
  return el("div", { class: "trials" }, el("table", { class: "trials-table" },
    el("thead", {}, el("tr", {},
      el("th", {}, "Trial"), el("th", {}, "Job"), space.map((name) => el("th", {}, el("code", {}, name))),
      el("th", {}, "State"), el("th", { class: "num" }, "Val accuracy"), byLoss ? el("th", { class: "num" }, "Val loss") : null)),
    el("tbody", {}, rows.map((row) => trialRow(row, space, byLoss, row.id === best)))));
}

function trialRow(row, space, byLoss, isBest) {
  const unfinished = UNFINISHED.has(row.state);
  return el("tr", { class: isBest ? "best" : null, dataset: { jobId: row.id, state: row.state } },
    el("td", {}, `#${row.number ?? "?"}`, isBest ? el("span", { class: "tag", title: "the best trial" }, "best") : null),
    el("td", {}, el("code", { title: row.id }, row.id.slice(0, 8))),
    space.map((name) => el("td", { class: "mono" }, paramText(row.params?.[name]))),
    el("td", {}, el("span", { class: `badge ${row.state}` }, row.state ?? "unknown"),
      row.epoch ? el("span", { class: "muted" }, ` epoch ${row.epoch}/${row.epochs ?? "?"}`) : null,
      row.refused ? el("span", { class: "warn", title: row.refused }, " not published") : null),
    el("td", { class: `num${unfinished ? " muted" : ""}`, title: unfinished ? "so far" : null }, accuracyText(row.valAccuracy)),
    byLoss ? el("td", { class: `num${unfinished ? " muted" : ""}` }, fmtNumber(row.valLoss, 3)) : null);
}
