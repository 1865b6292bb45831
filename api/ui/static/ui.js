/* Softlabel dashboard: charts from the page's JSON, live state over SSE, forms over the API.
   No inline scripts (the CSP forbids them); the session cookie authenticates API calls and
   every state-changing call carries the page's CSRF token in X-CSRF-Token. */
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
  "#17becf", "#7f7f7f", "#bcbd22"];
const NS = "http://www.w3.org/2000/svg";
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

function $(sel, root) { return (root || document).querySelector(sel); }
function $all(sel, root) { return Array.from((root || document).querySelectorAll(sel)); }
function pageData() {
  const node = document.getElementById("page-data");
  return node ? JSON.parse(node.textContent) : {};
}
function fmt(x, digits) {
  return (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toFixed(digits ?? 4);
}

async function api(method, url, body) {
  const headers = { "X-CSRF-Token": document.body.dataset.csrf || "" };
  const init = { method, headers, credentials: "same-origin" };
  if (body instanceof FormData) { init.body = body; }
  else if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const resp = await fetch(url, init);
  const text = await resp.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch (e) { doc = { detail: text }; }
  return { ok: resp.ok, status: resp.status, doc };
}

/* ---------- SVG charts (hover: <title>; each has its table on the page) ---------- */
function el(tag, attrs, parent) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}
function tip(node, text) { el("title", {}, node).textContent = text; return node; }

function frame(container, opts) {
  const width = Math.max(260, Math.min(container.clientWidth || 480, 640));
  const height = opts.height || Math.round(width * 0.7);
  const m = { l: 46, r: 12, t: 10, b: 36 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "svg-chart" });
  container.replaceChildren(svg);
  const [x0, x1] = opts.x, [y0, y1] = opts.y;
  const sx = (v) => m.l + (v - x0) / ((x1 - x0) || 1) * (width - m.l - m.r);
  const sy = (v) => height - m.b - (v - y0) / ((y1 - y0) || 1) * (height - m.t - m.b);
  el("rect", { x: m.l, y: m.t, width: width - m.l - m.r, height: height - m.t - m.b, class: "plot-bg" }, svg);
  const digits = (lo, hi) => Math.max(1, Math.min(4, Math.ceil(1 - Math.log10(Math.abs(hi - lo) / 4 || 1))));
  const dx = digits(x0, x1), dy = digits(y0, y1);
  for (let i = 0; i <= 4; i++) {
    const vx = x0 + (x1 - x0) * i / 4, vy = y0 + (y1 - y0) * i / 4;
    el("text", { x: sx(vx), y: height - m.b + 14, class: "tick", "text-anchor": "middle" }, svg).textContent = fmt(vx, dx);
    el("text", { x: m.l - 4, y: sy(vy) + 4, class: "tick", "text-anchor": "end" }, svg).textContent = fmt(vy, dy);
    el("line", { x1: m.l, x2: width - m.r, y1: sy(vy), y2: sy(vy), class: "grid" }, svg);
  }
  el("text", { x: (m.l + width - m.r) / 2, y: height - 4, class: "axis", "text-anchor": "middle" }, svg).textContent = opts.xLabel || "";
  el("text", { x: 12, y: (m.t + height - m.b) / 2, class: "axis", "text-anchor": "middle", transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})` }, svg).textContent = opts.yLabel || "";
  return { svg, sx, sy, width, height, m };
}

function legend(container, items) {
  const list = document.createElement("ul");
  list.className = "legend";
  items.forEach(([label, color]) => {
    const li = document.createElement("li");
    const sw = document.createElementNS(NS, "svg");
    sw.setAttribute("width", "12"); sw.setAttribute("height", "12");
    el("rect", { width: 12, height: 12, fill: color }, sw);
    li.append(sw, " " + label);
    list.appendChild(li);
  });
  container.appendChild(list);
}

function reliabilityChart(container, bins) {
  const c = frame(container, { x: [0, 1], y: [0, 1], xLabel: "confidence", yLabel: "accuracy" });
  el("line", { x1: c.sx(0), y1: c.sy(0), x2: c.sx(1), y2: c.sy(1), class: "diag" }, c.svg);
  const total = bins.reduce((s, b) => s + b.count, 0) || 1;
  const maxShare = Math.max(...bins.map((b) => b.count / total), 0.01);
  bins.forEach((b) => {
    const w = c.sx(b.hi) - c.sx(b.lo) - 1;
    const share = b.count / total;
    tip(el("rect", { x: c.sx(b.lo) + 0.5, y: c.sy(0.25 * share / maxShare), width: w,
      height: c.sy(0) - c.sy(0.25 * share / maxShare), class: "hist" }, c.svg),
      `${fmt(b.lo, 3)}–${fmt(b.hi, 3)}: ${b.count} samples (${fmt(100 * share, 1)} %)`);
    if (b.accuracy === null) return;
    tip(el("rect", { x: c.sx(b.lo) + 0.5, y: c.sy(b.accuracy), width: w,
      height: c.sy(0) - c.sy(b.accuracy), class: "bar" }, c.svg),
      `${fmt(b.lo, 3)}–${fmt(b.hi, 3)}: accuracy ${fmt(b.accuracy)}, confidence ${fmt(b.confidence)}, n=${b.count}`);
  });
  legend(container, [["accuracy per bin", COLORS[0]], ["share of samples (histogram)", "#bbb"], ["perfect calibration", "#444"]]);
}

function scatterChart(container, series, opts) {
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const pad = (lo, hi) => { const d = (hi - lo) * 0.08 || 0.01; return [lo - d, hi + d]; };
  const c = frame(container, { x: pad(Math.min(...xs), Math.max(...xs)), y: pad(Math.min(...ys), Math.max(...ys)), height: opts.height, ...opts });
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    if (s.line) {
      el("polyline", { points: s.points.map((p) => `${c.sx(p[0])},${c.sy(p[1])}`).join(" "), fill: "none", stroke: color, "stroke-width": 2 }, c.svg);
    }
    s.points.forEach((p) => tip(el("circle", { cx: c.sx(p[0]), cy: c.sy(p[1]), r: s.r || 3, fill: color, "fill-opacity": s.opacity || 0.8 }, c.svg), p[2] || `${s.label}: (${fmt(p[0])}, ${fmt(p[1])})`));
  });
  legend(container, series.map((s, i) => [s.label, COLORS[i % COLORS.length]]));
}

function lineChart(container, xLabel, x, series) {
  if (!window.uPlot || !x.length) return;
  const width = Math.max(260, Math.min(container.clientWidth || 480, 640));
  const opts = {
    width, height: Math.round(width * 0.6),
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, {}],
    series: [{ label: xLabel }, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true } }))],
  };
  container.replaceChildren();
  new window.uPlot(opts, [x, ...series.map((s) => s.values)], container);
}

/* ---------- pages ---------- */
function updateRow(row, state) {
  const statusCell = $(".c-status", row) || $("#job-status");
  if (statusCell) {
    statusCell.innerHTML = "";
    const span = document.createElement("span");
    span.className = `status status-${state.status}`;
    span.textContent = state.status + (state.cancel_requested && state.status === "running" ? " (cancel requested)" : "");
    statusCell.appendChild(span);
  }
  const prog = $(".c-progress", row) || $("#job-progress");
  if (prog && state.epochs) {
    prog.replaceChildren();
    const bar = document.createElement("progress");
    bar.max = state.epochs; bar.value = state.epoch || 0; bar.setAttribute("aria-label", "epochs done");
    const text = document.createElement("span");
    text.className = "epoch"; text.textContent = ` epoch ${state.epoch || 0} of ${state.epochs}`;
    prog.append(bar, text);
  }
}

function follow(query, onJobs, onSweep, onEnd) {
  const source = new EventSource(`/ui/events?${query}`);
  source.addEventListener("jobs", (e) => onJobs(JSON.parse(e.data)));
  source.addEventListener("sweep", (e) => onSweep && onSweep(JSON.parse(e.data)));
  source.addEventListener("end", () => { source.close(); if (onEnd) onEnd(); });
  window.addEventListener("beforeunload", () => source.close());
  return source;
}

function jobsPage() {
  const rows = $all("#jobs-table tr[data-job-id]").filter((r) => r.dataset.terminal !== "true");
  if (!rows.length) return;
  const byId = Object.fromEntries(rows.map((r) => [r.dataset.jobId, r]));
  const live = $("#live");
  follow(`ids=${Object.keys(byId).join(",")}`, (states) => {
    states.forEach((s) => byId[s.id] && updateRow(byId[s.id], s));
    if (live) live.textContent = `Live: updated ${new Date().toLocaleTimeString()}`;
  });
}

function jobPage() {
  const data = pageData();
  const job = data.job, result = data.result;
  if (result) {
    const h = result.history || [];
    lineChart($("#chart-history"), "epoch", h.map((r) => r.epoch), [
      { label: "train loss", values: h.map((r) => r.train_loss) },
      { label: "val NLL", values: h.map((r) => r.val_nll) },
      { label: "val ECE", values: h.map((r) => r.val_ece) },
    ]);
    reliabilityChart($("#chart-reliability"), result.test.reliability || []);
    const proj = result.projection;
    if (proj && $("#chart-projection")) {
      scatterChart($("#chart-projection"), proj.classes.map((c, i) => ({
        label: `class ${proj.class_names[i]}`, r: 2.5, opacity: 0.6,
        points: proj.points.filter((p) => p[2] === c).map((p) => [p[0], p[1], `class ${proj.class_names[i]}: (${fmt(p[0], 2)}, ${fmt(p[1], 2)})`]),
      })), { xLabel: "plane axis 1", yLabel: "plane axis 2" });
    }
    const gap = result.test.logit_gap;
    if (gap && $("#chart-gap")) gapChart($("#chart-gap"), gap);
  }
  const form = $("#cancel-form");
  if (form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const out = await api("POST", form.dataset.action);
      $("#cancel-message").textContent = out.ok ? `Cancel requested: ${out.doc.status}` : (out.doc && out.doc.detail) || `HTTP ${out.status}`;
      if (out.ok) updateRow(document, out.doc);
    });
  }
  if (job && !job.terminal) {
    follow(`ids=${job.id}`, (states) => states.forEach((s) => updateRow(document, s)), null, () => {
      if (form) form.remove();
      window.setTimeout(() => window.location.reload(), 200); // the result is rendered by the server
    });
  }
}

function gapChart(container, gap) {
  const values = [["mean", gap.mean], ["median", gap.median], ["optimum", gap.optimum]].filter((v) => v[1] !== null);
  const top = Math.max(...values.map((v) => v[1]), 1) * 1.1;
  const c = frame(container, { x: [0, values.length], y: [0, top], height: 160, xLabel: "", yLabel: "logit gap" });
  values.forEach(([name, v], i) => {
    tip(el("rect", { x: c.sx(i + 0.2), y: c.sy(v), width: c.sx(0.6) - c.sx(0), height: c.sy(0) - c.sy(v), fill: COLORS[i] }, c.svg), `${name}: ${fmt(v)}`);
    el("text", { x: c.sx(i + 0.5), y: c.sy(v) - 3, class: "tick", "text-anchor": "middle" }, c.svg).textContent = `${name} ${fmt(v, 2)}`;
  });
}

function sweepPage() {
  const data = pageData();
  const report = data.report, sweep = data.sweep;
  if (report) sweepCharts(report);
  if (sweep && !(sweep.terminal && sweep.has_report)) {
    const byId = Object.fromEntries($all("#trials-table tr[data-job-id]").map((r) => [r.dataset.jobId, r]));
    follow(`sweep_id=${sweep.id}`, (states) => states.forEach((s) => byId[s.id] && updateRow(byId[s.id], s)), (s) => {
      $("#sweep-bar").max = s.total; $("#sweep-bar").value = s.done;
      $("#sweep-done").textContent = `${s.done} of ${s.total} trials done`;
      const st = $("#sweep-status");
      st.replaceChildren(); const span = document.createElement("span");
      span.className = `status status-${s.status}`; span.textContent = s.status; st.appendChild(span);
    }, () => { if (!report) window.setTimeout(() => window.location.reload(), 200); });
  }
}

function sweepCharts(report) {
  const groups = {};
  report.rows.forEach((r) => {
    const key = Object.entries(r.context || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    (groups[key] = groups[key] || []).push(r);
  });
  const keys = Object.keys(groups);
  const first = groups[keys[0]].slice().sort((a, b) => a.alpha - b.alpha);
  const suffix = (k) => (k ? ` (${k})` : "");
  const metricSeries = [];
  keys.forEach((k) => {
    const rows = groups[k].slice().sort((a, b) => a.alpha - b.alpha);
    if (rows.length !== first.length) return;
    ["accuracy", "ece", "nll"].forEach((m) => metricSeries.push({ label: `test ${m}${suffix(k)}`, values: rows.map((r) => r.test[m].mean) }));
  });
  lineChart($("#chart-metrics"), "α", first.map((r) => r.alpha), metricSeries);
  const points = report.rows.filter((r) => r.test.accuracy.mean !== null).map((r) =>
    [r.test.ece.mean, r.test.accuracy.mean, `α=${r.alpha}${suffix(Object.entries(r.context || {}).map(([k, v]) => `${k}=${v}`).join(", "))}: accuracy ${fmt(r.test.accuracy.mean)}, ECE ${fmt(r.test.ece.mean)}`]);
  const front = report.pareto_front.map((p) => [p.ece, p.accuracy, `Pareto α=${p.alpha}: accuracy ${fmt(p.accuracy)}, ECE ${fmt(p.ece)}`]);
  if (points.length) {
    scatterChart($("#chart-pareto"), [{ label: "grid points", points, r: 4 }, { label: "Pareto front", points: front, line: true, r: 5 }],
      { xLabel: "test ECE (lower is better)", yLabel: "test accuracy" });
  }
  const overlay = report.rows.map((r) => ({
    label: `α=${r.alpha}${suffix(Object.entries(r.context || {}).map(([k, v]) => `${k}=${v}`).join(", "))}`, line: true, r: 2.5,
    points: r.reliability.filter((b) => b.count).map((b) => [b.confidence, b.accuracy, `α=${r.alpha}, bin ${fmt(b.lo, 2)}–${fmt(b.hi, 2)}: accuracy ${fmt(b.accuracy)}, confidence ${fmt(b.confidence)}, n=${b.count}`]),
  })).filter((s) => s.points.length);
  if (overlay.length) scatterChart($("#chart-overlay"), [{ label: "perfect calibration", line: true, r: 0, points: [[0, 0, ""], [1, 1, ""]] }, ...overlay], { xLabel: "confidence", yLabel: "accuracy", x: [0, 1], y: [0, 1] });
}

function datasetsPage() {
  const form = $("#upload-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = new FormData();
    body.append("file", $("#up-file").files[0]);
    ["name", "label_column", "format"].forEach((n) => { const v = form.elements[n].value; if (v) body.append(n, v); });
    const out = await api("POST", form.dataset.action, body);
    $("#upload-message").textContent = out.ok ? `Uploaded ${out.doc.id} (${out.doc.n_rows} rows, ${out.doc.n_classes} classes)` : (out.doc && out.doc.detail) || `HTTP ${out.status}`;
    if (out.ok) window.setTimeout(() => window.location.reload(), 600);
  });
  $all(".delete-form").forEach((f) => f.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = await api("DELETE", f.dataset.action);
    const msg = $(".row-message", f.parentElement);
    if (out.ok) { f.closest("tr").remove(); return; }
    msg.textContent = out.status === 409 ? `In use: ${out.doc.detail}` : (out.doc && out.doc.detail) || `HTTP ${out.status}`;
    msg.className = "row-message error";
  }));
}

function numbers(text, parse) {
  return text.split(",").map((s) => s.trim()).filter((s) => s !== "").map((s) => (/^-?[0-9.eE+-]+$/.test(s) ? parse(s) : s));
}

function buildSpec(form) {
  const v = (n) => form.elements[n].value;
  const [source, name] = v("dataset").split(/:(.*)/s);
  const dataset = source === "upload" ? { source, id: name } : { source, name };
  const model = { arch: v("arch") };
  if (v("arch") === "mlp") model.hidden = numbers(v("hidden"), (s) => parseInt(s, 10));
  const epochs = /^[0-9]+$/.test(v("epochs").trim()) ? parseInt(v("epochs"), 10) : v("epochs");
  const tags = {};
  v("tags").split(",").map((s) => s.trim()).filter(Boolean).forEach((t) => { const [k, ...rest] = t.split(":"); tags[k] = rest.join(":"); });
  const alphas = numbers(v("alphas"), parseFloat), seeds = numbers(v("seeds"), (s) => parseInt(s, 10));
  const base = { dataset, model, training: { epochs }, tags };
  if (form.elements.kind.value === "job") {
    base.loss = { alpha: alphas[0] ?? 0 };
    base.training.seed = seeds[0] ?? 0;
    return { url: "/v1/jobs", body: base };
  }
  return { url: "/v1/sweeps", body: { base, alphas, seeds, objective: v("objective") } };
}

const FIELD_OF = [["alphas", "alphas"], ["alpha", "alphas"], ["seeds", "seeds"], ["seed", "seeds"], ["epochs", "epochs"],
  ["hidden", "hidden"], ["arch", "arch"], ["model", "arch"], ["dataset", "dataset"], ["tags", "tags"]];

function showErrors(doc) {
  const errors = (doc && doc.errors) || [];
  let placed = false;
  errors.forEach((err) => {
    const loc = (err.loc || []).map(String);
    const hit = FIELD_OF.find(([part]) => loc.includes(part));
    if (!hit) return;
    const box = $(`#err-${hit[1]}`);
    box.textContent = `${box.textContent ? box.textContent + "; " : ""}${err.msg}`;
    placed = true;
  });
  if (!placed && doc && doc.detail) {
    const hit = FIELD_OF.find(([part]) => doc.detail.includes(part));
    if (hit) $(`#err-${hit[1]}`).textContent = doc.detail;
  }
  return placed;
}

function submitPage() {
  const form = $("#submit-form");
  const preview = () => {
    const { url, body } = buildSpec(form);
    $("#post-target").textContent = url;
    $("#spec-preview").textContent = JSON.stringify(body, null, 2);
  };
  form.addEventListener("input", preview);
  form.addEventListener("change", preview);
  preview();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    $all(".field-error", form).forEach((n) => { n.textContent = ""; });
    const { url, body } = buildSpec(form);
    const out = await api("POST", url, body);
    if (out.ok) {
      window.location.assign(url === "/v1/jobs" ? `/ui/jobs/${out.doc.id}` : `/ui/sweeps/${out.doc.id}`);
      return;
    }
    showErrors(out.doc);
    $("#submit-message").textContent = `Refused (${out.status}): ${(out.doc && out.doc.detail) || ""}`;
    $("#submit-message").className = "error";
  });
}

const PAGES = { jobs: jobsPage, job: jobPage, sweep: sweepPage, datasets: datasetsPage, submit: submitPage };
document.addEventListener("DOMContentLoaded", () => {
  const init = PAGES[document.body.dataset.page];
  if (init) init();
  document.body.dataset.ready = "true";
});
