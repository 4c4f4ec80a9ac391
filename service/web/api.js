// Talking to the Gazer API: JSON in and out, problem+json errors turned into ApiError.

export class ApiError extends Error {
  constructor(problem) {
    super(`${problem.title}: ${problem.detail}`);
    this.problem = problem;
  }
}

export async function api(path, { method = "GET", form, json, signal } = {}) {
  const init = { method, headers: { Accept: "application/json" }, signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError({ title: "Service unreachable", detail: `The request did not reach the service (${error.message}).`, status: 0 });
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const problem = body && typeof body === "object" && body.title ? body
      : { title: `HTTP ${response.status}`, detail: (text || response.statusText).slice(0, 400), status: response.status };
    throw new ApiError(problem);
  }
  return body;
}

let openapiPromise = null;
export function openapi() {
  openapiPromise ??= api("/openapi.json").catch((error) => { openapiPromise = null; throw error; });
  return openapiPromise;
}

// Resolve a `$ref` (and single-item `allOf`) against the document.
export function resolve(spec, schema) {
  let current = schema;
  for (let i = 0; i < 8 && current; i++) {
    if (current.$ref) {
      const path = current.$ref.replace(/^#\//, "").split("/");
      const target = path.reduce((node, key) => node?.[key], spec);
      current = { ...target, ...Object.fromEntries(Object.entries(current).filter(([k]) => k !== "$ref")) };
    } else if (current.allOf?.length === 1) {
      current = { ...current.allOf[0], ...Object.fromEntries(Object.entries(current).filter(([k]) => k !== "allOf")) };
    } else {
      break;
    }
  }
  return current;
}

// The model list with every version: [{id, version, versions: [{version, default, state}], summary}]
export async function modelsWithVersions() {
  const listed = await api("/v1/models");
  return Promise.all(listed.data.map(async (summary) => {
    let versions = [];
    try {
      versions = (await api(`/v1/models/${encodeURIComponent(summary.id)}/versions`)).data;
    } catch { versions = []; }
    return { ...summary, summary, versions };
  }));
}
