// The palette explorer's page: sliders in, /api/view out. One request in flight at a time; moves made meanwhile
// are coalesced into the next request (the latest position wins), and the server drops requests older than one
// it has seen (seq).
"use strict";

const $ = (sel) => document.querySelector(sel);
let info = null;
let state = {};          // value -> quantile in [0, 1], or null (kept at its mean)
let moved = null;        // the value moved last (for the dλ/dc column)
let seq = 0, inflight = false, pending = false, last = null;
const client = Math.random().toString(36).slice(2);  // this page, for the server's "latest wins"

function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (x !== 0 && Math.abs(x) < 10 ** -digits) return x.toExponential(1);
  return Number(x).toFixed(digits);
}

function escapeText(s) {
  const d = document.createElement("div");
  d.textContent = s;
  return d.innerHTML;
}

function levelAt(i, q) {  // the value's level at quantile q, linear between slider positions
  const g = info.grid_levels[i], x = q / info.step, lo = Math.floor(x), hi = Math.min(lo + 1, g.length - 1);
  return g[lo] + (g[hi] - g[lo]) * (x - lo);
}

function buildControls() {
  const box = $("#values");
  info.values.forEach((v, i) => {
    const div = document.createElement("div");
    div.className = "value";
    div.id = `value-${v}`;
    div.innerHTML = `
      <div class="row"><span class="name">${escapeText(v)}</span>
        <label><input type="checkbox" id="keep-${v}"> keep at its mean</label></div>
      <input type="range" id="slider-${v}" min="0" max="1" step="${info.step}" aria-label="${escapeText(v)} quantile">
      <div class="row"><label>quantile <input type="number" id="q-${v}" min="0" max="1" step="${info.step}"></label>
        <span id="level-${v}" class="muted"></span></div>`;
    box.appendChild(div);
    const slider = div.querySelector(`#slider-${CSS.escape(v)}`);
    const field = div.querySelector(`#q-${CSS.escape(v)}`);
    const keep = div.querySelector(`#keep-${CSS.escape(v)}`);
    slider.addEventListener("input", () => set(v, Number(slider.value)));
    field.addEventListener("change", () => {
      const q = Number(field.value);
      if (Number.isFinite(q) && q >= 0 && q <= 1) set(v, q);
      else showError(`${v}: a quantile is a number between 0 and 1`);
    });
    keep.addEventListener("change", () => set(v, keep.checked ? null : (last?.quantiles?.[v] ?? 0.7)));
  });
  const order = $("#priority");
  info.values.forEach((v) => {
    const li = document.createElement("li");
    li.textContent = v;
    li.draggable = true;
    li.dataset.value = v;
    li.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", v); });
    li.addEventListener("dragover", (e) => e.preventDefault());
    li.addEventListener("drop", (e) => {
      e.preventDefault();
      const from = [...order.children].find((x) => x.dataset.value === e.dataTransfer.getData("text/plain"));
      if (from && from !== li) order.insertBefore(from, li);
    });
    order.appendChild(li);
  });
}

function syncControls() {
  info.values.forEach((v, i) => {
    const q = state[v];
    const kept = q === null;
    $(`#value-${CSS.escape(v)}`).classList.toggle("kept", kept);
    $(`#keep-${CSS.escape(v)}`).checked = kept;
    const slider = $(`#slider-${CSS.escape(v)}`), field = $(`#q-${CSS.escape(v)}`);
    slider.disabled = field.disabled = kept;
    const shown = kept ? info.mean_quantile[i] : q;
    slider.value = shown;
    field.value = kept ? "" : Number(q).toFixed(2);
    $(`#level-${CSS.escape(v)}`).textContent = kept
      ? `kept at its mean ${fmt(info.mean[i])}`
      : `level ${fmt(Math.max(levelAt(i, q), info.mean[i]))} (mean ${fmt(info.mean[i])})`;
  });
}

function set(v, q) {
  state[v] = q;
  moved = q === null ? null : v;
  syncControls();
  request();
}

async function post(route, body) {
  const r = await fetch(route, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const out = await r.json();
  if (!r.ok) throw new Error(out.error || `${route}: HTTP ${r.status}`);
  return out;
}

async function request() {
  if (inflight) { pending = true; return; }
  inflight = true;
  pending = false;
  seq += 1;
  try {
    const out = await post("/api/view", { quantiles: state, moved, seq, client });
    if (!out.stale) render(out);
  } catch (e) {
    showError(e.message);
  } finally {
    inflight = false;
    if (pending) request();
  }
}

async function adjust(method) {
  const priority = [...$("#priority").children].map((li) => li.dataset.value);
  try {
    const out = await post("/api/adjust", { quantiles: state, method, priority });
    info.values.forEach((v) => { state[v] = out.quantiles[v]; });
    moved = null;
    syncControls();
    render(out);
  } catch (e) {
    showError(e.message);
  }
}

function showError(msg) {
  const el = $("#error");
  el.textContent = msg;
  el.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

function render(out) {
  last = out;
  $("#error").hidden = true;
  const badge = $("#feasible");
  badge.textContent = out.feasible ? "feasible" : "infeasible";
  badge.className = "badge " + (out.feasible ? "yes" : "no");
  badge.dataset.margin = out.margin;
  $("#summary").textContent = `LP margin ${out.margin_text} · ESS ${fmt(out.ess, 1)} of ${info.n} pilot samples · ` +
    `KL(p_λ ‖ p0) ${fmt(out.kl)} nats`;
  const warn = $("#warning");
  warn.hidden = !out.warning;
  warn.textContent = out.warning ? `Warning: ${out.warning}.` : "";
  const s = out.sensitivity;
  $("#sensitivity").textContent = !s ? "" : s.error ? `dλ/dc: ${s.error}` :
    `Raising ${s.value} by one slider step (${fmt(s.step_level)} in its reward) moves λ by ` +
    info.values.map((v, i) => `${fmt(s.d_lambda[i], 3)} (${v})`).join(", ") + ".";
  $("#infeasible").hidden = out.feasible;
  $("#certificate").textContent = out.certificate ? out.certificate.text : "";
  const body = $("#lambda-table tbody");
  body.innerHTML = "";
  info.values.forEach((v, i) => {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td>${escapeText(v)}</td><td class="num">${fmt(out.palette[i])}</td>` +
      `<td class="num">${fmt(out.realized[i])}</td><td class="num">${fmt(info.mean[i])}</td>` +
      `<td class="num" id="lambda-${escapeText(v)}" data-value="${out.lambda[i]}">${fmt(out.lambda[i], 4)}</td>`;
    body.appendChild(tr);
  });
  drawChart(out);
  $("#flag").value = out.flag ? `--config.palettes="${out.flag}"` : "(every value is kept at its mean)";
  if (out.raised_but_kept.length) {
    $("#flag").title = `add ${out.raised_but_kept.join(", ")} to --config.targeted`;
  }
  const json = { values: info.values, quantiles: out.quantiles, palette: out.palette, lambda: out.lambda,
    feasible: out.feasible, realized: out.realized, ess: out.ess, kl: out.kl };
  $("#export-json").href = "data:application/json," + encodeURIComponent(JSON.stringify(json, null, 1));
  const hash = "#q=" + info.values.map((v) => `${encodeURIComponent(v)}:${out.quantiles[v] === null ? "keep" : out.quantiles[v]}`).join(",");
  $("#permalink").href = hash;
  history.replaceState(null, "", hash);
  renderAnswers(out);
}

function drawChart(out) {
  const svg = $("#chart"), W = svg.clientWidth || 500, H = 190, m = info.values.length;
  const left = 110, right = 10, top = 8, rowH = (H - top - 20) / m;
  const x = (q) => left + q * (W - left - right);
  let s = "";
  [0, 0.25, 0.5, 0.75, 1].forEach((q) => {
    s += `<line x1="${x(q)}" x2="${x(q)}" y1="${top}" y2="${H - 18}" stroke="#e1e4e8"/>` +
      `<text x="${x(q)}" y="${H - 4}" font-size="11" text-anchor="middle" fill="#505a64">${q}</text>`;
  });
  info.values.forEach((v, i) => {
    const y = top + i * rowH;
    s += `<text x="${left - 6}" y="${y + rowH / 2 + 4}" font-size="12" text-anchor="end">${escapeText(v)}</text>` +
      `<rect x="${x(0)}" y="${y + rowH * 0.15}" width="${x(out.realized_quantile[i]) - x(0)}" height="${rowH * 0.35}" fill="#8fc1e8"/>` +
      `<rect x="${x(0)}" y="${y + rowH * 0.5}" width="${x(out.palette_quantile[i]) - x(0)}" height="${rowH * 0.35}" fill="#2c6fbb"/>` +
      `<line x1="${x(info.mean_quantile[i])}" x2="${x(info.mean_quantile[i])}" y1="${y + 2}" y2="${y + rowH - 2}" stroke="#333" stroke-dasharray="3,2" stroke-width="2"/>`;
  });
  svg.innerHTML = s;
}

function renderAnswers(out) {
  const body = $("#decoded tbody");
  body.innerHTML = "";
  if (!out.decoded) {
    body.innerHTML = `<tr><td colspan="3" class="muted">no test prompts with candidates in this table (run the MAP-D pipeline for them)</td></tr>`;
  } else {
    out.decoded.forEach((d) => {
      const tr = document.createElement("tr");
      tr.innerHTML = `<td>${escapeText(d.prompt)}</td><td>${escapeText(d.original)}</td>` +
        `<td>${escapeText(d.chosen)} <span class="muted">(${(100 * d.probability).toFixed(0)}%)</span></td>`;
      body.appendChild(tr);
    });
  }
  const top = $("#top-pilot");
  top.innerHTML = "";
  (out.top_pilot || []).forEach((r) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="muted">weight ×${fmt(r.weight, 1)} · ${escapeText(r.prompt)}</span><br>${escapeText(r.response)}`;
    top.appendChild(li);
  });
}

function fromHash() {
  const m = location.hash.match(/^#q=(.*)$/);
  if (!m) return null;
  const out = {};
  for (const part of m[1].split(",")) {
    const k = part.lastIndexOf(":");
    const v = decodeURIComponent(part.slice(0, k)), q = part.slice(k + 1);
    if (!info.values.includes(v)) continue;
    out[v] = q === "keep" ? null : Math.min(1, Math.max(0, Number(q)));
  }
  return out;
}

async function main() {
  const r = await fetch("/api/info");
  info = await r.json();
  $("#about").textContent += ` ${info.n} pilot samples, ${info.values.length} values.`;
  state = { ...info.start, ...(fromHash() || {}) };
  buildControls();
  syncControls();
  $("#adjust-interpolate").addEventListener("click", () => adjust("interpolate"));
  $("#adjust-greedy").addEventListener("click", () => adjust("greedy"));
  $("#copy-flag").addEventListener("click", () => navigator.clipboard?.writeText($("#flag").value));
  await request();
  document.body.dataset.ready = "1";
}

main().catch((e) => showError(e.message));
