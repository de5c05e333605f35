// The live job page: server-sent events for state, progress, the loss chart, samples, saved files and the log.
"use strict";
const jobEl = document.getElementById("job");
const jobId = jobEl.dataset.id, run = jobEl.dataset.run, prompts = JSON.parse(jobEl.dataset.prompts || "[]");
let rows = [], state = "";

function fmtTime(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor(s % 3600 / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function setState(job) {
  state = job.state;
  const badge = document.getElementById("state");
  badge.textContent = job.state; badge.className = `state ${job.state}`;
  for (const b of jobEl.querySelectorAll("[data-when]")) b.hidden = !b.dataset.when.split(" ").includes(job.state);
  for (const pill of document.querySelectorAll(`header .pill[href="/jobs/${jobId}"]`)) {  // the header's running jobs
    if (["running", "stopping"].includes(job.state)) { pill.className = `pill ${job.state}`; pill.textContent = `${job.kind} · ${job.name} · ${job.state}`; }
    else pill.remove();
  }
  const err = document.getElementById("error");
  err.hidden = !job.error; err.textContent = job.error || "";
}

function ema(values, alpha) {
  let s = null;
  return values.map((v) => (s = s === null ? v : alpha * s + (1 - alpha) * v));
}

function drawChart() {
  const canvas = document.getElementById("loss-chart");
  if (!canvas) return;
  const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth || 720, h = Math.round(w * 0.36);
  canvas.width = w * dpr; canvas.height = h * dpr; canvas.style.height = `${h}px`;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr); g.clearRect(0, 0, w, h); g.font = "11px system-ui"; g.fillStyle = "#6b7385";
  const train = rows.filter((r) => typeof r.loss === "number" && isFinite(r.loss) && typeof r.lr === "number");
  if (!train.length) { g.fillText("the loss appears here after the first logged step", 20, h / 2); return; }
  const pad = { l: 52, r: 58, t: 12, b: 28 }, W = w - pad.l - pad.r, H = h - pad.t - pad.b;
  const steps = train.map((r) => r.step), loss = train.map((r) => r.loss);
  const smooth = ema(loss, Number(document.getElementById("smooth").value));
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  const sorted = [...loss].sort((a, b) => a - b), hi = sorted[Math.floor(0.98 * (sorted.length - 1))];
  const y0 = Math.min(...smooth, sorted[0]), y1 = Math.max(hi, ...smooth, y0 + 1e-9);
  const X = (s) => pad.l + (s - x0) / (x1 - x0) * W, Y = (v) => pad.t + (1 - (Math.min(v, y1) - y0) / (y1 - y0)) * H;
  g.strokeStyle = "#dde1e8"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4, y = Y(v);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + W, y); g.stroke();
    g.fillText(v.toPrecision(3), 6, y + 4);
  }
  for (let i = 0; i <= 5; i++) { const s = Math.round(x0 + (x1 - x0) * i / 5); g.fillText(String(s), X(s) - 8, h - 10); }
  g.fillText("step", pad.l + W / 2 - 10, h - 0);
  const line = (vals, color, width, dash = []) => {
    g.strokeStyle = color; g.lineWidth = width; g.setLineDash(dash); g.beginPath();
    vals.forEach((v, i) => (i ? g.lineTo(X(steps[i]), Y(v)) : g.moveTo(X(steps[i]), Y(v)))); g.stroke(); g.setLineDash([]);
  };
  line(loss, "rgba(43,93,214,0.25)", 1);
  line(smooth, "#2b5dd6", 2);
  const lrs = train.map((r) => r.lr).filter((v) => typeof v === "number");
  if (lrs.length === train.length && Math.max(...lrs) > 0) {
    const m = Math.max(...lrs);
    g.strokeStyle = "#b7791f"; g.setLineDash([4, 3]); g.lineWidth = 1.2; g.beginPath();
    train.forEach((r, i) => { const y = pad.t + (1 - r.lr / m) * H; i ? g.lineTo(X(r.step), y) : g.moveTo(X(r.step), y); });
    g.stroke(); g.setLineDash([]); g.fillStyle = "#b7791f"; g.fillText(`lr ${m.toExponential(1)}`, pad.l + W + 4, pad.t + 8);
  }
  g.fillStyle = "#2b5dd6"; g.fillText(`loss ${smooth[smooth.length - 1].toPrecision(4)}`, pad.l + W + 4, pad.t + 24);
  const evals = rows.filter((r) => Object.keys(r).some((k) => k.startsWith("eval_")));
  document.getElementById("evals").innerHTML = evals.length ? "<table class='list'><tr><th>step</th>" +
    Object.keys(evals[evals.length - 1]).filter((k) => k.startsWith("eval_")).map((k) => `<th>${esc(k)}</th>`).join("") + "</tr>" +
    evals.slice(-8).map((r) => `<tr><td>${r.step}</td>` + Object.keys(r).filter((k) => k.startsWith("eval_")).map((k) =>
      `<td>${typeof r[k] === "number" ? r[k].toPrecision(4) : esc(r[k])}</td>`).join("") + "</tr>").join("") + "</table>" : "";
}

function drawSamples(s) {
  const box = document.getElementById("samples");
  if (!box || !s.labels.length) return;
  const head = s.labels.map((l) => `<th>${l.startsWith("e") ? "epoch " + Number(l.slice(1)) : "step " + Number(l)}</th>`).join("");
  let html = `<table><tr><th></th>${head}</tr>`;
  for (let i = 0; i < s.prompts; i++) {
    html += `<tr><th title="${esc(prompts[i] || "")}">${esc((prompts[i] || `prompt ${i}`).slice(0, 40))}</th>` + s.labels.map((l) => {
      const f = (s.cells[l] || {})[i];
      const path = `runs/${run}/sample/${f}`;
      return f ? `<td><img src="/api/files?path=${encodeURIComponent(path)}&v=${l}" data-info="${esc(path)}" title="${esc(prompts[i] || "")} · ${l}"></td>` : "<td></td>";
    }).join("") + "</tr>";
  }
  box.innerHTML = html + "</table>";
}

function drawFiles(files) {
  const t = document.getElementById("files");
  if (!t) return;
  t.innerHTML = files.length ? files.map((f) => `<tr><td>${f.kind === "lora" ? `<a href="/api/files?path=${encodeURIComponent(`runs/${run}/${f.name}`)}">${esc(f.name)}</a>` : esc(f.name)}</td>` +
    `<td>${f.kind}</td><td>${f.bytes ? (f.bytes / 1048576).toFixed(2) + " MB" : ""}</td><td>${new Date(f.time * 1000).toLocaleTimeString()}</td></tr>`).join("")
    : "<tr><td class='muted'>nothing saved yet</td></tr>";
}

function onProgress(p) {
  if (!p) return;
  const bar = document.getElementById("bar"), stats = document.getElementById("stats");
  if ("total" in p && "step" in p && !("done" in p)) {
    bar.style.width = p.total ? `${100 * p.step / p.total}%` : "0";
    stats.textContent = `step ${p.step} / ${p.total || "?"} · ${p.steps_per_s ? p.steps_per_s.toFixed(2) + " steps/s" : "– steps/s"} · ETA ${fmtTime(p.eta_s)}` + (p.phase ? ` · ${p.phase}` : "");
  } else {  // captioning
    bar.style.width = p.total ? `${100 * p.done / p.total}%` : "100%";
    stats.textContent = `${p.done} / ${p.total} images captioned · ${p.skipped} skipped (had a caption) · ${p.state}`;
  }
}

const es = new EventSource(`/api/jobs/${jobId}/events`);
es.addEventListener("job", (e) => setState(JSON.parse(e.data)));
es.addEventListener("progress", (e) => onProgress(JSON.parse(e.data)));
es.addEventListener("metrics", (e) => { const m = JSON.parse(e.data); rows = m.reset ? m.rows : rows.concat(m.rows); drawChart(); });
es.addEventListener("samples", (e) => drawSamples(JSON.parse(e.data)));
es.addEventListener("files", (e) => drawFiles(JSON.parse(e.data)));
es.addEventListener("outputs", (e) => {
  document.getElementById("outputs").innerHTML = JSON.parse(e.data).map((p) =>
    `<figure class="thumb"><img src="/api/files?path=${encodeURIComponent(p)}" data-info="${esc(p)}"></figure>`).join("");
});
es.addEventListener("log", (e) => {
  const pre = document.getElementById("log"), atEnd = !pre.textContent || pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
  pre.textContent = JSON.parse(e.data).tail;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
});
es.addEventListener("end", () => { es.close(); if (state === "running") location.reload(); });
document.getElementById("smooth")?.addEventListener("input", drawChart);
window.addEventListener("resize", drawChart);

jobEl.addEventListener("click", async (e) => {
  const b = e.target.closest("button[data-act]");
  if (!b) return;
  if (b.dataset.act === "kill" && !confirm("Kill the process now? (Stop saves a checkpoint first; kill does not.)")) return;
  try {
    const job = await api("POST", `/api/jobs/${jobId}/${b.dataset.act}`);
    setState(job);
    toast({ sample: "samples are drawn at the next step", save: "a checkpoint is saved at the next step",
            stop: "stopping at the next step (a checkpoint is saved)" }[b.dataset.act] || `${b.dataset.act}: done`);
    if (["resume", "run-now"].includes(b.dataset.act)) setTimeout(() => location.reload(), 800);
  } catch (err) { toast(err.message, "error", 10000); }
});
