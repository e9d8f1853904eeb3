// Esper dashboard. The server folds each run's events and sends snapshots of the folded run
// (esper.karn.snapshot); this script only draws them: charts with uPlot (vendored, served by the
// dashboard), the seed timeline on a canvas, tables. Missing values show as "—".
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#17becf"];                       // one colour per run, environment or arm, in order
const RUNS_REFRESH_MS = 5000;       // how often the pickers read the runs directory again
const COMPARE_REFRESH_MS = 5000;    // how often a compared run's snapshot is fetched again
const STUDY_REFRESH_MS = 15000;     // how often a study's table and bands are fetched again
const CHART_HEIGHT = 220;           // px: accuracy, loss, parameters, bands
const SMALL_CHART_HEIGHT = 150;     // px: PPO round statistics and episode results
const TIMELINE_ROW = 18;            // px per slot row in the seed timeline
const TIMELINE_LABELS = 130;        // px for the timeline's row labels
const MARK_PX = 5;                  // half-size of a lifecycle mark, CSS px
const TRAINING_DASH = [6, 4];       // training curves are dashed, validation solid
const WHOLE_STEPS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
  100000];                          // x ticks: epochs, rounds and episodes are whole numbers
const TICK_PX = 24;                 // least room per x tick label in the by-episode view

const $ = (id) => document.getElementById(id);
const finite = (v) => typeof v === "number" && Number.isFinite(v);

const page = {
  meta: null,          // /api/meta: stage and mark colours and shapes
  runs: new Map(),     // run name -> entry of /api/runs
  newest: null,        // the run whose log changed last
  name: "",            // the run shown
  source: null,        // its EventSource
  snap: null,          // its latest snapshot
  compare: { name: "", snap: null, error: "" },
  ppoView: "round",    // PPO runs: "round" or "episode"
  study: { name: "", data: null },
  charts: new Map(),   // container id -> {u, layout, extras, height, observer}
  timelineRows: [],
  drawQueued: false,
  listError: "",       // why /api/runs failed (a 503: the runs directory is gone), shown
  stopped: null,       // the run shown, whose log was removed or rewritten: followed again
                       // from its start once the listing holds it (readable) again
};
window.esperDashboard = page;  // lets the browser tests read the charts

// A value for people: missing (null, undefined, NaN) is "—", never 0.
function fmt(value, digits) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return "—";
  if (digits !== undefined) return value.toFixed(digits);
  return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function tint(hex, alpha) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

// ---- charts --------------------------------------------------------------------------------

// A lifecycle mark: the report's triangle, star or cross, in its colour with a dark edge.
function glyph(ctx, shape, x, y, r, colour) {
  ctx.beginPath();
  if (shape === "triangle") {
    ctx.moveTo(x, y - r);
    ctx.lineTo(x + r, y + 0.8 * r);
    ctx.lineTo(x - r, y + 0.8 * r);
  } else if (shape === "star") {
    for (let i = 0; i < 10; i++) {
      const radius = i % 2 ? 0.45 * r : 1.2 * r;
      const angle = -Math.PI / 2 + (i * Math.PI) / 5;
      ctx.lineTo(x + radius * Math.cos(angle), y + radius * Math.sin(angle));
    }
  } else {  // cross: a plus sign turned 45°, arms 2w wide
    const w = 0.3 * r;
    const plus = [[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r], [-w, w],
      [-r, w], [-r, -w], [-w, -w]];
    const c = Math.SQRT1_2;
    for (const [px, py] of plus) ctx.lineTo(x + c * (px - py), y + c * (px + py));
  }
  ctx.closePath();
  ctx.fillStyle = colour;
  ctx.fill();
  ctx.lineWidth = Math.max(1, r / 5);
  ctx.strokeStyle = "#222";
  ctx.stroke();
}

// Episode boundaries (dashed, labelled) and lifecycle marks, drawn over a chart's series.
function drawExtras(u) {
  const extras = u.esper ? u.esper.extras : null;
  if (!extras || !page.meta) return;
  const ctx = u.ctx;
  const px = uPlot.pxRatio;
  const { left, top, width, height } = u.bbox;
  ctx.save();
  ctx.beginPath();
  ctx.rect(left, top, width, height);
  ctx.clip();
  for (const b of extras.boundaries || []) {
    const x = Math.round(u.valToPos(b.x, "x", true));
    if (x >= left) {  // the first episode's start is left of the plot: only its label shows
      ctx.strokeStyle = "#90a4ae";
      ctx.lineWidth = px;
      ctx.setLineDash([4 * px, 3 * px]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.fillStyle = "#546e7a";
    ctx.font = `${11 * px}px sans-serif`;
    ctx.textAlign = "left";
    ctx.fillText(b.label, Math.max(x, left) + 3 * px, top + 12 * px);
  }
  for (const m of extras.marks || []) {
    if (!finite(m.x) || !finite(m.y)) continue;
    glyph(ctx, page.meta.mark_shapes[m.kind], u.valToPos(m.x, "x", true),
      u.valToPos(m.y, "y", true), MARK_PX * px, page.meta.mark_colours[m.kind]);
  }
  ctx.restore();
}

function chartOptions(spec, width) {
  const xValue = spec.xValue || ((v) => fmt(v));
  return {
    width,
    height: spec.height,
    scales: { x: { time: false } },
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
    series: [
      { label: spec.xLabel, value: (u, v) => (v === null || v === undefined ? "—" : xValue(v)) },
      ...spec.series.map((s) => ({
        label: s.label,
        stroke: s.stroke,
        width: s.width || 1.5,
        dash: s.dash,
        spanGaps: false,
        value: (u, v) => fmt(v, spec.digits),
      })),
    ],
    axes: [
      { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ccc" }, incrs: WHOLE_STEPS,
        splits: spec.xSplits, values: spec.xTicks || ((u, splits) => splits.map((v) => fmt(v))) },
      { stroke: "#555", grid: { stroke: "#eee" }, ticks: { stroke: "#ccc" }, size: 56,
        values: (u, splits) => splits.map((v) => fmt(v)) },
    ],
    bands: spec.bands || [],
    hooks: { draw: [drawExtras] },
  };
}

function fitChart(entry, container) {
  const width = Math.floor(container.clientWidth);
  if (width > 0 && width !== entry.width) {
    entry.width = width;
    entry.u.setSize({ width, height: entry.height });
  }
}

function dropChart(id) {
  const entry = page.charts.get(id);
  if (!entry) return;
  entry.observer.disconnect();
  entry.u.destroy();
  page.charts.delete(id);
}

// Draw `spec` in the element `id`: {series: [{label, stroke, dash, width}], data: [x, ...ys],
// height, xLabel, digits, xValue, xTicks, bands, marks: [{x, y, kind}], boundaries: [{x, label}],
// empty}. The uPlot chart is made again only when its series change; new data keeps a zoom.
function drawChart(id, spec) {
  const container = $(id);
  if (!spec.data[0].length) {
    dropChart(id);
    container.replaceChildren(el("div", { className: "placeholder",
      textContent: spec.empty || "no epochs yet" }));
    return;
  }
  const layout = JSON.stringify([spec.series.map((s) => [s.label, s.stroke, s.dash, s.width]),
    spec.bands || [], spec.xLabel, spec.height]);
  let entry = page.charts.get(id);
  if (entry && entry.layout === layout) {
    entry.extras = spec;
    const u = entry.u;
    const xs = u.data[0];
    const { min, max } = u.scales.x;
    const zoomed = xs.length > 0 && (min > xs[0] || max < xs[xs.length - 1]);
    u.setData(spec.data);
    if (zoomed) u.setScale("x", { min, max });
    return;
  }
  dropChart(id);
  container.replaceChildren();
  const width = Math.max(Math.floor(container.clientWidth), 50);
  entry = { layout, extras: spec, height: spec.height, width };
  const u = new uPlot(chartOptions(spec, width), spec.data, container);
  u.esper = entry;
  entry.u = u;
  entry.observer = new ResizeObserver(() => fitChart(entry, container));
  entry.observer.observe(container);
  page.charts.set(id, entry);
}

// Columns of several tables on one x: the union of their x values, and each column placed on it
// (undefined where a table has no row at that x: uPlot draws across it; null stays a gap).
function align(tables) {
  const xs = [...new Set(tables.flatMap((t) => t.x))].sort((a, b) => a - b);
  const place = (t, values) => {
    const at = new Map(t.x.map((x, i) => [x, values[i]]));
    return xs.map((x) => (at.has(x) ? at.get(x) : undefined));
  };
  return { xs, place };
}

// ---- the run's snapshot --------------------------------------------------------------------

function stat(label, value) {
  const node = el("div", { className: "stat" }, el("span", { className: "label",
    textContent: label }), " ", el("span", { className: "value", textContent: value }));
  node.dataset.label = label;
  return node;
}

function drawSummary(snap) {
  const box = $("summary");
  if (!snap) {
    box.replaceChildren(el("span", { className: "muted",
      textContent: page.name ? "waiting for the run's first snapshot…" : "no run picked" }));
    return;
  }
  const run = snap.run;
  const items = [["run", run.name], ["mode", fmt(run.mode)], ["task", fmt(run.task)],
    ["seed", fmt(run.seed)], ["status", fmt(run.status)], ["attempts", fmt(run.attempts)]];
  box.replaceChildren(...items.map(([l, v]) => stat(l, v)),
    ...snap.header.map((row) => stat(row.label, row.value)));
}

// The single-model run's one episode (env null), if any.
function onlyEpisode(snap) {
  const env = snap.envs.find((e) => e.env === null);
  return env && env.episodes.length ? env.episodes[env.episodes.length - 1] : null;
}

function marksOn(episode, column, x = (e) => e) {
  const at = new Map(episode.epochs.epoch.map((e, i) => [e, episode.epochs[column][i]]));
  return episode.marks.map((m) => ({ x: x(m.epoch), y: at.get(m.epoch), kind: m.kind }));
}

// A single-model run, and the compared run if there is one: accuracy, loss, parameters.
function drawEpochs(snap, other) {
  const runs = [[snap, onlyEpisode(snap)]];
  if (other && onlyEpisode(other)) runs.push([other, onlyEpisode(other)]);
  const shown = runs.filter(([, ep]) => ep);
  const tables = shown.map(([, ep]) => ({ x: ep.epochs.epoch, cols: ep.epochs }));
  const { xs, place } = align(tables);
  const ep = onlyEpisode(snap);
  const lines = (train, val, digits, withTrain = true) => {
    const series = [];
    const data = [xs];
    shown.forEach(([s], i) => {
      series.push({ label: `${s.run.name} val`, stroke: PALETTE[i] });
      data.push(place(tables[i], tables[i].cols[val]));
      if (withTrain) {
        series.push({ label: `${s.run.name} train`, stroke: PALETTE[i], dash: TRAINING_DASH });
        data.push(place(tables[i], tables[i].cols[train]));
      }
    });
    return { series, data, digits };
  };
  const base = { height: CHART_HEIGHT, xLabel: "epoch" };
  drawChart("chart-accuracy", { ...base, ...lines("train_accuracy", "val_accuracy", 2),
    marks: ep ? marksOn(ep, "val_accuracy") : [] });
  drawChart("chart-loss", { ...base, ...lines("train_loss", "val_loss", 4),
    marks: ep ? marksOn(ep, "val_loss") : [] });
  const params = lines(null, "param_count", 0, false);
  params.series.forEach((s, i) => { s.label = shown[i][0].run.name; });
  drawChart("chart-params", { ...base, ...params });
  $("accuracy-title").textContent = "Accuracy (%)";
  $("loss-title").textContent = "Loss";
  $("params-title").textContent = "Parameters";
}

// A PPO run by episode: each environment's kept episodes side by side, x = the host epoch
// counted from the first kept episode, boundaries between episodes.
function drawEpisodes(snap) {
  const envs = snap.envs.filter((e) => e.env !== null && e.episodes.length);
  const episodes = envs.flatMap((e) => e.episodes.map((ep) => ep.episode));
  const first = episodes.length ? Math.min(...episodes) : 0;
  const longest = Math.max(1, ...envs.flatMap((e) => e.episodes.flatMap((ep) => ep.epochs.epoch)));
  const length = snap.run.max_epochs || longest;
  const at = (episode) => (epoch) => (episode - first) * length + epoch;
  const tables = envs.map((e) => {
    const x = [];
    const cols = { train_accuracy: [], val_accuracy: [], train_loss: [], val_loss: [],
      param_count: [] };
    for (const ep of e.episodes) {
      x.push(...ep.epochs.epoch.map(at(ep.episode)));
      for (const key of Object.keys(cols)) cols[key].push(...ep.epochs[key]);
    }
    return { x, cols };
  });
  const { xs, place } = align(tables);
  const boundaries = [...new Set(episodes)].sort((a, b) => a - b)
    .map((n) => ({ x: at(n)(0.5), label: `episode ${n}` }));
  const epochOf = (v) => ((v - 1) % length + length) % length + 1;
  const episodeOf = (v) => first + Math.floor((v - 1) / length);
  const base = {
    height: CHART_HEIGHT,
    xLabel: "episode, epoch",
    boundaries,
    xValue: (v) => `${episodeOf(v)}, ${epochOf(v)}`,
    // Ticks at every epoch where there is room, else at each episode's first and last epoch.
    xSplits: (u, axis, min, max) => {
      const inside = xs.filter((v) => v >= min && v <= max);
      const room = u.bbox.width / uPlot.pxRatio / TICK_PX;
      return inside.length <= room ? inside
        : inside.filter((v) => epochOf(v) === 1 || epochOf(v) === length);
    },
    xTicks: (u, splits) => splits.map((v) => String(epochOf(v))),
    empty: "no episode yet",
  };
  const lines = (train, val, digits) => {
    const series = [];
    const data = [xs];
    envs.forEach((e, i) => {
      const colour = PALETTE[i % PALETTE.length];
      series.push({ label: `env ${e.env} val`, stroke: colour });
      data.push(place(tables[i], tables[i].cols[val]));
      if (train) {
        series.push({ label: `env ${e.env} train`, stroke: colour, dash: TRAINING_DASH });
        data.push(place(tables[i], tables[i].cols[train]));
      }
    });
    return { series, data, digits };
  };
  const marks = (column) => envs.flatMap((e) => e.episodes.flatMap((ep) => marksOn(ep, column,
    at(ep.episode))));
  drawChart("chart-accuracy", { ...base, ...lines("train_accuracy", "val_accuracy", 2),
    marks: marks("val_accuracy") });
  drawChart("chart-loss", { ...base, ...lines("train_loss", "val_loss", 4),
    marks: marks("val_loss") });
  const params = lines(null, "param_count", 0);
  params.series.forEach((s) => { s.label = s.label.replace(/ val$/, ""); });
  drawChart("chart-params", { ...base, ...params });
  $("accuracy-title").textContent = "Accuracy (%) by episode";
  $("loss-title").textContent = "Loss by episode";
  $("params-title").textContent = "Parameters by episode";
  drawResults(envs.length ? snap.envs.filter((e) => e.env !== null) : []);
}

// Every finished episode's return and final validation accuracy, per environment.
function drawResults(envs) {
  const tables = envs.map((e) => ({ x: e.results.map((r) => r.episode), rows: e.results }));
  const { xs, place } = align(tables);
  const chart = (field, digits) => ({
    height: SMALL_CHART_HEIGHT,
    xLabel: "episode",
    digits,
    empty: "no finished episode yet",
    series: envs.map((e, i) => ({ label: `env ${e.env}`, stroke: PALETTE[i % PALETTE.length] })),
    data: [xs, ...tables.map((t) => place(t, t.rows.map((r) => r[field])))],
  });
  drawChart("chart-episode-return", chart("episode_return", 3));
  drawChart("chart-episode-final", chart("final_val_accuracy", 2));
}

// A PPO run by round: the update's statistics (snapshot.rounds).
function drawRounds(snap) {
  const rounds = snap.rounds;
  const one = (id, label, column, digits) => drawChart(id, {
    height: SMALL_CHART_HEIGHT,
    xLabel: "round",
    digits,
    empty: "no PPO update yet",
    series: [{ label, stroke: PALETTE[0] }],
    data: [rounds.round, rounds[column]],
  });
  one("chart-return", "mean return", "mean_return", 3);
  one("chart-final", "mean final val accuracy", "mean_final_accuracy", 2);
  one("chart-entropy", "entropy", "entropy");
  one("chart-kl", "approx. KL", "approx_kl");
  one("chart-clip", "clip fraction", "clip_fraction", 3);
  one("chart-variance", "explained variance", "explained_variance", 3);
}

// Seed timeline: one row per slot (PPO: per environment and slot, its latest kept episode),
// coloured by stage, with the lifecycle marks, as the report draws it.
function timelineRows(snap) {
  const rows = [];
  for (const env of snap.envs) {
    const ep = env.episodes[env.episodes.length - 1];
    if (!ep) continue;
    for (const slot of snap.slots) {
      const where = env.env === null ? "" : `env ${env.env} ep ${ep.episode} · `;
      rows.push({ label: `${where}${slot}`, spans: ep.timeline[slot] || [],
        marks: ep.marks.filter((m) => m.slot === slot) });
    }
  }
  return rows;
}

function drawTimeline() {
  const canvas = $("timeline");
  const rows = page.timelineRows;
  const width = Math.floor(canvas.parentElement.clientWidth);
  const height = Math.max(1, rows.length) * TIMELINE_ROW + 24;
  const ratio = window.devicePixelRatio || 1;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#888";
  if (!rows.length || !page.meta) {
    ctx.textAlign = "center";
    ctx.fillText("no epochs yet", width / 2, height / 2);
    return;
  }
  const ends = rows.flatMap((r) => r.spans.map((s) => s.end));
  const limit = Math.max(1, page.snap.run.max_epochs || 0, ...ends);
  const left = Math.min(TIMELINE_LABELS, width / 3);
  const sx = (x) => left + (x / limit) * (width - left - 8);
  rows.forEach((row, i) => {
    const y = i * TIMELINE_ROW;
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.fillText(row.label, left - 6, y + TIMELINE_ROW - 5);
    for (const span of row.spans) {
      ctx.fillStyle = page.meta.stage_colours[span.stage];
      ctx.fillRect(sx(span.start), y + 2, Math.max(1, sx(span.end) - sx(span.start)),
        TIMELINE_ROW - 4);
    }
    for (const mark of row.marks) {
      const x = sx(mark.epoch);
      glyph(ctx, page.meta.mark_shapes[mark.kind], x, y + TIMELINE_ROW / 2, MARK_PX,
        page.meta.mark_colours[mark.kind]);
    }
  });
  ctx.fillStyle = "#555";
  ctx.textAlign = "center";
  const fits = Math.max(1, Math.floor((width - left) / 50));  // a tick label per 50 px
  const step = WHOLE_STEPS.find((s) => limit / s <= fits) || WHOLE_STEPS[WHOLE_STEPS.length - 1];
  for (let x = 0; x <= limit; x += step) {
    ctx.fillText(String(x), sx(x), rows.length * TIMELINE_ROW + 16);
  }
}

function drawSlots(snap) {
  const tbody = $("slots-table").tBodies[0];
  tbody.replaceChildren();
  for (const env of snap ? snap.envs : []) {
    for (const s of env.slots_now) {
      const cells = [fmt(env.env), s.slot, s.stage, fmt(s.blueprint), fmt(s.alpha, 2),
        fmt(s.contribution, 3), fmt(s.shapley, 3), fmt(s.seed_params)];
      const tr = el("tr", {}, ...cells.map((text, i) => el("td", { textContent: text,
        className: i === 2 ? "stage" : i >= 4 ? "num" : "" })));
      tr.children[2].style.borderLeftColor = page.meta.stage_colours[s.stage];
      tbody.append(tr);
    }
  }
  if (!tbody.children.length) {
    tbody.append(el("tr", {}, el("td", { className: "muted", colSpan: 8,
      textContent: "no epochs yet" })));
  }
}

function drawEvents(snap) {
  const counts = snap ? Object.entries(snap.events.counts) : [];
  $("event-types").replaceChildren(...counts.map(([name, count]) => el("span",
    { className: "chip", textContent: `${name} ${count}` })));
  const recent = snap ? [...snap.events.recent].reverse() : [];
  $("event-list").replaceChildren(...recent.map((e) => {
    const time = finite(e.t) ? new Date(e.t * 1000).toLocaleTimeString() : "—";
    const where = e.env === null ? "" : `env ${e.env}  `;
    return el("li", { textContent: `#${e.n}  ${time}  ${where}${e.event}  ${e.text}` });
  }));
}

function comparedSnapshot(snap) {
  const other = page.compare.snap;
  if (!other || other.run.name !== page.compare.name || other.run.name === snap.run.name) {
    return null;
  }
  return onlyEpisode(other) ? other : null;
}

// Why the run picked in "compare with" is not on the charts, if it is not.
function compareNote(snap) {
  const compare = page.compare;
  if (!compare.name || !snap) return "";
  if (compare.error) return `The compared run cannot be drawn: ${compare.error}`;
  if (!compare.snap) return "";
  if (snap.run.mode === "ppo" || !onlyEpisode(compare.snap)) {
    return `${compare.name} is not drawn: runs are compared on the epoch charts of ` +
      "single-model runs, not PPO runs.";
  }
  return "";
}

function drawRun() {
  page.drawQueued = false;
  const snap = page.snap;
  drawSummary(snap);
  const ppo = Boolean(snap && snap.run.mode === "ppo");
  const byRound = ppo && page.ppoView === "round";
  $("ppo-tabs").hidden = !ppo;
  for (const tab of $("ppo-tabs").children) {
    tab.setAttribute("aria-selected", String(tab.dataset.view === page.ppoView));
  }
  $("round-view").hidden = !byRound;
  $("epoch-view").hidden = byRound;
  $("chart-note").hidden = byRound;
  $("results-view").hidden = !ppo || byRound;
  if (!snap) {
    for (const id of [...page.charts.keys()]) if (!id.startsWith("band")) dropChart(id);
    for (const id of ["chart-accuracy", "chart-loss", "chart-params"]) {
      $(id).replaceChildren(el("div", { className: "placeholder", textContent: "no run picked" }));
    }
  } else if (byRound) {
    drawRounds(snap);
  } else if (ppo) {
    drawEpisodes(snap);
  } else {
    drawEpochs(snap, comparedSnapshot(snap));
  }
  $("compare-note").textContent = compareNote(snap);
  $("compare-note").hidden = !$("compare-note").textContent;
  page.timelineRows = snap ? timelineRows(snap) : [];
  $("timeline-title").textContent = ppo
    ? "Seed timeline (each environment's latest episode)" : "Seed timeline";
  drawTimeline();
  drawSlots(snap);
  drawEvents(snap);
}

function scheduleDraw() {
  if (!page.drawQueued) {
    page.drawQueued = true;
    requestAnimationFrame(drawRun);
  }
}

// ---- connection, pickers, study page -------------------------------------------------------

function setConnection(kind, text) {
  const badge = $("connection");
  badge.className = `connection ${kind}`;
  badge.textContent = text;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function connect(name) {
  if (page.source) page.source.close();
  page.source = null;
  page.name = name;
  page.snap = null;
  page.stopped = null;
  showError("");
  scheduleDraw();
  if (!name) {
    setConnection("idle", "idle");
    return;
  }
  const es = new EventSource(`api/runs/${encodeURIComponent(name)}/events`);
  page.source = es;
  setConnection("connecting", "connecting…");
  es.onopen = () => { if (es === page.source) setConnection("live", "live"); };
  es.onerror = () => {  // a browser retries a dropped stream, but not a refused one (e.g. 404)
    if (es !== page.source) return;
    if (es.readyState === EventSource.CLOSED) setConnection("down", "stream refused");
    else setConnection("down", "disconnected, retrying…");
  };
  es.addEventListener("snapshot", (e) => {
    if (es !== page.source) return;
    page.snap = JSON.parse(e.data);
    scheduleDraw();
  });
  es.addEventListener("stream-error", (e) => {  // the log has a bad line: stop following it
    es.close();
    if (es !== page.source) return;
    const failure = JSON.parse(e.data);
    showError(`This run's event log cannot be followed further: ${failure.message}`);
    setConnection("down", "stopped");
    if (failure.gone) page.stopped = name;  // removed or rewritten: another log may come
  });
}

async function fetchCompared() {
  const name = page.compare.name;
  if (!name) return;
  let snap = null;
  let error = "";
  try {
    const response = await fetch(`api/runs/${encodeURIComponent(name)}/snapshot`);
    if (response.ok) snap = await response.json();
    else error = (await response.text()).trim();
  } catch (err) {
    error = "the server cannot be reached";
  }
  if (name !== page.compare.name) return;
  page.compare.snap = snap;
  page.compare.error = error;
  scheduleDraw();
}

function runOption(run) {
  const option = el("option", { value: run.name });
  option.textContent = run.error ? `${run.name} (unreadable)`
    : `${run.name} — ${run.mode} · ${run.task} · seed ${run.seed} · ${run.status}`;
  option.disabled = run.error !== null;
  if (run.error) option.title = run.error;
  return option;
}

// The runs as options, a study's trials grouped under it.
function runOptions(runs) {
  const groups = new Map();
  const options = [];
  for (const run of runs) {
    if (run.study === null) options.push(runOption(run));
    else {
      if (!groups.has(run.study)) groups.set(run.study, el("optgroup", { label: `study ${run.study}` }));
      groups.get(run.study).append(runOption(run));
    }
  }
  return [...options, ...groups.values()];
}

async function refreshRuns() {
  let listing;
  let studies;
  try {
    const response = await fetch("api/runs");
    if (!response.ok) {  // 503: the runs directory was moved, removed or locked
      page.listError = (await response.text()).trim();
      showError(page.listError);
      setConnection("down", "runs directory unavailable");
      return;
    }
    listing = await response.json();
    studies = await (await fetch("api/studies")).json();
  } catch (err) {
    setConnection("down", "server unreachable");
    return;
  }
  page.runs = new Map(listing.runs.map((run) => [run.name, run]));
  page.newest = listing.newest;
  for (const [id, chosen] of [["run-picker", page.name], ["compare-picker", page.compare.name]]) {
    const picker = $(id);
    picker.replaceChildren(picker.options[0], ...runOptions(listing.runs));
    picker.value = page.runs.has(chosen) ? chosen : "";
  }
  const studyPicker = $("study-picker");
  studyPicker.replaceChildren(studyPicker.options[0],
    ...studies.studies.map((name) => el("option", { value: name, textContent: name })));
  studyPicker.value = studies.studies.includes(page.study.name) ? page.study.name : "";
  $("study-choice").hidden = !studies.studies.length;
  const back = Boolean(page.listError);  // the runs directory is back
  if (back && $("error").textContent === page.listError) showError("");
  page.listError = "";
  if (back || arrived()) {  // follow what the address names again
    if (page.source) page.source.close();
    page.source = null;
    route();
  }
}

// Whether the listing now holds a run the page should show and does not: the run the address
// names, or with none named the newest where the page shows none, having appeared after the
// page loaded (a dashboard started before the training stayed idle); or the run shown, its log
// removed or rewritten (its stream stopped), listed readable again.
function arrived() {
  if (addressed("study")) return false;
  const wanted = addressed("run");
  if (wanted ? wanted !== page.name && page.runs.has(wanted) : !page.name && page.newest) {
    return true;
  }
  const back = page.runs.get(page.stopped);
  return page.stopped === page.name && back !== undefined && back.error === null;
}

function bandChart(task, bands, arms) {
  const mine = bands.filter((b) => b.task === task);
  const { xs, place } = align(mine.map((b) => ({ x: b.epoch })));
  const series = [];
  const data = [xs];
  const fills = [];
  for (const b of mine) {
    const colour = PALETTE[arms.indexOf(b.arm) % PALETTE.length];
    const table = { x: b.epoch };
    series.push({ label: b.label, stroke: colour, width: 2 });  // the server's (fewer_note)
    series.push({ label: `${b.arm} Q3`, stroke: tint(colour, 0.5), width: 1 });
    series.push({ label: `${b.arm} Q1`, stroke: tint(colour, 0.5), width: 1 });
    data.push(place(table, b.median), place(table, b.q3), place(table, b.q1));
    fills.push({ series: [series.length - 1, series.length], fill: tint(colour, 0.15) });
  }
  return { height: CHART_HEIGHT, xLabel: "epoch", digits: 2, series, data, bands: fills,
    empty: "no trial has an epoch yet" };
}

function drawStudy() {
  const data = page.study.data;
  $("study-title").textContent = data ? `Study ${data.name}` : "Study";
  showError(data && data.error ? `This study's table cannot be computed: ${data.error}` : "");
  for (const node of document.querySelectorAll(".study-score")) {  // its file's score setting
    node.textContent = data && data.score ? data.score : "score";
  }
  $("study-notes").replaceChildren(...(data && data.notes ? data.notes : []).map((text) =>
    el("p", { className: "notice", textContent: text })));  // results so far, stale results
  drawFindings(data);
  const tbody = $("study-table").tBodies[0];
  tbody.replaceChildren();
  const rows = data ? data.rows : [];
  for (const row of rows) {
    const trial = `${row.task}.${row.arm}.`;  // esper.study names trials task.arm.seedN
    const links = el("td", {}, el("span", { className: "links" }, ...row.runs.map((run) => {
      const name = run.split("/").pop();
      return el("a", { href: `#run=${encodeURIComponent(run)}`, title: run,
        textContent: name.startsWith(trial) ? name.slice(trial.length) : name });
    })));
    // results.md's own cells (its rounding: toFixed would round an exact half up)
    tbody.append(el("tr", {}, ...row.cells.map((text, i) => el("td", { textContent: text,
      className: i >= 2 ? "num" : "" })), links));
    tbody.lastChild.children[3].classList.add("nowrap");
    tbody.lastChild.children[4].classList.add("nowrap");
  }
  if (!rows.length) {
    tbody.append(el("tr", {}, el("td", { className: "muted", colSpan: 8,
      textContent: !data ? "loading…" : data.pending ? "no invocation of this study has " +
        "ended yet: its table is written when one ends (its trials so far are in the run " +
        "picker)" : "no finished trial yet" })));
  }
  const bands = data ? data.bands : [];
  const arms = [...new Set(rows.map((r) => r.arm))].sort();
  const tasks = [...new Set(bands.map((b) => b.task))].sort();
  const box = $("study-bands");
  const ids = tasks.map((_, i) => `band-${i}`);
  for (const id of [...page.charts.keys()]) if (id.startsWith("band") && !ids.includes(id)) dropChart(id);
  while (box.children.length > tasks.length) box.lastChild.remove();
  tasks.forEach((task, i) => {
    if (!box.children[i]) {
      box.append(el("section", { className: "card" }, el("h2"), el("div",
        { className: "chart", id: ids[i] }), el("p", { className: "note",
        textContent: "validation accuracy (%) per epoch: each arm's median over its trials, " +
          "with the interquartile range shaded" })));
    }
    box.children[i].firstChild.textContent = `${task}: validation accuracy by arm`;
    drawChart(ids[i], bandChart(task, bands, arms));
  });
}

// What the study's results.md adds to the table, with its cells: the matched sizes, the
// probabilities of improvement and the verdicts (none where results.md's judging is unknown).
function drawFindings(data) {
  const box = $("study-findings");
  const tables = data && data.tables ? data.tables : [];
  const verdicts = data && data.verdicts ? data.verdicts : [];
  box.hidden = !tables.length && !verdicts.length;
  box.replaceChildren();
  const cell = (tag, from) => (text, i) => el(tag, { textContent: text,
    className: i >= from ? "num" : "" });
  for (const table of tables) {
    box.append(el("h2", { textContent: table.title }),
      el("p", { className: "note", textContent: table.sentence }));
    if (!table.rows.length) {
      box.append(el("p", { className: "muted", textContent: table.empty }));
      continue;
    }
    box.append(el("div", { className: "scroll" }, el("table", { className: "compact" },
      el("thead", {}, el("tr", {}, ...table.columns.map(cell("th", table.numbers_from)))),
      el("tbody", {}, ...table.rows.map((row) =>
        el("tr", {}, ...row.map(cell("td", table.numbers_from))))))));
  }
  if (verdicts.length) {
    box.append(el("h2", { textContent: "Verdicts" }),
      el("ul", {}, ...verdicts.map((text) => el("li", { textContent: text }))));
  }
}

async function fetchStudy() {
  const name = page.study.name;
  if (!name) return;
  let data;
  try {
    const response = await fetch(`api/studies/${encodeURIComponent(name)}`);
    data = response.ok ? await response.json()
      : { name, rows: [], bands: [], error: (await response.text()).trim() };
  } catch (err) {
    data = { name, rows: [], bands: [], error: "the server cannot be reached" };
  }
  if (name !== page.study.name) return;
  page.study.data = data;
  drawStudy();
}

// The NAME of an address #KEY=NAME, "" for another key or a NAME that is no percent-encoded
// text (#run=% threw a URIError and the page never started).
function addressed(key) {
  const prefix = `#${key}=`;
  if (!location.hash.startsWith(prefix)) return "";
  try {
    return decodeURIComponent(location.hash.slice(prefix.length));
  } catch (err) {
    return "";
  }
}

// The address says what is shown: #run=NAME, #study=NAME, or nothing (the newest run).
function route() {
  const study = addressed("study");
  $("study-view").hidden = !study;
  $("run-view").hidden = Boolean(study);
  $("study-picker").value = study;
  if (study) {
    if (page.source) page.source.close();
    page.source = null;
    page.name = "";
    $("run-picker").value = "";
    setConnection("idle", "study");
    if (study !== page.study.name) {
      page.study = { name: study, data: null };
      drawStudy();
    }
    fetchStudy();
    return;
  }
  page.study = { name: "", data: null };
  const wanted = addressed("run");
  const name = page.runs.has(wanted) ? wanted : page.newest || "";
  $("run-picker").value = name;
  if (name !== page.name || !page.source) connect(name);
  if (wanted && name !== wanted) {  // another run was shown without a word (a walk-through)
    const shown = name ? `showing the newest, ${name}` : "none to show";
    showError(`No run named ${JSON.stringify(wanted)} in ${page.meta.runs_dir} (yet): ` +
      `${shown}; the page switches to it when it appears.`);
  }
}

function legendChip(kind) {
  const canvas = el("canvas", { width: 14, height: 14 });
  glyph(canvas.getContext("2d"), page.meta.mark_shapes[kind], 7, 7.5, 5,
    page.meta.mark_colours[kind]);
  return el("span", { className: "chip" }, canvas, ` ${kind}`);
}

async function start() {
  page.meta = await (await fetch("api/meta")).json();
  $("runs-dir").textContent = page.meta.runs_dir;
  $("stage-legend").replaceChildren(...page.meta.stages.map((stage) => {
    const chip = el("span", { className: "chip stage", textContent: stage });
    chip.style.borderLeftColor = page.meta.stage_colours[stage];
    return chip;
  }), ...Object.keys(page.meta.mark_colours).map(legendChip));
  for (const box of document.querySelectorAll(".marks-legend")) {
    box.replaceChildren(...Object.keys(page.meta.mark_colours).map(legendChip));
  }
  await refreshRuns();
  $("run-picker").addEventListener("change", (e) => {
    location.hash = e.target.value ? `run=${encodeURIComponent(e.target.value)}` : "";
  });
  $("study-picker").addEventListener("change", (e) => {
    location.hash = e.target.value ? `study=${encodeURIComponent(e.target.value)}` : "";
  });
  $("compare-picker").addEventListener("change", (e) => {
    page.compare = { name: e.target.value, snap: null, error: "" };
    showError("");
    fetchCompared();
    scheduleDraw();
  });
  for (const tab of $("ppo-tabs").children) {
    tab.addEventListener("click", () => {
      page.ppoView = tab.dataset.view;
      scheduleDraw();
    });
  }
  $("refresh").addEventListener("click", refreshRuns);
  setInterval(refreshRuns, RUNS_REFRESH_MS);
  setInterval(fetchCompared, COMPARE_REFRESH_MS);
  setInterval(fetchStudy, STUDY_REFRESH_MS);
  new ResizeObserver(drawTimeline).observe($("timeline").parentElement);
  window.addEventListener("hashchange", route);
  route();
}

start().catch((err) => showError(`The dashboard could not start: ${err}`));
