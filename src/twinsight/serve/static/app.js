// twinsight's page: plain JavaScript, no dependencies, no build step.
// Every answer is the JSON of the API (the CLI's --json); text goes into the page as text only.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token");
const $ = (id) => document.getElementById(id);
let health = null;
let busy = 0;

// -- the API ---------------------------------------------------------------------------------------
async function api(path, form) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const init = form ? { method: "POST", body: form, headers } : { headers };
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error("the server cannot be reached");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    throw new Error((body && body.error) || `the server answered ${response.status}`);
  }
  return body;
}

function thumbnailUrl(key) {
  const url = `/api/thumbnail/${encodeURIComponent(key)}`;
  return token ? `${url}?token=${encodeURIComponent(token)}` : url;
}

// -- small helpers ---------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function fmt(x) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (x !== 0 && (Math.abs(x) >= 1e4 || Math.abs(x) < 1e-2)) return x.toExponential(2);
  const text = x.toPrecision(4);
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message ? `Error: ${message}` : "";
  box.hidden = !message;
}

function setBusy(on) {
  busy += on ? 1 : -1;
  document.body.setAttribute("aria-busy", busy > 0 ? "true" : "false");
}

function intOrNull(input) {
  const v = parseInt(input.value, 10);
  return Number.isFinite(v) && v >= 1 ? v : null;
}

// The observation's settings, sent as typed: the server says in one line what is wrong.
function appendIntake(form, withInstrument) {
  const distance = $("distance").value.trim();
  if (distance) form.append("distance", distance);
  const instrument = $("instrument").value.trim();
  if (withInstrument && instrument) form.append("instrument", instrument);
}

// -- the URL holds the query and the settings, so that a search of an indexed item can be shared --
function updateUrl(key) {
  const next = new URLSearchParams();
  if (key) next.set("key", key);
  next.set("k", $("k").value);
  if (intOrNull($("top"))) next.set("top", $("top").value);
  for (const name of ["distance", "instrument"]) {
    if ($(name).value.trim()) next.set(name, $(name).value.trim());
  }
  if (token) next.set("token", token);
  history.replaceState(null, "", `${location.pathname}?${next}`);
}

// -- a query: an uploaded file or an indexed item's key -------------------------------------------
let current = null;  // {file} or {key}

function queryForm(query) {
  const form = new FormData();
  if (query.file) form.append("image", query.file, query.file.name); else form.append("key", query.key);
  return form;
}

async function previewUrl(file) {
  if (/^image\/(png|jpeg)$/.test(file.type)) return URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file, file.name);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch("/api/preview", { method: "POST", body: form, headers });
  return response.ok ? URL.createObjectURL(await response.blob()) : null;
}

async function showQuery(query) {
  const img = $("query-image");
  $("query").hidden = false;
  if (query.key) {
    img.src = thumbnailUrl(query.key);
    img.alt = `Query: indexed item ${query.key}`;
    $("query-name").textContent = `indexed item ${query.key}`;
    return;
  }
  $("query-name").textContent = query.file.name;
  img.alt = `Query: ${query.file.name}`;
  img.removeAttribute("src");
  try {
    const url = await previewUrl(query.file);
    if (current === query && url) img.src = url;
  } catch (err) { /* the search reports what is wrong with the file */ }
}

async function runQuery(query) {
  current = query;
  showError("");
  showQuery(query);
  updateUrl(query.key);
  setBusy(true);
  try {
    const searchForm = queryForm(query);
    searchForm.append("k", $("k").value || "12");
    appendIntake(searchForm, false);
    const jobs = [api("/api/search", searchForm).then(renderResults)];
    if (health && health.param_columns.length) {
      const matchForm = queryForm(query);
      if (intOrNull($("top"))) matchForm.append("top", $("top").value);
      appendIntake(matchForm, true);
      jobs.push(api("/api/match", matchForm).then(renderEstimate));
    }
    await Promise.all(jobs);
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

// -- the results grid ------------------------------------------------------------------------------
function describe(match) {
  if (match.label !== undefined) return `label ${match.label}`;
  return health.param_columns.slice(0, 4).map((c) => `${c} ${fmt(match[c])}`).join(", ");
}

function renderResults(result) {
  const list = $("results");
  list.replaceChildren();
  const matches = result.results.length ? result.results[0].matches : [];
  for (const m of matches) {
    const button = el("button", { type: "button", "data-key": m.key,
      "aria-label": `Result ${m.rank}: ${m.key}, similarity ${m.similarity.toFixed(3)}. Search by it.` },
      el("img", { src: thumbnailUrl(m.key), alt: `Indexed item ${m.key}`, loading: "lazy" }),
      el("div", { class: "key" }, `${m.rank}. ${m.key}`),
      el("div", { class: "sim" }, `similarity ${m.similarity.toFixed(4)}`),
      el("div", { class: "desc" }, describe(m)));
    button.addEventListener("click", () => runQuery({ key: m.key }));
    list.append(el("li", {}, button));
  }
  $("results-title").textContent = `Most similar: top ${matches.length} of ${health ? health.items : "?"}`;
  $("results-section").hidden = false;
}

function gridColumns(list) {
  const items = list.querySelectorAll("li");
  if (items.length < 2) return 1;
  const top = items[0].offsetTop;
  let n = 0;
  for (const li of items) { if (li.offsetTop !== top) break; n += 1; }
  return Math.max(n, 1);
}

function onGridKey(event) {
  const buttons = [...$("results").querySelectorAll("button")];
  const i = buttons.indexOf(document.activeElement);
  if (i < 0) return;
  const cols = gridColumns($("results"));
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols, Home: -i,
    End: buttons.length - 1 - i }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  buttons[Math.min(Math.max(i + step, 0), buttons.length - 1)].focus();
}

// -- the best-match estimate: a table and, per parameter, matches against the prior -----------------
function renderEstimate(estimate) {
  const rows = $("estimate-table").querySelector("tbody");
  rows.replaceChildren();
  const figures = $("histograms");
  figures.replaceChildren();
  for (const [name, p] of Object.entries(estimate.parameters)) {
    const unit = p.unit ? ` [${p.unit}]` : "";
    rows.append(el("tr", { "data-parameter": name },
      el("th", { scope: "row" }, name + unit), el("td", {}, fmt(p.median)),
      el("td", {}, `${fmt(p.interval_68[0])} – ${fmt(p.interval_68[1])}`),
      el("td", {}, `${fmt(p.interval_95[0])} – ${fmt(p.interval_95[1])}`),
      el("td", {}, fmt(p.prior.median)),
      el("td", {}, `${fmt(p.prior.interval_68[0])} – ${fmt(p.prior.interval_68[1])}`),
      el("td", {}, fmt(p.narrowing)), el("td", {}, fmt(p.truth))));
    if (p.histogram) figures.append(histogram(name + unit, p));
  }
  const cal = estimate.calibrated ? "calibrated" : "not calibrated";
  $("estimate-info").textContent =
    `${estimate.n_matches} best matches, ${estimate.weighting} weights, intervals ${cal}.`;
  renderInstrument(estimate);
  $("estimate-section").hidden = false;
}

// -- what the estimate is calibrated for, what was read from the file, typicality, warnings ------
function describeInstrument(inst) {
  if (!inst || typeof inst !== "object") return String(inst || "clean simulations");
  const round = Math.abs(inst.beam_major - inst.beam_minor) < 0.05;
  const beam = round ? `${fmt(inst.beam_major)} px` :
    `${fmt(inst.beam_major)} x ${fmt(inst.beam_minor)} px at ${fmt(inst.beam_pa)} deg`;
  const snr = inst.snr === null ? "SNR ∞ (the simulations' own noise)" : `SNR ${fmt(inst.snr)}`;
  return `beam ${beam}, ${snr} (${inst.key})`;
}

function readFromFile(observation) {
  const o = observation.original || {};
  const from = (observation.instrument || {}).provenance || {};
  const beam = o.beam_arcsec ? `${fmt(o.beam_arcsec[0])} x ${fmt(o.beam_arcsec[1])} arcsec` : "none";
  return [
    `distance ${fmt(o.distance_pc)} pc (${o.distance_from || "–"})`,
    `pixel scale ${fmt(o.pixel_scale_au)} AU/px (${from.pixel_scale || "–"})`,
    `beam ${beam} (${from.beam || "–"})`,
    `noise ${fmt(o.noise)}${o.bunit ? " " + o.bunit : ""} (${from.noise || "–"})`,
  ].join(" · ");
}

function renderInstrument(estimate) {
  const facts = [["calibrated for", "instrument", describeInstrument(estimate.calibrated_for)]];
  if (estimate.observation) {
    facts.push(["read from the file", "observation", readFromFile(estimate.observation)]);
  }
  const t = estimate.typicality;
  if (t) {
    facts.push(["typicality", "p-value", `p = ${fmt(t.p_value)} (best-match similarity ` +
      `${fmt(t.best_similarity)}; ${t.atypical ? "atypical" : "typical"} of the simulations seen alike)`]);
  }
  $("calibrated-for").replaceChildren(...facts.flatMap(([term, field, text]) =>
    [el("dt", {}, term), el("dd", { "data-field": field }, text)]));
  $("calibrated-for").hidden = false;
  const warnings = estimate.warnings || [];
  $("warnings").replaceChildren(...warnings.map((w) => el("li", {}, w)));
  $("warnings").hidden = !warnings.length;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function histogram(title, p) {
  const W = 340, H = 170, L = 8, R = 8, T = 10, B = 34;
  const tx = p.scale === "log" ? (v) => Math.log10(Math.max(v, 1e-300)) : (v) => v;
  const edges = p.histogram.edges.map(tx);
  const x0 = edges[0], x1 = edges[edges.length - 1] === x0 ? x0 + 1 : edges[edges.length - 1];
  const X = (v) => L + ((tx(v) - x0) / (x1 - x0)) * (W - L - R);
  const Xs = (s) => L + ((s - x0) / (x1 - x0)) * (W - L - R);
  const peak = Math.max(...p.histogram.matches.map((v) => v || 0), ...p.histogram.prior.map((v) => v || 0), 1e-300);
  const Y = (d) => H - B - ((d || 0) / peak) * (H - B - T);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `${title}: matches against the prior; median ${fmt(p.median)}, 68 % interval ` +
      `${fmt(p.interval_68[0])} to ${fmt(p.interval_68[1])}, 95 % interval ${fmt(p.interval_95[0])} to ${fmt(p.interval_95[1])}` });
  chart.append(svg("title", {}, `${title}: histogram of the best matches against the prior`));
  const band = (lo, hi, cls) => chart.append(svg("rect", { class: cls, x: X(lo), y: T,
    width: Math.max(X(hi) - X(lo), 1), height: H - B - T }));
  band(p.interval_95[0], p.interval_95[1], "i95");
  band(p.interval_68[0], p.interval_68[1], "i68");
  const bars = (values, cls) => values.forEach((d, i) => {
    const x = Xs(edges[i]), w = Math.max(Xs(edges[i + 1]) - x - 0.5, 0.5);
    chart.append(svg("rect", { class: cls, x, y: Y(d), width: w, height: H - B - Y(d) }));
  });
  bars(p.histogram.prior, "prior");
  bars(p.histogram.matches, "matches");
  chart.append(svg("line", { class: "median", x1: X(p.median), x2: X(p.median), y1: T, y2: H - B }));
  if (p.truth !== null && p.truth !== undefined) {
    chart.append(svg("line", { class: "truth", x1: X(p.truth), x2: X(p.truth), y1: T, y2: H - B }));
  }
  const lo = p.histogram.edges[0], hi = p.histogram.edges[p.histogram.edges.length - 1];
  chart.append(svg("text", { class: "axis", x: L, y: H - B + 14 }, fmt(lo)));
  chart.append(svg("text", { class: "axis", x: W - R, y: H - B + 14, "text-anchor": "end" }, fmt(hi)));
  chart.append(svg("text", { class: "axis", x: W / 2, y: H - 6, "text-anchor": "middle" },
    `${title}${p.scale === "log" ? " (log scale)" : ""}`));
  const caption = el("figcaption", {}, `${title}: matches (orange) vs prior (grey); shaded 68 % and 95 % intervals` +
    (p.truth !== null && p.truth !== undefined ? "; dashed green: truth" : ""));
  return el("figure", { class: "histogram", "data-parameter": title }, chart, caption);
}

// -- compare two images ----------------------------------------------------------------------------
async function runCompare(event) {
  event.preventDefault();
  showError("");
  const a = $("compare-a").files[0], b = $("compare-b").files[0];
  if (!a || !b) { showError("pick two images to compare"); return; }
  const form = new FormData();
  form.append("image_a", a, a.name);
  form.append("image_b", b, b.name);
  setBusy(true);
  try {
    const c = await api("/api/compare", form);
    const out = $("comparison");
    const decision = c.same === null ? "– (the model has no score calibration)" : (c.same ? "same" : "different");
    out.replaceChildren(
      el("dt", {}, "similarity"), el("dd", { "data-field": "similarity" }, c.similarity.toFixed(4)),
      el("dt", {}, "probability"), el("dd", { "data-field": "probability" }, c.probability === null ? "–" : c.probability.toFixed(3)),
      el("dt", {}, "decision"), el("dd", { "data-field": "decision" },
        c.threshold === null ? decision : `${decision} (threshold ${c.threshold.toFixed(4)})`));
    out.hidden = false;
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

// -- wiring ----------------------------------------------------------------------------------------
function wireDrop() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) runQuery({ file });
  });
  $("query-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) runQuery({ file });
  });
}

async function start() {
  if (params.get("k")) $("k").value = params.get("k");
  if (params.get("top")) $("top").value = params.get("top");
  for (const name of ["distance", "instrument"]) {
    if (params.get(name)) $(name).value = params.get(name);
  }
  wireDrop();
  $("results").addEventListener("keydown", onGridKey);
  $("query-form").addEventListener("submit", (e) => { e.preventDefault(); if (current) runQuery(current); });
  $("compare-form").addEventListener("submit", runCompare);
  try {
    health = await api("/api/health");
  } catch (err) {
    $("index-info").textContent = "";
    showError(err.message);
    return;
  }
  const what = health.param_columns.length ? `parameters ${health.param_columns.join(", ")}` :
    (health.labels ? "labels" : "no labels");
  $("index-info").textContent = `${health.items} indexed images · ${what} · model ${health.model_fingerprint.slice(0, 12)}`;
  $("top-label").hidden = !health.param_columns.length;
  $("instrument-label").hidden = !health.param_columns.length;
  document.body.dataset.ready = "true";
  if (params.get("key")) runQuery({ key: params.get("key") });
}

start();
