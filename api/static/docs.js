// A small, dependency-free renderer for this API's OpenAPI 3.1 document (served offline: no CDN).
"use strict";

const METHODS = ["get", "post", "put", "patch", "delete"];
let DOC = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function resolve(schema) {
  let seen = 0;
  while (schema && schema.$ref && seen++ < 20) {
    schema = DOC.components.schemas[schema.$ref.split("/").pop()];
  }
  return schema || {};
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function typeLabel(schema) {
  const named = refName(schema);
  const s = resolve(schema);
  if (s.anyOf || s.oneOf) return (s.anyOf || s.oneOf).map(typeLabel).join(" | ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.type === "array") {
    if (s.prefixItems) return "[" + s.prefixItems.map(typeLabel).join(", ") + "]";
    return typeLabel(s.items || {}) + "[]";
  }
  if (named) return named;
  if (s.format === "binary") return "file";
  if (s.type === "object" && s.additionalProperties && !s.properties) return "object";
  return s.type || (Object.keys(s).length ? "object" : "any");
}

function constraints(schema) {
  const s = resolve(schema);
  const parts = [];
  const names = { minimum: "≥", maximum: "≤", exclusiveMinimum: ">", exclusiveMaximum: "<",
                  minLength: "min length", maxLength: "max length", minItems: "min items", maxItems: "max items" };
  for (const [key, label] of Object.entries(names)) if (s[key] !== undefined) parts.push(`${label} ${s[key]}`);
  if (s.default !== undefined) parts.push(`default ${JSON.stringify(s.default)}`);
  return parts.length ? el("span", { class: "constraint" }, " — " + parts.join(", ")) : null;
}

function objectVariants(schema) {
  const s = resolve(schema);
  const variants = s.anyOf || s.oneOf;
  if (variants) return variants.flatMap(objectVariants);
  if (s.type === "array") return objectVariants(s.items || {});
  return s.properties ? [schema] : [];
}

function fields(schema, depth) {
  const s = resolve(schema);
  if (!s.properties || depth > 6) return null;
  const required = new Set(s.required || []);
  return el("ul", { class: "fields" }, Object.entries(s.properties).map(([name, prop]) => {
    const nested = objectVariants(prop);
    return el("li", {},
      el("code", {}, name), " ", el("span", { class: "type" }, typeLabel(prop)),
      required.has(name) ? el("span", { class: "req" }, " required") : null,
      constraints(prop),
      resolve(prop).description ? el("div", { class: "constraint" }, resolve(prop).description) : null,
      nested.map((variant) => fields(variant, depth + 1)));
  }));
}

function schemaBlock(schema) {
  const variants = objectVariants(schema);
  return el("div", {}, el("span", { class: "type" }, typeLabel(schema)),
    variants.map((variant) => fields(variant, 0)));
}

function parameters(op) {
  if (!op.parameters || !op.parameters.length) return null;
  return el("div", {}, el("h4", {}, "Parameters"), el("table", {},
    el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "type"), el("th", {}, "")),
    op.parameters.map((p) => el("tr", {},
      el("td", {}, el("code", {}, p.name), p.required ? el("span", { class: "req" }, " required") : null),
      el("td", {}, p.in), el("td", { class: "type" }, typeLabel(p.schema || {})),
      el("td", {}, p.description || "", constraints(p.schema || {}))))));
}

function requestBody(op) {
  if (!op.requestBody) return null;
  return el("div", {}, el("h4", {}, "Request body"), Object.entries(op.requestBody.content).map(
    ([type, media]) => el("div", {}, el("code", {}, type), schemaBlock(media.schema || {}))));
}

function responses(op) {
  return el("div", {}, el("h4", {}, "Responses"), el("table", {},
    Object.entries(op.responses).map(([status, response]) => el("tr", {},
      el("td", { class: "status" }, status),
      el("td", {}, response.description,
        Object.entries(response.content || {}).map(([type, media]) => el("div", {},
          el("code", {}, type), " ", media.schema && Object.keys(media.schema).length
            ? schemaBlock(media.schema) : null)))))));
}

function curl(method, path, op) {
  const lines = [`curl -X ${method.toUpperCase()} "$SHIFTSCORE_URL${path}"`];
  if (op.security && op.security.length) lines.push(`  -H "Authorization: Bearer $SHIFTSCORE_TOKEN"`);
  const content = op.requestBody ? op.requestBody.content : {};
  if (content["application/json"]) lines.push(`  -H "Content-Type: application/json" -d @request.json`);
  if (content["multipart/form-data"]) {
    const schema = resolve(content["multipart/form-data"].schema);
    for (const name of schema.required || []) {
      const binary = resolve(schema.properties[name]).format === "binary";
      lines.push(`  -F "${name}=${binary ? "@FILE" : "…"}"`);
    }
  }
  return el("pre", {}, lines.join(" \\\n"));
}

function operationNode(method, path, op) {
  const id = op.operationId || `${method}-${path}`;
  return el("details", { class: "op", id },
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", { class: "summary" }, op.summary || ""),
      op.security && op.security.length ? el("span", { class: "lock", title: "bearer token" }, "🔒") : null),
    el("div", {}, parameters(op), requestBody(op), responses(op), el("h4", {}, "Example"), curl(method, path, op)));
}

function render(doc) {
  DOC = doc;
  document.getElementById("title").textContent = doc.info.title;
  document.title = doc.info.title;
  document.getElementById("version").textContent = `OpenAPI ${doc.openapi}, API version ${doc.info.version}`;
  document.getElementById("description").textContent = doc.info.description || "";
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      if (!item[method]) continue;
      const tag = (item[method].tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([method, path, item[method]]);
    }
  }
  const main = document.getElementById("operations");
  main.replaceChildren(...[...byTag].map(([tag, ops]) => el("section", { class: "tag", id: `tag-${tag}` },
    el("h2", {}, tag), ops.map(([method, path, op]) => operationNode(method, path, op)))));
  document.getElementById("toc").replaceChildren(el("ul", {}, [...byTag].map(([tag, ops]) =>
    el("li", {}, el("a", { href: `#tag-${tag}` }, tag), ` (${ops.length})`))));
  document.body.dataset.rendered = String(main.querySelectorAll("details.op").length);
}

fetch("openapi.json")
  .then((response) => {
    if (!response.ok) throw new Error(`GET /openapi.json answered ${response.status}`);
    return response.json();
  })
  .then(render)
  .catch((error) => {
    document.getElementById("operations").replaceChildren(el("p", {}, `Could not load the API document: ${error}`));
  });
