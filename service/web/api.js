// Talking to the Gazer API: JSON in and out, problem+json errors turned into ApiError. Every call
// carries the API key kept in localStorage (`Authorization: Bearer`); a 401 asks for a key
// (see keys.js) and retries the call with it.
import { askForKey, currentKey, keyAccepted } from "./keys.js";

export class ApiError extends Error {
  constructor(problem) {
    super(`${problem.title}: ${problem.detail}`);
    this.problem = problem;
  }
}

const unreachable = (error) => new ApiError({ title: "Service unreachable",
  detail: `The request did not reach the service (${error.message}).`, status: 0 });

async function problemOf(response) {
  const text = await response.text().catch(() => "");
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  return body && typeof body === "object" && body.title ? body
    : { title: `HTTP ${response.status}`, detail: (text || response.statusText).slice(0, 400), status: response.status };
}

// fetch() with the key; on 401 ask for a key (one dialog for every call waiting) and try again.
// Without a key from the person, the 401 response is returned as it is.
export async function authFetch(path, init = {}) {
  for (;;) {
    const sent = currentKey();
    const headers = new Headers(init.headers || {});
    if (sent) headers.set("Authorization", `Bearer ${sent}`);
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401) {
      // only /v1 routes check keys: an open one (the API description, say) answering says nothing
      if (sent && path.startsWith("/v1/")) keyAccepted(sent);
      return response;
    }
    if (currentKey() && currentKey() !== sent) continue;   // a newer key was saved meanwhile
    const problem = await problemOf(response.clone());
    const key = await askForKey({ problem, rejected: Boolean(sent) });
    if (!key || init.signal?.aborted) return response;
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
    response = await authFetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable(error);
  }
  if (!response.ok) throw new ApiError(await problemOf(response));
  const text = await response.text();
  try { return text ? JSON.parse(text) : null; } catch { return null; }
}

// A file from the API (an artifact image, a download) as a Blob, fetched with the key.
export async function apiBlob(path, { signal } = {}) {
  let response;
  try {
    response = await authFetch(path, { signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable(error);
  }
  if (!response.ok) throw new ApiError(await problemOf(response));
  return response.blob();
}

// Server-sent events read with fetch() (EventSource cannot send the key): `onEvent(type, data)`
// for each `event:`/`data:` block. Resolves when the server closes the stream; rejects with
// AbortError when `signal` aborts, or with ApiError when the stream cannot be opened.
export async function eventStream(path, { signal, onEvent }) {
  let response;
  try {
    response = await authFetch(path, { headers: { Accept: "text/event-stream" }, signal, cache: "no-store" });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable(error);
  }
  if (!response.ok || !response.body) throw new ApiError(await problemOf(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const dispatch = (block) => {
    let type = "message";
    const data = [];
    for (const line of block.split(/\r\n|\r|\n/)) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value || "message";
      else if (field === "data") data.push(value);
    }
    if (data.length) onEvent(type, data.join("\n"));
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let match;
      while ((match = /\r\n\r\n|\n\n|\r\r/.exec(buffer))) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        dispatch(block);
        if (signal?.aborted) throw new DOMException("The stream was aborted", "AbortError");
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
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
