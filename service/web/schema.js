// Forms generated from the OpenAPI document: the explain methods' options (read from the multipart
// body's field descriptions) and JSON request bodies (FineTuneRequest, ...), nested objects included.
import { resolve } from "./api.js";
import { el, humanize } from "./ui.js";

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

// An anyOf's branches without null: one for a nullable field (its type, with `nullable`), several
// for a union of scalars (`lr`: a number or "auto"), kept as `union` beside the first branch's
// type and bounds.
function nonNull(schema) {
  if (schema?.anyOf) {
    const options = schema.anyOf.filter((s) => s.type !== "null");
    const union = options.length > 1 && options.every(isScalar) ? options : undefined;
    return { ...schema, ...options[0], nullable: schema.anyOf.length > options.length, anyOf: undefined, union };
  }
  return schema;
}

const isScalar = (schema) => ["number", "integer", "string", "boolean"].includes(schema.type);

// The fixed values a branch takes (`"auto"`), if it names them.
const wordsOf = (branch) => (branch.const !== undefined ? [branch.const] : branch.enum || []);

// What a union takes, in words: `a number or "auto"`.
function unionText(branches) {
  const parts = branches.flatMap((b) => {
    const words = wordsOf(b);
    if (words.length) return words.map((w) => JSON.stringify(w));
    return [{ number: "a number", integer: "a whole number", boolean: "true or false", string: "text" }[b.type]];
  });
  return parts.length > 1 ? `${parts.slice(0, -1).join(", ")} or ${parts[parts.length - 1]}` : parts.join("");
}

// One <datalist> per set of words, shared by the inputs that offer them.
function wordList(words) {
  const id = `words-${words.map((w) => String(w).replace(/\W/g, "_")).join("-")}`;
  if (!document.getElementById(id)) {
    document.body.append(el("datalist", { id }, words.map((w) => el("option", { value: String(w) }))));
  }
  return id;
}

// A union of scalars as one text box: its words offered in a list, a number typed as itself.
function unionInput(s, { name, value, required }) {
  const words = s.union.flatMap(wordsOf);
  return el("input", { type: "text", name, "data-type": "union", "data-union": JSON.stringify(s.union), required,
    value: value ?? "", list: words.length ? wordList(words) : null, autocomplete: "off", spellcheck: "false",
    placeholder: unionText(s.union).replace(/^a /, "") });
}

// A union's text as the branch it fits: a named value first (as the schema writes it), then a number,
// a boolean or free text, in the schema's order.
function unionValue(input, raw) {
  const branches = JSON.parse(input.dataset.union);
  for (const branch of branches) {
    const word = wordsOf(branch).find((w) => String(w).toLowerCase() === raw.toLowerCase());
    if (word !== undefined) return word;
  }
  for (const branch of branches) {
    if (wordsOf(branch).length) continue;
    const number = Number(raw);
    if (branch.type === "number" && Number.isFinite(number)) return number;
    if (branch.type === "integer" && Number.isInteger(number)) return number;
    if (branch.type === "boolean" && (raw === "true" || raw === "false")) return raw === "true";
    if (branch.type === "string") return raw;
  }
  throw new Error(`${input.name} takes ${unionText(branches)}, not ${JSON.stringify(raw)}`);
}

function parseBounds(text, into) {
  for (const part of (text || "").split(/\s+and\s+/)) {
    const match = part.trim().match(/^(>=|<=|>|<)\s*(-?[\d.e+-]+)$/);
    if (!match) continue;
    const value = Number(match[2]);
    if (match[1] === ">=") into.minimum = value;
    if (match[1] === ">") into.exclusiveMinimum = value;
    if (match[1] === "<=") into.maximum = value;
    if (match[1] === "<") into.exclusiveMaximum = value;
  }
  return into;
}

// {order: [method...], options: {method: [{name, type, enum, default, minimum, ..., doc}]}, body}
export function explainSchema(spec) {
  const operation = spec.paths["/v1/models/{model}/explain"].post;
  const body = resolve(spec, operation.requestBody.content["multipart/form-data"].schema);
  const props = body.properties;
  const listed = (props.method.description || "").replace(/^one of:\s*/i, "").split(/\.\s/)[0];
  const order = [];
  const options = {};
  for (const item of listed.split(/;\s*/)) {
    const match = item.trim().match(/^([^\s(]+)\s*(?:\(([^)]*)\))?$/);
    if (!match) continue;
    const method = match[1];
    order.push(method);
    options[method] = (match[2] ? match[2].split(/,\s*/) : []).filter((name) => props[name]).map((name) => {
      const schema = nonNull(props[name]);
      const described = new RegExp(`(?:^|; )${escapeRegExp(method)}: (.*?) \\(default ([^;)]*)(?:; ([^)]*))?\\)(?=; [\\w+]+: |$)`)
        .exec(props[name].description || "");
      const option = { name, type: schema.type, enum: schema.enum, doc: described ? described[1] : "" };
      if (described) {
        const raw = described[2].trim();
        option.default = schema.type === "integer" || schema.type === "number" ? Number(raw) : raw;
        parseBounds(described[3], option);
      }
      return option;
    });
  }
  return { order, options, props };
}

// One input for a scalar schema. Returns the input (or select).
export function inputFor(schema, { name, value, required } = {}) {
  const s = nonNull(schema);
  const current = value !== undefined ? value : s.default;
  if (s.union) return unionInput(s, { name, value: current, required });
  if (s.enum) {
    return el("select", { name, "data-type": "enum" },
      s.nullable ? el("option", { value: "" }, "default") : null,
      s.enum.map((option) => el("option", { value: option, selected: option === current }, option)));
  }
  if (s.type === "boolean") {
    return el("input", { type: "checkbox", name, "data-type": "boolean", checked: Boolean(current) });
  }
  if (s.type === "integer" || s.type === "number") {
    const min = s.minimum ?? s.exclusiveMinimum;
    const max = s.maximum ?? s.exclusiveMaximum;
    return el("input", { type: "number", name, "data-type": s.type, inputmode: s.type === "integer" ? "numeric" : "decimal",
      step: s.type === "integer" ? 1 : "any", min, max, value: current ?? "", required,
      placeholder: current === undefined || current === null ? "default" : null });
  }
  if (s.type === "object") {
    return el("input", { type: "text", name, "data-type": "json", required, autocomplete: "off", spellcheck: "false",
      placeholder: "JSON" });
  }
  if (s.type === "array") {
    return el("input", { type: "text", name, "data-type": `array:${s.items?.type || "string"}`,
      value: Array.isArray(current) ? current.join(", ") : "", placeholder: "comma-separated" });
  }
  return el("input", { type: "text", name, "data-type": "string", value: current ?? "", required,
    placeholder: s.nullable ? "default" : null, autocomplete: "off", spellcheck: "false" });
}

export function boundsText(schema) {
  const s = nonNull(schema);
  const parts = [];
  if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
  if (s.exclusiveMinimum !== undefined) parts.push(`> ${s.exclusiveMinimum}`);
  if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
  if (s.exclusiveMaximum !== undefined) parts.push(`< ${s.exclusiveMaximum}`);
  if (s.maxItems !== undefined) parts.push(`at most ${s.maxItems} items`);
  return parts.join(", ");
}

// A description as the page shows it: the API document's `code` marks (Markdown, for /docs) dropped
export const plainText = (text) => (text || "").replace(/`([^`]*)`/g, "$1");

export function readInput(input) {
  const type = input.dataset.type;
  if (type === "boolean") return input.checked;
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (type === "union") return unionValue(input, raw);
  if (type === "integer" || type === "number") return numberIn(input, raw, type);
  if (type === "json") {
    try {
      return JSON.parse(raw);
    } catch (error) {
      throw new Error(`${input.name} is not JSON: ${error.message}`);
    }
  }
  if (type?.startsWith("array:")) {
    const itemType = type.slice(6);
    const items = raw.split(/[\s,]+/).filter(Boolean);
    return itemType === "integer" || itemType === "number" ? items.map((item) => numberIn(input, item, itemType)) : items;
  }
  return raw;
}

// A number as typed, or an error naming the field: parseInt and Number made "flamingo" NaN (sent as null)
// and "12abc" 12, and the answer named a field the user never saw that way
function numberIn(input, text, type) {
  const whole = /^[+-]?\d+$/.test(text);
  const value = Number(text);
  if (text === "" || !Number.isFinite(value) || (type === "integer" && !whole)) {
    const label = input.closest(".field")?.querySelector("label")?.textContent?.replace(/\s*\*$/, "").trim() || input.name;
    throw new Error(`${label}: "${text}" is not ${type === "integer" ? "a whole number" : "a number"}`);
  }
  return value;
}

function fieldRow(spec, name, schema, path, required, custom) {
  const id = `f-${path.replace(/\W/g, "-")}-${Math.random().toString(36).slice(2, 7)}`;
  const made = custom?.(path, schema);
  const input = made || inputFor(schema, { name: path, required });
  input.id = id;
  const s = nonNull(schema);
  const bounds = boundsText(s);
  const defaultText = s.default !== undefined && s.type !== "boolean" && !(Array.isArray(s.default) && !s.default.length)
    ? `default ${Array.isArray(s.default) ? s.default.join(", ") : s.default}` : (s.nullable && !required ? "optional" : "");
  const kinds = s.union ? unionText(s.union) : "";
  const hint = [plainText(s.description), [defaultText, kinds, bounds].filter(Boolean).join("; ")].filter(Boolean).join(" · ");
  if (input.dataset.type === "boolean") {
    return el("div", { class: "field check-field" },
      el("label", { class: "check", for: id }, input, humanize(name)),
      hint ? el("p", { class: "hint" }, hint) : null);
  }
  return el("div", { class: "field" },
    el("label", { for: id }, humanize(name), required ? el("span", { class: "req", title: "required" }, " *") : null),
    input,
    hint ? el("p", { class: "hint" }, hint) : null);
}

// Render every property of an object schema (nested objects as fieldsets) into `container`.
// With `split`, the optional fields and nested objects go into a <details> (open on wide screens).
export function renderObject(spec, schema, container, { prefix = "", custom, split = false } = {}) {
  const object = resolve(spec, schema);
  const required = new Set(object.required || []);
  const entries = Object.entries(object.properties || {});
  const nested = [];
  const grid = el("div", { class: "option-grid" });
  const optionalGrid = split ? el("div", { class: "option-grid" }) : grid;
  const ordered = [...entries.filter(([n]) => required.has(n)), ...entries.filter(([n]) => !required.has(n))];
  for (const [name, raw] of ordered) {
    const property = resolve(spec, raw);
    const path = prefix ? `${prefix}.${name}` : name;
    if (property.properties) {   // a free-form object (a method's options, a sweep's space) is one JSON field
      nested.push([name, property, path, raw.description || property.description, required.has(name)]);
      continue;
    }
    (required.has(name) ? grid : optionalGrid).append(fieldRow(spec, name, property, path, required.has(name), custom));
  }
  container.append(grid);
  const optional = split ? el("details", { class: "more options", open: window.matchMedia("(min-width: 700px)").matches },
    el("summary", {}, "Options", el("span", { class: "muted" }, " · every field with its default")), optionalGrid) : null;
  // a field the browser refuses inside closed Options: opened, so that its message shows (else the
  // form did not submit, and said nothing)
  optional?.addEventListener("invalid", () => { optional.open = true; }, true);
  for (const [name, property, path, description, isRequired] of nested) {
    const fieldset = el("fieldset", { class: "nested", "data-object": path },
      el("legend", {}, humanize(name)), description ? el("p", { class: "hint" }, description) : null);
    renderObject(spec, property, fieldset, { prefix: path, custom });
    (split && !isRequired ? optional : container).append(fieldset);
  }
  if (optional) container.append(optional);
}

// The JSON body from a generated form: empty optional inputs are left out (the API's default applies).
export function collectObject(form) {
  const body = {};
  for (const input of form.querySelectorAll("[name][data-type]")) {
    const value = readInput(input);
    if (value === undefined || (Array.isArray(value) && !value.length)) continue;
    const path = input.name.split(".");
    let node = body;
    for (const key of path.slice(0, -1)) node = node[key] ??= {};
    node[path[path.length - 1]] = value;
  }
  return body;
}
