// ShiftScore dashboard: every number and picture comes from /v1 with the tab's bearer token.
// The token lives in sessionStorage (this tab only) and is never put in a URL or a cookie.
"use strict";

const TOKEN_KEY = "shiftscore.token";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const page = document.body.dataset.page;

class Unauthorized extends Error {}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function request(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (response.status === 401) throw new Unauthorized("the token was not accepted");
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not problem+json */ }
    throw new Error(detail);
  }
  return response;
}

async function api(path) { return (await request(path)).json(); }

// <img> cannot send a bearer token: fetch the PNG and show it from an object URL.
async function showImage(img, path) {
  const blob = await (await request(path)).blob();
  const old = img.dataset.objectUrl;
  img.src = img.dataset.objectUrl = URL.createObjectURL(blob);
  img.dataset.path = path;
  if (old) URL.revokeObjectURL(old);
  await img.decode().catch(() => {});
  img.hidden = false;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const pct = (value) => (value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const short = (id) => id.slice(0, 8);

function statusBadge(status) { return el("span", { class: `badge ${status}`, text: status }); }

function progressBar(progress, status) {
  const fraction = progress.total ? progress.done / progress.total : (status === "succeeded" ? 1 : 0);
  const bar = el("div", { class: "bar" }, el("div", { class: `bar-fill ${status}` }));
  bar.firstChild.style.width = `${(fraction * 100).toFixed(1)}%`;
  return el("div", { class: "progress" }, bar,
    el("span", { class: "muted", text: `${progress.done.toLocaleString()} / ${progress.total.toLocaleString()}` }));
}

async function lookup(path) {
  const names = new Map();
  const body = await api(path);
  // Models carry a version: "name v2" tells two uploads under one name apart.
  for (const item of body.items) names.set(item.id, item.version ? `${item.name} v${item.version}` : item.name);
  return names;
}

// ---- evaluations list ------------------------------------------------------------------------

async function evaluationsPage() {
  const tbody = document.querySelector("#evaluations tbody");
  const state = document.getElementById("refresh-state");
  let models = new Map(), datasets = new Map();
  const refresh = async () => {
    const body = await api("/v1/evaluations?limit=100");
    const missing = body.items.some((e) => !models.has(e.model_id) || !datasets.has(e.dataset_id));
    if (missing) {
      [models, datasets] = await Promise.all([lookup("/v1/models?limit=500"), lookup("/v1/datasets?limit=500")]);
    }
    tbody.replaceChildren(...body.items.map((e) => {
      const s = e.summary || {};
      return el("tr", { "data-id": e.id, "data-status": e.status },
        el("td", {}, el("a", { href: `/dashboard/evaluations/${e.id}`, class: "mono", text: short(e.id) })),
        el("td", { class: "wrap", text: models.get(e.model_id) || short(e.model_id) }),
        el("td", { class: "wrap", text: datasets.get(e.dataset_id) || short(e.dataset_id) }),
        el("td", {}, statusBadge(e.status)),
        el("td", {}, progressBar(e.progress, e.status)),
        el("td", { class: "num", text: pct(s.clean_accuracy) }),
        el("td", { class: "num", text: pct(s.mean_accuracy) }),
        el("td", { class: "num", text: pct(s.worst_case_accuracy) }),
        el("td", { class: "num", text: pct(s.consistency) }),
        el("td", { class: "muted", text: when(e.created_at) }));
    }));
    document.getElementById("evaluations-empty").hidden = body.items.length > 0;
    const active = body.items.filter((e) => !TERMINAL.has(e.status)).length;
    state.textContent = active ? `${active} running or queued · live` : `updated ${new Date().toLocaleTimeString()}`;
    return active ? 1000 : 5000;
  };
  poll(refresh);
}

// ---- one evaluation --------------------------------------------------------------------------

async function evaluationPage() {
  const id = document.body.dataset.evaluationId;
  const [models, datasets] = await Promise.all([lookup("/v1/models?limit=500"), lookup("/v1/datasets?limit=500")]);
  let shown = false;
  const refresh = async () => {
    const e = await api(`/v1/evaluations/${id}`);
    const model = models.get(e.model_id) || e.model_id, dataset = datasets.get(e.dataset_id) || e.dataset_id;
    document.getElementById("evaluation-title").textContent = `${model} on ${dataset}`;
    document.title = `${model} on ${dataset} · ShiftScore`;
    document.getElementById("evaluation-status").replaceChildren(statusBadge(e.status));
    const shifts = describeSweep(e.request);
    document.getElementById("evaluation-meta").textContent =
      `${short(e.id)} · ${shifts} · padding ${e.request.padding} · created ${when(e.created_at)}` +
      (e.finished_at ? ` · finished ${when(e.finished_at)}` : "");
    const progress = document.getElementById("evaluation-progress");
    progress.hidden = TERMINAL.has(e.status);
    if (!progress.hidden) {
      const fraction = e.progress.total ? e.progress.done / e.progress.total : 0;
      progress.querySelector(".bar-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
      progress.querySelector(".bar-text").textContent =
        `${e.progress.done.toLocaleString()} of ${e.progress.total.toLocaleString()} images (${(fraction * 100).toFixed(1)}%)`;
    }
    const error = document.getElementById("evaluation-error");
    error.hidden = !e.error;
    if (e.error) error.textContent = `${e.error.type}: ${e.error.detail}`;
    const warnings = document.getElementById("evaluation-warnings");
    warnings.hidden = !(e.warnings && e.warnings.length);
    warnings.replaceChildren(...(e.warnings || []).map((w) =>
      el("p", { "data-code": w.code }, el("strong", { text: "Warning: " }), w.detail)));
    if (e.status === "succeeded" && !shown) {
      shown = true;
      await showResults(e, models);
    }
    return TERMINAL.has(e.status) ? null : 1000;
  };
  poll(refresh);
}

// The grid a request names: its shifts, then any angle, scale and brightness axes.
function describeSweep(sweep) {
  const g = sweep.shifts;
  const parts = g ? [g.list ? `${g.list.length} listed shifts` : `dx ${g.dx.join("…")}, dy ${g.dy.join("…")}, step ${g.step}`] : [];
  for (const axis of TRANSFORM_AXES) {
    const a = sweep[axis];
    if (a) parts.push(a.list ? `${axis} ${a.list.join(", ")}` : `${axis} ${a.range.join("…")} step ${a.step}`);
  }
  return parts.join(" × ");
}

const TRANSFORM_AXES = ["angle", "scale", "brightness"];

// The heatmap's axis pickers: every axis the sweep names (dx and dy for shifts); shown for sweeps beyond shifts.
function heatmapAxes(request) {
  const named = [...(request.shifts ? ["dx", "dy"] : []), ...TRANSFORM_AXES.filter((axis) => request[axis])];
  const choices = named.length >= 2 ? named : [...named, ...["dx", "dy"].filter((axis) => !named.includes(axis))];
  const x = document.getElementById("heatmap-x"), y = document.getElementById("heatmap-y");
  for (const select of [x, y]) select.replaceChildren(...choices.map((axis) => el("option", { value: axis, text: axis })));
  // Translation sweeps keep dx × dy; otherwise the first other axis across, the next one down.
  const across = named.find((axis) => TRANSFORM_AXES.includes(axis)) || "dx";
  x.value = across;
  y.value = choices.find((axis) => axis !== across && (across === "dx" ? axis === "dy" : true)) || "dy";
  document.getElementById("heatmap-axes").hidden = !TRANSFORM_AXES.some((axis) => request[axis]);
  return { x, y };
}

async function showResults(e, models) {
  document.getElementById("results").hidden = false;
  const s = e.summary;
  const cards = [
    ["Clean accuracy", pct(s.clean_accuracy)], ["Mean accuracy", pct(s.mean_accuracy)],
    ["Worst-case accuracy", pct(s.worst_case_accuracy)], ["Consistency", pct(s.consistency)],
    ["Flip rate", pct(s.flip_rate)], ["Samples × shifts", `${s.num_samples} × ${s.num_shifts}`],
  ];
  document.getElementById("summary").replaceChildren(...cards.map(([label, value]) =>
    el("div", { class: "card stat", "data-metric": label }, el("div", { class: "stat-value", text: value }),
      el("div", { class: "muted", text: label }))));

  const heatmap = document.getElementById("heatmap");
  const buttons = document.querySelectorAll("#heatmap-metric button");
  const axes = heatmapAxes(e.request);
  let metric = "accuracy";
  const heatmapUrl = () => `/v1/evaluations/${e.id}/heatmap.png?metric=${metric}&x=${axes.x.value}&y=${axes.y.value}`;
  for (const button of buttons) {
    button.addEventListener("click", () => {
      buttons.forEach((b) => b.classList.toggle("active", b === button));
      metric = button.dataset.metric;
      showImage(heatmap, heatmapUrl()).catch(fail);
    });
  }
  for (const select of [axes.x, axes.y]) select.addEventListener("change", () => showImage(heatmap, heatmapUrl()).catch(fail));
  const transformed = TRANSFORM_AXES.some((axis) => e.request[axis]);
  document.getElementById("curves-card").hidden = !transformed;
  const [classes, dataset] = await Promise.all([
    api(`/v1/evaluations/${e.id}/classes`), api(`/v1/datasets/${e.dataset_id}`),
    showImage(heatmap, heatmapUrl()),
    transformed ? showImage(document.getElementById("curves"), `/v1/evaluations/${e.id}/curves.png`) : null,
  ]);
  document.querySelector("#classes tbody").replaceChildren(...classes.items.map((c) =>
    el("tr", {}, el("td", { text: c.label }), el("td", { class: "num", text: c.n }),
      el("td", { class: "num", text: pct(c.clean_accuracy) }), el("td", { class: "num", text: pct(c.mean_accuracy) }),
      el("td", { class: "num", text: pct(c.worst_case_accuracy) }))));
  await fragileSamples(e, s, dataset);
  await compareChoices(e, models);
}

// A worst transform in words, as the HTML report writes it: "(dx, dy)", then what else moves the image.
function transformText(t) {
  const parts = [`(${t.dx}, ${t.dy})`];
  if ((t.angle ?? 0) !== 0) parts.push(`${t.angle}°`);
  if ((t.scale ?? 1) !== 1) parts.push(`×${t.scale}`);
  if ((t.brightness ?? 0) !== 0) parts.push(`brightness ${t.brightness > 0 ? "+" : ""}${t.brightness}`);
  return parts.join(", ");
}

// Each sample twice, as the model saw it: untransformed, and under the transform least confident in its label
// (worst_transform's keys are the picture's query: dx, dy, and angle, scale, brightness where the sweep has them).
async function fragileSamples(e, s, dataset) {
  const zoom = Math.max(1, Math.min(16, Math.ceil(48 / Math.max(dataset.height, dataset.width))));
  const gallery = document.getElementById("examples");
  const more = document.getElementById("examples-more");
  const moves = TRANSFORM_AXES.some((axis) => e.request[axis]) ? "transforms" : "shifts";
  const view = (x, transform, label) => {
    const img = el("img", { class: "sample", alt: `sample ${x.index} ${label}`, "data-dx": transform.dx, "data-dy": transform.dy });
    const query = Object.entries(transform).map(([axis, value]) => `${axis}=${value}`).join("&");
    return { img, path: `/v1/evaluations/${e.id}/examples/${x.index}.png?${query}&zoom=${zoom}` };
  };
  const load = async (cursor) => {
    const page = await api(`/v1/evaluations/${e.id}/examples?limit=12${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    const figures = page.items.map((x) => {
      const where = transformText(x.worst_transform);
      const clean = view(x, { dx: 0, dy: 0 }, "unshifted"), worst = view(x, x.worst_transform, `at ${where}`);
      // Two significant digits: a badly broken sample's probability is often far below 0.1%.
      const confidence = x.worst_probability === null ? "" : ` · p(label) ${x.worst_probability.toPrecision(2)}`;
      const figure = el("figure", { class: "example", "data-index": x.index },
        el("div", { class: "views" }, clean.img, worst.img),
        el("figcaption", {},
          el("div", { text: `#${x.index} · label ${x.label}` }),
          el("div", { class: "muted", text: `clean → ${x.clean_prediction}` }),
          el("div", { class: x.worst_prediction !== x.label ? "bad" : "", text: `worst → ${x.worst_prediction} at ${where}${confidence}` }),
          el("div", { class: "muted", text: `${x.flips} of ${s.num_shifts} ${moves} flip` })));
      return { figure, views: [clean, worst] };
    });
    gallery.append(...figures.map((f) => f.figure));
    await Promise.all(figures.flatMap((f) => f.views.map((v) => showImage(v.img, v.path))));
    more.hidden = !page.next_cursor;
    more.onclick = () => load(page.next_cursor).catch(fail);
    return page.items.length;
  };
  gallery.replaceChildren();
  if (!(await load(null))) gallery.append(el("p", { class: "muted", text: `No sample changes its prediction under any of the ${moves}.` }));
}

async function compareChoices(e, models) {
  const body = await api(`/v1/evaluations?status=succeeded&dataset_id=${encodeURIComponent(e.dataset_id)}&limit=100`);
  const others = body.items.filter((o) => o.id !== e.id);
  const select = document.getElementById("compare-with");
  const sameSweep = (o) => describeSweep(o.request) === describeSweep(e.request)
    && o.request.padding === e.request.padding && o.request.max_samples === e.request.max_samples;
  others.sort((a, b) => Number(sameSweep(b)) - Number(sameSweep(a)));
  select.append(...others.map((o) => el("option", { value: o.id,
    text: `${models.get(o.model_id) || short(o.model_id)} · ${short(o.id)} · padding ${o.request.padding}${sameSweep(o) ? "" : " (other sweep)"}` })));
  document.getElementById("compare-hint").textContent = others.length
    ? "Succeeded evaluations on the same dataset; those of the same sweep come first. Colours: this one, the other, and the difference."
    : "No other succeeded evaluation on this dataset yet.";
  select.addEventListener("change", () => {
    const img = document.getElementById("comparison");
    if (!select.value) { img.hidden = true; return; }
    showImage(img, `/v1/evaluations/${e.id}/compare.png?other=${select.value}`).catch(fail);
  });
}

// ---- leaderboard -----------------------------------------------------------------------------

async function leaderboardPage() {
  const datasetSelect = document.getElementById("leaderboard-dataset");
  const metricSelect = document.getElementById("leaderboard-metric");
  const datasets = await api("/v1/datasets?limit=500");
  datasetSelect.replaceChildren(...datasets.items.map((d) => el("option", { value: d.id, text: d.name })));
  const params = new URLSearchParams(location.search);
  // ?dataset_id= takes an id, or a built-in's name as the API does.
  const wanted = datasets.items.find((d) => d.id === params.get("dataset_id") || (d.builtin && d.name === params.get("dataset_id")));
  if (wanted) datasetSelect.value = wanted.id;
  else {
    // Open on the dataset of the latest succeeded evaluation, not on an empty board.
    const latest = (await api("/v1/evaluations?status=succeeded&limit=1")).items[0];
    if (latest && datasets.items.some((d) => d.id === latest.dataset_id)) datasetSelect.value = latest.dataset_id;
  }
  if (params.get("metric")) metricSelect.value = params.get("metric");
  const show = async () => {
    if (!datasetSelect.value) return;
    const board = await api(`/v1/leaderboard?dataset_id=${encodeURIComponent(datasetSelect.value)}&metric=${metricSelect.value}`);
    history.replaceState(null, "", `?dataset_id=${board.dataset_id}&metric=${board.metric}`);
    document.getElementById("leaderboard-empty").hidden = board.sweeps.length > 0;
    document.getElementById("leaderboard").replaceChildren(...board.sweeps.map((sweep) => sweepTable(board, sweep)));
  };
  datasetSelect.addEventListener("change", () => show().catch(fail));
  metricSelect.addEventListener("change", () => show().catch(fail));
  await show();
}

function sweepTable(board, sweep) {
  const grid = describeSweep(sweep.sweep);
  const samples = sweep.sweep.max_samples ? `${sweep.num_samples} samples (seed ${sweep.sweep.seed})` : `all ${sweep.num_samples} samples`;
  const metricName = board.metric.replaceAll("_", " ");
  // Clean accuracy first beside the ranked metric: a high consistency means little without it.
  const others = [["clean_accuracy", "Clean acc."], ["mean_accuracy", "Mean acc."],
    ["worst_case_accuracy", "Worst case"], ["consistency", "Consistency"]].filter(([key]) => key !== board.metric);
  const numeric = new Set([metricName, ...others.map(([, label]) => label)]);
  return el("div", { class: "card sweep", "data-sweep-key": sweep.sweep_key },
    el("h2", { text: `${grid} · padding ${sweep.sweep.padding}${sweep.sweep.padding === "zeros" ? ` (fill ${sweep.sweep.fill})` : ""} · ${samples}` }),
    el("p", { class: "muted mono", text: `sweep ${sweep.sweep_key.slice(0, 12)} · ranked by ${metricName}, ${board.higher_is_better ? "higher" : "lower"} is better` }),
    el("table", { class: "grid-table" },
      el("thead", {}, el("tr", {}, ...["Rank", "Model", metricName, ...others.map(([, label]) => label), "Evaluation", "Finished"]
        .map((h) => el("th", { class: numeric.has(h) ? "num" : "", text: h })))),
      el("tbody", {}, ...sweep.items.map((item) => el("tr", { "data-model": item.model_name },
        el("td", { class: "rank", text: item.rank ?? "–" }),
        el("td", { text: `${item.model_name} v${item.model_version}` }),
        el("td", { class: "num strong", text: pct(item.value) }),
        ...others.map(([key]) => el("td", { class: "num", "data-metric": key, text: pct(item.summary[key]) })),
        el("td", {}, el("a", { href: `/dashboard/evaluations/${item.evaluation_id}`, class: "mono", text: short(item.evaluation_id) })),
        el("td", { class: "muted", text: when(item.finished_at) }))))));
}

// ---- plumbing --------------------------------------------------------------------------------

// Re-run `refresh` after the delay it returns (null stops), pausing while the tab is hidden.
async function poll(refresh) {
  let delay;
  try { delay = await refresh(); } catch (error) { fail(error); delay = 5000; }
  if (delay === null) return;
  setTimeout(() => (document.hidden ? document.addEventListener("visibilitychange", () => poll(refresh), { once: true })
    : poll(refresh)), delay);
}

function fail(error) {
  if (error instanceof Unauthorized) { signIn(error.message); return; }
  const box = document.getElementById("evaluation-error") || document.getElementById("refresh-state");
  if (box) { box.hidden = false; box.textContent = `Could not load: ${error.message}`; }
  console.error(error);
}

function signIn(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("content").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("tenant-state").textContent = "";
  document.getElementById("login").hidden = false;
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message ? `Sign-in failed: ${message}.` : "";
  document.getElementById("token-input").focus();
}

async function start() {
  document.getElementById("content").hidden = false;
  document.getElementById("login").hidden = true;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("tenant-state").textContent = "token set for this tab";
  const pages = { evaluations: evaluationsPage, evaluation: evaluationPage, leaderboard: leaderboardPage };
  try { await pages[page](); } catch (error) { fail(error); }
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
  try { await request("/v1/datasets?limit=1"); } catch (error) { signIn(error.message); return; }
  start();
});
document.getElementById("sign-out").addEventListener("click", () => signIn(null));

if (token()) start(); else signIn(null);
