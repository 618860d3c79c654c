// The dashboard page: the snapshot, then the server-sent events folded into it.
"use strict";
const MAX_POINTS = 600;          // points drawn per trace: longer sessions are downsampled
const token = new URLSearchParams(location.search).get("token") || "";
let snap = null;
let pending = false;

function el(id) { return document.getElementById(id); }
// Names, ids and warnings come from peers and rigs (untrusted): escaped wherever HTML is built.
function esc(x) {
  return String(x).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fmt(x) { return x === null || x === undefined ? "–" : (Math.abs(x) >= 100 ? x.toFixed(0) : x.toFixed(2)); }

function stride(list) {
  if (list.length <= MAX_POINTS) return list;
  const step = list.length / MAX_POINTS, out = [];
  for (let i = 0; i < MAX_POINTS; i++) out.push(list[Math.floor(i * step)]);
  out.push(list[list.length - 1]);
  return out;
}

// The clone pattern (as xdream/status_client.py): listen first, then take the snapshot, then
// fold the events newer than it.  Events that arrive while a snapshot is on its way wait in
// `held`; those the snapshot already holds (seq not larger) are not folded twice.  One
// snapshot at a time: a load asked for meanwhile takes another after it, keeping `held`.
let held = null, loading = false, again = false;

async function load() {
  held = held || [];
  if (loading) { again = true; return; }
  loading = true;
  let fresh = null;
  try { fresh = await (await fetch("/api/snapshot")).json(); } catch (err) { fresh = null; }
  loading = false;
  if (fresh === null || again) {   // the dashboard unreachable for a moment, or a newer load asked
    again = false;
    setTimeout(load, fresh === null ? 1000 : 0);
    return;
  }
  const waiting = held;
  held = null;
  snap = fresh;
  for (const e of waiting) fold(e);
  draw();
}

function fold(e) {
  if (held) { held.push(e); return; }
  if (!snap || (e.seq || 0) <= snap.seq) return;
  snap.seq = Math.max(snap.seq, e.seq || 0);
  if (e.kind === "session") snap.session = e;
  else if (e.kind === "generation") {
    const summary = {generation: e.generation, t: e.t, timing: e.timing, channels: e.channels,
      threads: e.threads.map(t => { const c = Object.assign({}, t); delete c.images; delete c.best_image;
                                    delete c.scores; delete c.ids; delete c.psth; return c; })};
    snap.generations = snap.generations.filter(g => g.generation !== e.generation).concat([summary]);
    for (const t of e.threads) {
      snap.latest[t.thread] = {generation: e.generation, ids: t.ids, scores: t.scores, images: t.images};
      if (t.psth) {   // as xdream/status_state.py: the first and the latest PSTH per thread
        const got = Object.assign({generation: e.generation}, t.psth), had = (snap.psth = snap.psth || {})[t.thread];
        snap.psth[t.thread] = {first: had ? had.first : got, latest: got};
      }
      if (t.best_image) snap.best[t.thread] = {generation: e.generation, score: t.best_score, image: t.best_image};
    }
  } else if (e.kind === "presentation") {
    const rig = snap.rig;
    if (e.late) rig.late += 1;
    else if (rig[e.fate] !== undefined) rig[e.fate] += 1;
    if (!e.late && (e.fate === "shown" || e.fate === "aborted")) rig.dropped_frames += e.dropped || 0;
  } else if (e.kind === "block") snap.rig.blocks += 1;
  else if (e.kind === "peers") snap.peers = e.peers;
  else if (e.kind === "control") { snap.state = e.state; snap.control = e; }
  else if (e.kind === "warning") snap.warnings = snap.warnings.concat([{t: e.t, text: e.text}]).slice(-50);
  else if (e.kind === "end") { snap.ended = e.reason; snap.state = "ended"; }
  schedule();
}

function schedule() {      // at most a few redraws a second, whatever the event rate
  if (pending) return;
  pending = true;
  setTimeout(() => { pending = false; draw(); }, 200);
}

function threads() { return snap.session ? snap.session.threads.map(t => t.name) : Object.keys(snap.latest); }

function draw() {
  const s = snap.session || {};
  el("session").textContent = s.session || "";
  el("state").textContent = snap.state;
  el("state").className = snap.state;
  const gens = snap.generations;
  el("progress").textContent = `${gens.length ? gens[gens.length - 1].generation + 1 : 0}` +
    (s.generations ? ` of ${s.generations}` : "") + " generations done" + (snap.ended ? ` — ended: ${snap.ended}` : "");
  el("controls").style.display = snap.controls && !snap.ended ? "" : "none";
  drawTrajectory(); drawRefs(); drawChannels(); drawPsth(); drawImages(); drawRig();
}

const layout = (ytitle) => ({margin: {l: 50, r: 10, t: 10, b: 35}, xaxis: {title: {text: "generation"}},
  yaxis: {title: {text: ytitle}}, legend: {orientation: "h", y: -0.25}, uirevision: "keep"});

function drawTrajectory() {
  const traces = [];
  const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  threads().forEach((name, i) => {
    const pts = stride(snap.generations.map(g => [g.generation, g.threads.find(t => t.thread === name)])
                                       .filter(p => p[1]));
    const x = pts.map(p => p[0]), c = colors[i % colors.length];
    traces.push({x, y: pts.map(p => p[1].mean), name: `${name} mean`, mode: "lines+markers", line: {color: c}});
    traces.push({x, y: pts.map(p => p[1].max), name: `${name} max`, mode: "lines", line: {color: c, dash: "dot"}});
    traces.push({x, y: pts.map(p => p[1].ref_mean), name: `${name} reference`, mode: "lines", line: {color: c, dash: "dash", width: 1}});
  });
  Plotly.react("trajectory", traces, layout("score (spikes)"), {displayModeBar: false});
  el("trajectory").dataset.points = String(snap.generations.length);
}

function drawRefs() {
  const first = threads()[0], series = {};
  for (const g of stride(snap.generations)) {
    const t = g.threads.find(t => t.thread === first);
    if (!t || !t.refs) continue;
    for (const [ref, v] of Object.entries(t.refs)) (series[ref] = series[ref] || {x: [], y: []}).x.push(g.generation), series[ref].y.push(v);
  }
  const traces = Object.entries(series).map(([ref, d]) => ({x: d.x, y: d.y, name: ref.replace(/^ref\//, ""), mode: "lines+markers"}));
  Plotly.react("refs", traces, layout(`response, channel of thread ${first || ""}`), {displayModeBar: false});
}

function drawChannels() {
  const g = snap.generations[snap.generations.length - 1];
  const ch = g && g.channels ? g.channels : [];
  Plotly.react("channels", [{x: ch.map((_, i) => i), y: ch, type: "bar"}],
    Object.assign(layout("mean count"), {xaxis: {title: {text: "channel"}, dtick: 1}}), {displayModeBar: false});
}

function drawPsth() {      // hidden until a generation brings spike times
  const psth = snap.psth || {}, names = threads().filter(n => psth[n]);
  el("psth-panel").style.display = names.length ? "" : "none";
  if (!names.length) return;
  const traces = [], colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
  const centres = (p) => Array.from({length: Math.max(p.images.length, p.refs.length)},
                                    (_, i) => p.start_ms + (i + 0.5) * p.bin_ms);
  names.forEach((name, i) => {
    const {first, latest} = psth[name], c = colors[i % colors.length], x = centres(latest);
    traces.push({x, y: latest.images, name: `${name} gen ${latest.generation} (${latest.n_images})`, mode: "lines", line: {color: c, shape: "hvh"}});
    if (latest.refs.length) traces.push({x, y: latest.refs, name: `${name} references (${latest.n_refs})`, mode: "lines", line: {color: c, dash: "dash", width: 1, shape: "hvh"}});
    if (first.generation !== latest.generation) traces.push({x: centres(first), y: first.images, name: `${name} gen ${first.generation}`, mode: "lines", line: {color: c, dash: "dot", width: 1, shape: "hvh"}});
  });
  const ch = names.map(n => `${n}: ch ${psth[n].latest.channel}`).join(", ");
  Plotly.react("psth", traces, Object.assign(layout(`spikes/s (${ch})`), {xaxis: {title: {text: "ms from onset"}}, legend: {orientation: "h", y: -0.35},
    shapes: [{type: "line", x0: 0, x1: 0, yref: "paper", y0: 0, y1: 1, line: {color: "#888", width: 1}}]}), {displayModeBar: false});
  el("psth").dataset.bins = String(psth[names[0]].latest.images.length);
}

function drawImages() {
  const latest = el("latest");
  latest.innerHTML = "";
  for (const name of threads()) {
    const l = snap.latest[name];
    if (!l) continue;
    const h = document.createElement("div");
    h.innerHTML = `<b>${esc(name)}</b> — generation ${esc(l.generation)}`;
    latest.appendChild(h);
    // a finished session's grid is made again from the codes (server/latest.py); its note says
    // why it is empty or partial.  Text, not HTML: it may hold a path or an exception's words.
    const why = l.note || (l.images.length ? "" : "scores only: a finished session keeps codes, not each image");
    if (why) {
      const n = document.createElement("div");
      n.className = "grid-note";
      n.textContent = why;
      latest.appendChild(n);
    }
    const grid = document.createElement("div");
    grid.className = "grid";
    const order = l.scores.map((s, i) => [s === null ? -Infinity : s, i]).sort((a, b) => (b[0] - a[0]) || (a[1] - b[1]));   // unscored last, in order
    for (const [, i] of order) {
      const cell = document.createElement("div");
      cell.className = "cell";
      cell.innerHTML = (l.images[i] ? `<img class="gen-image" src="${esc(l.images[i])}" alt="${esc(l.ids[i])}">` : "") +
        `${fmt(l.scores[i])}`;
      grid.appendChild(cell);
    }
    latest.appendChild(grid);
  }
  const best = el("best");
  best.innerHTML = "";
  for (const name of threads()) {
    const b = snap.best[name];
    if (!b) continue;
    const cell = document.createElement("div");
    cell.className = "cell best";
    cell.innerHTML = `<img class="best-image" src="${esc(b.image)}" alt="best of ${esc(name)}">${esc(name)}: ${fmt(b.score)} (gen ${esc(b.generation)})`;
    best.appendChild(cell);
  }
}

function rows(table, pairs) {
  el(table).innerHTML = pairs.map(([k, v]) => `<tr><th>${esc(k)}</th><td>${esc(v)}</td></tr>`).join("");
}

function drawRig() {
  const r = snap.rig;
  const rate = snap.live ? ["presentations/s (last 30 s)", fmt(r.presentations_per_s)]
                         : ["presentations/s (whole session)", fmt(r.session_presentations_per_s)];
  rows("rig", [rate, ["blocks sent", r.blocks],
    ["shown", r.shown], ["aborted", r.aborted], ["counted", r.counted], ["missing", r.missing],
    ["dropped frames", r.dropped_frames], ["late reports", r.late]]);
  el("peers").innerHTML = (snap.peers || []).map(p =>
    `<tr><td>${esc(p.role)}</td><td>${esc(p.name)}</td><td>heard ${fmt(p.last_seen_s)} s ago</td><td>joins ${esc(p.joins)}</td></tr>`).join("");
  const g = snap.generations[snap.generations.length - 1];
  rows("timing", Object.entries(g && g.timing ? g.timing : {}).map(([k, v]) => [k, fmt(v)]));
  el("warnings").innerHTML = (snap.warnings || []).slice(-10).map(w => `<div>${esc(w.text)}</div>`).join("");
}

async function control(op) {
  const r = await fetch(`/api/control/${op}`, {method: "POST", headers: {"X-Xdream-Token": token}});
  const reply = await r.json();
  if (!reply.ok) alert(`${op}: ${reply.error}`);
}

for (const op of ["pause", "resume", "stop"]) el(op).addEventListener("click", () => control(op));
setInterval(async () => { if (snap && snap.live && !snap.ended) { const r = await fetch("/api/snapshot");
  const s = await r.json(); snap.rig.presentations_per_s = s.rig.presentations_per_s; } }, 5000);
// "hello" comes once the server counts this page among its listeners (and again after a
// reconnection, which may have missed events): only then is a snapshot complete with what follows.
const events = new EventSource("/api/events");
events.addEventListener("hello", () => load());
events.onmessage = (m) => { const e = JSON.parse(m.data); if (e.kind === "resync") load(); else fold(e); };
events.addEventListener("resync", () => load());
