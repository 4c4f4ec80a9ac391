// Gazer's web page: three views (Explain, Jobs, Models) switched by the URL hash.
import { api } from "./api.js";
import { initExplain, showExplain } from "./explain.js";
import { initJobs, showJobs } from "./jobs.js";
import { initKeyControl } from "./keys.js";
import { initModels, showModels } from "./models.js";

const VIEWS = {
  explain: { init: initExplain, show: showExplain },
  jobs: { init: initJobs, show: showJobs },
  models: { init: initModels, show: showModels },
};
const started = new Map();

function parseHash() {
  const [name, query] = location.hash.replace(/^#/, "").split("?");
  return { name: VIEWS[name] ? name : "explain", params: new URLSearchParams(query || "") };
}

async function route() {
  const { name, params } = parseHash();
  for (const view of Object.keys(VIEWS)) {
    document.getElementById(`view-${view}`).hidden = view !== name;
    const tab = document.querySelector(`[data-view="${view}"]`);
    tab.classList.toggle("active", view === name);
    if (view === name) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  const view = VIEWS[name];
  if (!started.has(name)) started.set(name, view.init ? view.init() : Promise.resolve());
  await started.get(name);
  await view.show?.(params);
  document.body.dataset.ready = name;
}

// Asked at load, then every READINESS_SECONDS while the page is shown: it said "ready" of a
// service long gone.
const READINESS_SECONDS = 15;

async function readiness() {
  const badge = document.getElementById("service-state");
  try {
    await api("/readyz");
    badge.textContent = "ready";
    badge.className = "service-state ok";
    badge.title = "";
  } catch (error) {
    badge.textContent = "not ready";
    badge.className = "service-state bad";
    badge.title = error.problem ? `${error.problem.title}: ${error.problem.detail}` : String(error);
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("gazer:key-changed", () => route());   // a key set from the top bar: load the view again
initKeyControl();
route();
readiness();
setInterval(() => { if (document.visibilityState === "visible") readiness(); }, READINESS_SECONDS * 1000);
