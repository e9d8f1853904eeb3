// Esper dashboard: pick a run, follow its event log over Server-Sent Events, draw it.
// Hand-written, no dependencies. Charts are plain <canvas>; missing values show as "—".
"use strict";

// Event names read here (tests/test_dashboard.py checks each one is in esper.leyline.events).
const EV = { started: "RunStarted", epoch: "EpochCompleted", ppo: "PPOUpdate",
  finished: "RunFinished", ppoFinished: "PPORunFinished" };
const SERIES_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#17becf"];
const LAST_EVENTS = 15;        // rows in the "last events" list
const RUNS_REFRESH_MS = 5000;  // how often the run picker re-reads the runs directory
const RENDER_DELAY_MS = 150;   // records arriving together are drawn once
const TIMELINE_ROW = 18;       // px per slot row in the seed timeline
const NOT_SHOWN = new Set(["t", "run_id", "event", "env", "episode", "slots", "components"]);

const $ = (id) => document.getElementById(id);
const finite = (v) => typeof v === "number" && Number.isFinite(v);

let stageColour = {};  // stage name -> colour, from /api/meta
let runs = new Map();  // run name -> entry of /api/runs
let source = null;     // the EventSource of the selected run
let state = null;      // what the selected run's records say so far
let renderTimer = null;

// A value for people: missing (null, undefined, NaN) is "—", never 0.
function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number" || Number.isInteger(value) && digits === undefined) {
    return String(value);
  }
  return digits === undefined ? String(Number(value.toPrecision(4))) : value.toFixed(digits);
}

function freshState(name) {
  return { name, count: 0, types: {}, maxEpochs: null, series: new Map(), slots: new Map(),
    ppo: null, returns: [], last: [], latest: null, finished: null };
}

// ---- records -> state -------------------------------------------------------------------

function apply(rec) {
  state.count += 1;
  state.types[rec.event] = (state.types[rec.event] || 0) + 1;
  state.last.push(rec);
  if (state.last.length > LAST_EVENTS) state.last.shift();
  if (rec.event === EV.started) {
    state.maxEpochs = rec.max_epochs;
    if (finite(rec.resumed_from_epoch)) rewind(rec.mode, rec.resumed_from_epoch);
  } else if (rec.event === EV.epoch) addEpoch(rec);
  else if (rec.event === EV.ppo) {
    state.ppo = rec;
    state.returns.push([rec.round, rec.mean_return]);
  } else if (rec.event === EV.finished || rec.event === EV.ppoFinished) state.finished = rec.status;
}

// A resumed run starts again after its last checkpointed epoch (PPO: round): it is live again,
// and what the interrupted attempt logged after that point is run anew, so it is dropped.
function rewind(mode, saved) {
  state.finished = null;
  const limit = mode === "ppo" ? saved * state.maxEpochs : saved;
  for (const series of state.series.values()) {
    series.points = series.points.filter((p) => p.x <= limit);
    for (const [slot, segments] of series.timeline) {
      const kept = segments.filter((seg) => seg.from <= limit);
      for (const seg of kept) seg.to = Math.min(seg.to, limit);
      series.timeline.set(slot, kept);
    }
  }
  if (mode === "ppo") state.returns = state.returns.filter(([round]) => round <= saved);
}

// One series per environment (PPO) or one for the run. A PPO environment's epochs restart every
// episode, so its x is the host epoch counted across episodes: (episode - 1) * max_epochs + epoch.
function addEpoch(rec) {
  const key = rec.env === undefined || rec.env === null ? "run" : `env ${rec.env}`;
  if (!state.series.has(key)) state.series.set(key, { points: [], timeline: new Map() });
  const series = state.series.get(key);
  const x = finite(rec.episode) && finite(state.maxEpochs)
    ? (rec.episode - 1) * state.maxEpochs + rec.epoch : rec.epoch;
  series.points.push({ x, trainAcc: rec.train_accuracy, valAcc: rec.val_accuracy,
    trainLoss: rec.train_loss, valLoss: rec.val_loss });
  const slots = Array.isArray(rec.slots) ? rec.slots : [];
  for (const slot of slots) {  // the timeline keeps runs of equal stage: {from, to, stage}
    if (!series.timeline.has(slot.slot)) series.timeline.set(slot.slot, []);
    const segments = series.timeline.get(slot.slot);
    const last = segments[segments.length - 1];
    if (last && last.stage === slot.stage && last.to === x - 1) last.to = x;
    else segments.push({ from: x, to: x, stage: slot.stage });
  }
  state.slots.set(key, slots);
  state.latest = rec;
}

// ---- drawing ----------------------------------------------------------------------------

function canvasContext(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px sans-serif";
  return { ctx, width, height };
}

function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return lo === hi ? [lo - 0.5, hi + 0.5] : [lo, hi];
}

function placeholder(ctx, width, height, text) {
  ctx.fillStyle = "#888";
  ctx.textAlign = "center";
  ctx.fillText(text, width / 2, height / 2);
}

function axes(ctx, box, [x0, x1], [y0, y1], sx, sy) {
  ctx.strokeStyle = "#999";
  ctx.fillStyle = "#555";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(box.l, box.t);
  ctx.lineTo(box.l, box.b);
  ctx.lineTo(box.r, box.b);
  ctx.stroke();
  ctx.textAlign = "right";
  const step = niceStep((y1 - y0) / 4);
  for (let y = Math.ceil(y0 / step) * step; y <= y1; y += step) {
    ctx.fillText(fmt(Number(y.toPrecision(6))), box.l - 4, sy(y) + 4);
  }
  xTicks(ctx, box, [x0, x1], sx);
}

function xTicks(ctx, box, [x0, x1], sx) {
  ctx.fillStyle = "#555";
  ctx.textAlign = "center";
  const step = Math.max(1, niceStep((x1 - x0) / 8));
  for (let x = Math.ceil(x0 / step) * step; x <= x1; x += step) {
    ctx.fillText(String(x), sx(x), box.b + 14);
  }
}

// The tick spacing near `rough` that is 1, 2 or 5 times a power of ten.
function niceStep(rough) {
  const power = 10 ** Math.floor(Math.log10(rough));
  const m = rough / power;
  return power * (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10);
}

// lines: [{label, colour, dashed, points: [[x, y], ...]}]; a missing y breaks the line.
function lineChart(canvas, lines, emptyText) {
  const { ctx, width, height } = canvasContext(canvas);
  const shown = lines.flatMap((line) => line.points.filter(([x, y]) => finite(x) && finite(y)));
  if (!shown.length) return placeholder(ctx, width, height, emptyText);
  const xr = extent(shown.map((p) => p[0]));
  const yr = extent(shown.map((p) => p[1]));
  const box = { l: 48, r: width - 10, t: 8, b: height - 20 };
  const sx = (x) => box.l + ((x - xr[0]) / (xr[1] - xr[0])) * (box.r - box.l);
  const sy = (y) => box.b - ((y - yr[0]) / (yr[1] - yr[0])) * (box.b - box.t);
  axes(ctx, box, xr, yr, sx, sy);
  for (const line of lines) {
    ctx.strokeStyle = line.colour;
    ctx.fillStyle = line.colour;
    ctx.lineWidth = 1.5;
    ctx.setLineDash(line.dashed ? [5, 4] : []);
    ctx.beginPath();
    let pen = false;
    let last = null;
    for (const [x, y] of line.points) {
      if (!finite(x) || !finite(y)) { pen = false; continue; }
      if (pen) ctx.lineTo(sx(x), sy(y)); else ctx.moveTo(sx(x), sy(y));
      pen = true;
      last = [x, y];
    }
    ctx.stroke();
    if (last) ctx.fillRect(sx(last[0]) - 2, sy(last[1]) - 2, 4, 4);  // marks the latest value
  }
  ctx.setLineDash([]);
  const labels = [...new Map(lines.filter((l) => l.label).map((l) => [l.label, l.colour]))];
  ctx.textAlign = "left";
  labels.forEach(([label, colour], i) => {
    ctx.fillStyle = colour;
    ctx.fillText(label, box.r - 60, box.t + 10 + 13 * i);
  });
}

function metricLines(trainKey, valKey) {
  const lines = [];
  let i = 0;
  for (const [key, series] of state.series) {
    const colour = SERIES_PALETTE[i++ % SERIES_PALETTE.length];
    const label = state.series.size > 1 ? key : null;
    const points = (field) => series.points.map((p) => [p.x, p[field]]);
    lines.push({ label, colour, dashed: false, points: points(valKey) });
    lines.push({ label, colour, dashed: true, points: points(trainKey) });
  }
  return lines;
}

function drawTimeline(canvas) {
  const rows = [];
  for (const [key, series] of state.series) {
    for (const [slot, segments] of series.timeline) {
      rows.push({ label: state.series.size > 1 ? `${key} · ${slot}` : slot, segments });
    }
  }
  canvas.style.height = `${Math.max(1, rows.length) * TIMELINE_ROW + 26}px`;
  const { ctx, width, height } = canvasContext(canvas);
  if (!rows.length) return placeholder(ctx, width, height, "no epochs yet");
  const xs = rows.flatMap((row) => row.segments.flatMap((s) => [s.from - 0.5, s.to + 0.5]));
  const xr = extent(xs);
  const box = { l: 90, r: width - 10, t: 4, b: height - 20 };
  const sx = (x) => box.l + ((x - xr[0]) / (xr[1] - xr[0])) * (box.r - box.l);
  rows.forEach((row, i) => {
    const y = box.t + i * TIMELINE_ROW;
    ctx.fillStyle = "#333";
    ctx.textAlign = "right";
    ctx.fillText(row.label, box.l - 6, y + TIMELINE_ROW - 6);
    for (const s of row.segments) {
      ctx.fillStyle = stageColour[s.stage] || "#000";
      ctx.fillRect(sx(s.from - 0.5), y + 2, sx(s.to + 0.5) - sx(s.from - 0.5), TIMELINE_ROW - 4);
    }
  });
  xTicks(ctx, box, xr, sx);
}

// ---- tables and text --------------------------------------------------------------------

function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const [text, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
  return tr;
}

function renderSlots() {
  const tbody = $("slots-table").tBodies[0];
  tbody.replaceChildren();
  for (const [key, slots] of state.slots) {
    for (const s of slots) {
      const tr = row(tbody, [[key], [s.slot], [fmt(s.stage), "stage"], [fmt(s.blueprint)],
        [fmt(s.alpha, 2)], [fmt(s.contribution, 3)], [fmt(s.shapley, 3)], [fmt(s.seed_params)]]);
      tr.children[2].style.borderLeft = `10px solid ${stageColour[s.stage] || "#000"}`;
    }
  }
  if (!tbody.children.length) row(tbody, [["no epochs yet", "muted"]]);
}

function renderPPO() {
  const tbody = $("ppo-table").tBodies[0];
  tbody.replaceChildren();
  const run = runs.get(state.name);
  const ppoRun = run !== undefined && run.mode === "ppo";
  if (!state.ppo) row(tbody, [[ppoRun ? "no PPO update yet" : "not a PPO run", "muted"]]);
  else {
    for (const [key, value] of Object.entries(state.ppo)) {
      if (!NOT_SHOWN.has(key)) row(tbody, [[key, "label"], [fmt(value)]]);
    }
  }
  $("returns").hidden = !ppoRun;
  if (ppoRun) {
    lineChart($("return-chart"), [{ colour: SERIES_PALETTE[0], points: state.returns }],
      "no rounds yet");
  }
}

function summarize(rec) {
  const where = [];
  if (rec.env !== undefined && rec.env !== null) where.push(`env ${rec.env}`);
  const fields = Object.entries(rec).filter(([k, v]) => !NOT_SHOWN.has(k) && typeof v !== "object");
  return where.concat(fields.slice(0, 6).map(([k, v]) => `${k}=${fmt(v)}`)).join("  ");
}

function renderEvents() {
  const types = $("event-types");
  types.replaceChildren();
  for (const [name, count] of Object.entries(state.types)) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = `${name} ${count}`;
    types.appendChild(chip);
  }
  const list = $("event-list");
  list.replaceChildren();
  const first = state.count - state.last.length + 1;
  state.last.forEach((rec, i) => {
    const li = document.createElement("li");
    const time = finite(rec.t) ? new Date(rec.t * 1000).toLocaleTimeString() : "—";
    li.textContent = `#${first + i}  ${time}  ${rec.event}  ${summarize(rec)}`;
    list.prepend(li);
  });
}

function renderSummary() {
  const run = state ? runs.get(state.name) : undefined;
  const latest = state ? state.latest : null;
  $("run-mode").textContent = fmt(run && run.mode);
  $("run-task").textContent = fmt(run && run.task);
  $("run-seed").textContent = fmt(run && run.seed);
  $("run-status").textContent = fmt(state && state.finished ? state.finished : run && run.status);
  $("latest-epoch").textContent = fmt(latest && latest.epoch);
  $("latest-val-acc").textContent = fmt(latest && latest.val_accuracy, 2);
  $("latest-val-loss").textContent = fmt(latest && latest.val_loss, 4);
  $("latest-params").textContent = fmt(latest && latest.param_count);
  $("event-count").textContent = state ? String(state.count) : "—";
}

function render() {
  renderTimer = null;
  renderSummary();
  if (!state) return;
  lineChart($("accuracy-chart"), metricLines("trainAcc", "valAcc"), "no epochs yet");
  lineChart($("loss-chart"), metricLines("trainLoss", "valLoss"), "no epochs yet");
  drawTimeline($("timeline-chart"));
  renderSlots();
  renderPPO();
  renderEvents();
}

function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(render, RENDER_DELAY_MS);
}

// ---- connection and run picker ----------------------------------------------------------

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
  if (source) source.close();
  source = null;
  showError("");
  state = name ? freshState(name) : null;
  render();
  if (!name) return setConnection("idle", "idle");
  const es = new EventSource(`api/runs/${encodeURIComponent(name)}/events`);
  source = es;
  setConnection("connecting", "connecting…");
  es.onopen = () => { if (es === source) setConnection("live", "live"); };
  es.onerror = () => {  // a browser retries a dropped stream, but not a refused one (e.g. 404)
    if (es !== source) return;
    if (es.readyState === EventSource.CLOSED) setConnection("down", "stream refused");
    else setConnection("down", "disconnected, retrying…");
  };
  es.addEventListener("record", (e) => {
    if (es !== source) return;
    apply(JSON.parse(e.data));
    scheduleRender();
  });
  es.addEventListener("stream-error", (e) => {  // the log has a bad line: stop following it
    es.close();
    if (es !== source) return;
    showError(`This run's event log cannot be followed further: ${JSON.parse(e.data).message}`);
    setConnection("down", "stopped");
    scheduleRender();
  });
}

async function refreshRuns() {
  let listing;
  try {
    listing = await (await fetch("api/runs")).json();
  } catch (err) {
    setConnection("down", "server unreachable");
    return;
  }
  runs = new Map(listing.runs.map((run) => [run.name, run]));
  const picker = $("run-picker");
  const chosen = picker.value;
  const options = [picker.options[0]];
  for (const run of listing.runs) {
    const option = document.createElement("option");
    option.value = run.name;
    option.textContent = run.error ? `${run.name} (unreadable)`
      : `${run.name} — ${run.mode} · ${run.task} · seed ${run.seed} · ${run.status}`;
    option.disabled = run.error !== null;
    if (run.error) option.title = run.error;
    options.push(option);
  }
  picker.replaceChildren(...options);
  picker.value = runs.has(chosen) ? chosen : "";
  renderSummary();
}

async function start() {
  const meta = await (await fetch("api/meta")).json();
  stageColour = meta.stage_colours;  // the report's colours (esper.karn.colours)
  $("runs-dir").textContent = meta.runs_dir;
  const legend = $("stage-legend");
  for (const stage of meta.stages) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.style.borderLeft = `10px solid ${stageColour[stage]}`;
    chip.textContent = stage;
    legend.appendChild(chip);
  }
  await refreshRuns();
  const picker = $("run-picker");
  picker.addEventListener("change", () => {
    history.replaceState(null, "", picker.value ? `#run=${encodeURIComponent(picker.value)}` : "#");
    connect(picker.value);
  });
  $("refresh").addEventListener("click", refreshRuns);
  setInterval(refreshRuns, RUNS_REFRESH_MS);
  const fromHash = decodeURIComponent(location.hash.replace(/^#run=/, ""));
  if (location.hash.startsWith("#run=") && runs.has(fromHash)) {
    picker.value = fromHash;
    connect(fromHash);
  }
  window.addEventListener("resize", scheduleRender);
  window.addEventListener("hashchange", () => {
    const name = decodeURIComponent(location.hash.replace(/^#run=/, ""));
    if (runs.has(name) && name !== picker.value) {
      picker.value = name;
      connect(name);
    }
  });
}

start().catch((err) => showError(`The dashboard could not start: ${err}`));
