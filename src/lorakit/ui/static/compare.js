// The compare page (epoch x strength grids) and the generate page: both start a job and follow it.
"use strict";

function follow(job, status, done) {
  const es = new EventSource(`/api/jobs/${job}/events`);
  es.addEventListener("job", (e) => { const j = JSON.parse(e.data); status.textContent = `job #${job}: ${j.state}`; if (j.error) toast(j.error, "error", 15000); });
  es.addEventListener("outputs", (e) => done && done(JSON.parse(e.data), false));
  es.addEventListener("log", (e) => { const last = JSON.parse(e.data).tail.split("\n").pop(); if (last) status.textContent = `job #${job}: ${last.slice(0, 120)}`; });
  es.addEventListener("end", (e) => { es.close(); done && done(null, JSON.parse(e.data).state); });
}

const gridForm = document.getElementById("grid-form");
if (gridForm) gridForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const d = formData(gridForm), status = document.getElementById("grid-status");
  const body = { ...d, strengths: d.strengths.split(",").map((v) => Number(v.trim())).filter((v) => !Number.isNaN(v)),
                 z_values: d.z_values ? d.z_values.split(",").map((v) => v.trim()).filter(Boolean) : [], cfg: Number(d.cfg) };
  try {
    const r = await api("POST", `/api/runs/${encodeURIComponent(gridForm.dataset.run)}/grid`, body);
    status.textContent = `job #${r.job} queued`;
    follow(r.job, status, (_, final) => { if (final) { toast(`grid ${final}`); setTimeout(() => location.reload(), 500); } });
  } catch (err) { toast(err.message, "error", 12000); }
});

const genForm = document.getElementById("generate-form");
if (genForm) {
  document.addEventListener("click", (e) => {
    const chip = e.target.closest("button[data-lora]");
    if (chip) { const p = genForm.prompt; p.value = `${p.value.trim()} <lora:${chip.dataset.lora}:0.8>`.trim(); p.focus(); }
  });
  genForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(genForm), status = document.getElementById("gen-status");
    d.cfg = Number(d.cfg);
    try {
      const r = await api("POST", "/api/generate", d);
      status.textContent = `job #${r.job} queued`;
      follow(r.job, status, (outputs, final) => {
        if (outputs) {
          const box = document.getElementById("gen-outputs");
          for (const p of outputs) {
            if (box.querySelector(`img[data-info="${CSS.escape(p)}"]`)) continue;
            box.insertAdjacentHTML("afterbegin", `<figure class="thumb"><img src="/api/files?path=${encodeURIComponent(p)}" data-info="${esc(p)}"></figure>`);
          }
        }
        if (final) toast(`generation ${final}`);
      });
    } catch (err) { toast(err.message, "error", 12000); }
  });
}
