// The config page: form <-> YAML tabs, validate (problems next to their fields), save, save and train.
"use strict";
const bar = document.getElementById("config-bar"), form = document.getElementById("form"), yaml = document.getElementById("yaml");
const name = bar.dataset.name;
let tab = form ? "form" : "yaml";

function formValues() {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    out[el.name] = el.type === "checkbox" ? (el.checked ? "true" : "false") : el.value;
  }
  return out;
}
function body() { return tab === "form" ? { form: formValues(), base: bar.dataset.version } : { text: yaml.value, base: bar.dataset.version }; }

for (const b of document.querySelectorAll("button.tab")) {
  b.addEventListener("click", async () => {
    if (b.dataset.tab === tab) return;
    if (b.dataset.tab === "yaml" && form) {  // show the form's edits as the YAML they become
      try { const r = await api("PUT", `/api/configs/${encodeURIComponent(name)}`, body()); bar.dataset.version = r.version; yaml.value = r.text; }
      catch (err) { toast(err.message, "error", 10000); return; }
    } else if (b.dataset.tab === "form") {
      try { const r = await api("PUT", `/api/configs/${encodeURIComponent(name)}`, body()); bar.dataset.version = r.version; location.reload(); return; }
      catch (err) { toast(err.message, "error", 10000); return; }
    }
    tab = b.dataset.tab;
    for (const t of document.querySelectorAll("button.tab")) t.classList.toggle("on", t.dataset.tab === tab);
    for (const p of document.querySelectorAll(".tabpane")) p.hidden = p.dataset.tab !== tab;
  });
}

function showProblems(r) {
  const box = document.getElementById("problems"), report = document.getElementById("report");
  for (const f of document.querySelectorAll(".field")) { f.classList.remove("bad"); f.querySelector(".problem").textContent = ""; }
  const general = [];
  for (const [key, list] of Object.entries(r.fields || {})) {
    const field = key && document.querySelector(`.field[data-key="${key}"]`);
    if (field) {
      field.classList.add("bad"); field.querySelector(".problem").textContent = list.join("\n");
      const det = field.closest("details"); if (det) det.open = true;
    } else general.push(...list);
  }
  box.hidden = !r.problems.length;
  box.textContent = r.problems.length ? `${r.problems.length} problem(s)` + (general.length ? ":\n- " + general.join("\n- ") : " (shown next to their fields)") : "";
  report.hidden = !r.report;
  report.textContent = r.report || "";
  if (!r.problems.length) toast(`valid (task ${r.task})`);
  const first = document.querySelector(".field.bad");
  if (first) first.scrollIntoView({ block: "center" });
}

document.getElementById("validate").addEventListener("click", async () => {
  try { showProblems(await api("POST", `/api/configs/${encodeURIComponent(name)}/validate`, body())); }
  catch (err) { toast(err.message, "error", 10000); }
});

async function save() {
  const r = await api("PUT", `/api/configs/${encodeURIComponent(name)}`, body());
  bar.dataset.version = r.version;
  yaml.value = r.text;
  for (const f of document.querySelectorAll(".field")) f.classList.remove("bad");
  return r;
}
document.getElementById("save").addEventListener("click", async () => {
  try { await save(); toast("saved"); } catch (err) { toast(err.message, "error", 10000); }
});
document.getElementById("launch").addEventListener("click", async (e) => {
  e.target.disabled = true;
  try {
    await save();
    const r = await api("POST", `/api/configs/${encodeURIComponent(name)}/launch`, { run: document.getElementById("run-name").value });
    location.href = `/jobs/${r.job}`;
  } catch (err) {
    e.target.disabled = false;
    toast(err.message, "error", 15000);
    try { showProblems(await api("POST", `/api/configs/${encodeURIComponent(name)}/validate`, {})); } catch (_) { /* shown above */ }
  }
});

document.getElementById("save-prompts")?.addEventListener("click", async () => {
  try { const r = await api("PUT", `/api/configs/${encodeURIComponent(name)}/prompts`, { text: document.getElementById("prompts").value }); toast(`saved ${r.saved}`); }
  catch (err) { toast(err.message, "error", 10000); }
});
