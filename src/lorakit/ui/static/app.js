// lorakit ui: shared helpers, the dataset page (captions, uploads, folders), the queue and the trash.
"use strict";

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const res = await fetch(url, opts);
  const data = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
  if (!res.ok) throw new Error(data.error || `${res.status} ${res.statusText}`);
  return data;
}

function toast(text, kind = "", ms = 5000) {
  const box = document.getElementById("toast");
  const el = document.createElement("div");
  el.className = kind; el.textContent = text;
  box.appendChild(el);
  setTimeout(() => el.remove(), ms);
}

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function formData(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.type === "checkbox") out[el.name] = el.checked;
    else if (el.type === "number") out[el.name] = el.value === "" ? null : Number(el.value);
    else if (el.multiple) out[el.name] = [...el.selectedOptions].map((o) => o.value);
    else out[el.name] = el.value;
  }
  return out;
}

function modal(html) {
  const m = document.getElementById("modal");
  m.querySelector(".content").innerHTML = html;
  m.hidden = false;
}
document.addEventListener("click", (e) => {
  if (e.target.matches("[data-close]") || e.target.id === "modal") document.getElementById("modal").hidden = true;
});
document.addEventListener("keydown", (e) => { if (e.key === "Escape") document.getElementById("modal").hidden = true; });

async function showImage(path, title) {
  let info = "";
  try { info = (await api("GET", `/api/png-info?path=${encodeURIComponent(path)}`)).parameters; } catch (err) { info = ""; }
  modal(`<h3>${esc(title || path)}</h3><img src="/api/files?path=${encodeURIComponent(path)}">` +
        (info ? `<pre>${esc(info)}</pre>` : `<p class="muted">no A1111 infotext in this PNG</p>`));
}
document.addEventListener("click", (e) => {
  const img = e.target.closest("img[data-info]");
  if (img) { e.preventDefault(); showImage(img.dataset.info, img.title); }
});

// -- launch buttons (home, configs) -----------------------------------------------------------------
document.addEventListener("click", async (e) => {
  const b = e.target.closest("[data-launch]");
  if (!b) return;
  b.disabled = true;
  try {
    const r = await api("POST", `/api/configs/${encodeURIComponent(b.dataset.launch)}/launch`, {});
    location.href = `/jobs/${r.job}`;
  } catch (err) { toast(err.message, "error", 12000); b.disabled = false; }
});

// -- toggled panels ----------------------------------------------------------------------------------
document.addEventListener("click", (e) => {
  const b = e.target.closest("[data-open]");
  if (b) { const box = document.querySelector(b.dataset.open); box.hidden = !box.hidden; }
});

// -- datasets ------------------------------------------------------------------------------------------
const newDataset = document.getElementById("new-dataset");
if (newDataset) newDataset.addEventListener("submit", async (e) => {
  e.preventDefault();
  const d = formData(newDataset);
  try { await api("POST", "/api/datasets", d); location.href = `/datasets/${encodeURIComponent(d.name)}`; }
  catch (err) { toast(err.message, "error", 10000); }
});

function datasetUrl(name, tail) { return `/api/datasets/${encodeURIComponent(name)}/${tail}`; }

async function saveCaption(fig) {
  const grid = document.getElementById("thumbs");
  const ta = fig.querySelector("textarea.caption"), status = fig.querySelector(".status");
  if (ta.value === ta.dataset.saved) return;
  try {
    const r = await api("PUT", datasetUrl(grid.dataset.dataset, "caption"), { path: fig.dataset.path, text: ta.value, base: fig.dataset.version });
    fig.dataset.version = r.version; ta.dataset.saved = ta.value = r.text;
    ta.classList.remove("dirty"); ta.classList.add("saved");
    status.textContent = r.conflict ? "saved over a newer edit (undo restores it)" : r.message;
    status.classList.toggle("conflict", r.conflict);
    if (r.conflict) toast(`${fig.dataset.path}: ${r.message}`, "warn", 9000);
  } catch (err) { status.textContent = err.message; toast(err.message, "error"); }
}

const thumbs = document.getElementById("thumbs");
if (thumbs) {
  for (const ta of thumbs.querySelectorAll("textarea.caption")) ta.dataset.saved = ta.value;
  thumbs.addEventListener("input", (e) => { if (e.target.matches("textarea.caption")) { e.target.classList.add("dirty"); e.target.classList.remove("saved"); } });
  thumbs.addEventListener("focusout", (e) => { if (e.target.matches("textarea.caption")) saveCaption(e.target.closest("figure")); });
  thumbs.addEventListener("keydown", (e) => {
    if (e.target.matches("textarea.caption") && e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveCaption(e.target.closest("figure")); }
  });
  thumbs.addEventListener("click", async (e) => {
    const fig = e.target.closest("figure");
    if (!fig) return;
    const name = thumbs.dataset.dataset;
    if (e.target.matches("button.undo")) {
      try {
        const r = await api("POST", datasetUrl(name, "caption/undo"), { path: fig.dataset.path });
        const ta = fig.querySelector("textarea.caption");
        ta.value = ta.dataset.saved = r.text; fig.dataset.version = r.version;
        fig.querySelector(".status").textContent = "undone";
      } catch (err) { toast(err.message, "error"); }
    } else if (e.target.matches("button.trash")) {
      if (!confirm(`Move ${fig.dataset.path} and its caption to the trash?`)) return;
      try { await api("POST", datasetUrl(name, "trash"), { path: fig.dataset.path }); fig.remove(); toast("moved to the trash (restore it from Trash)"); }
      catch (err) { toast(err.message, "error"); }
    } else if (e.target.closest("a[data-full]")) {
      e.preventDefault();
      const a = e.target.closest("a[data-full]");
      modal(`<h3>${esc(fig.dataset.path)}</h3><img src="${a.href}"><pre>${esc(fig.querySelector("textarea").value)}</pre>`);
    }
  });
  window.addEventListener("beforeunload", (e) => { if (thumbs.querySelector("textarea.dirty")) { e.preventDefault(); e.returnValue = ""; } });
}

const upload = document.getElementById("upload");
if (upload) {
  const drop = upload.querySelector(".drop"), input = upload.querySelector("input[type=file]");
  let dropped = null;
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); dropped = e.dataTransfer.files; drop.firstChild.textContent = `${dropped.length} file(s) ready `; });
  upload.addEventListener("submit", async (e) => {
    e.preventDefault();
    const files = dropped || input.files, fd = new FormData();
    if (!files.length) { toast("choose or drop files first", "warn"); return; }
    for (const f of files) fd.append("files", f, f.name);
    const folder = upload.querySelector("select[name=folder]").value, report = document.getElementById("upload-report");
    report.textContent = `uploading ${files.length} file(s)…`;
    try {
      const r = await api("POST", `/api/upload/${encodeURIComponent(upload.dataset.dataset)}?folder=${encodeURIComponent(folder)}`, fd);
      report.innerHTML = `<p><b>${r.accepted.length}</b> of ${r.total} accepted, <b>${r.rejected.length}</b> refused.</p><ul class="upload-report">` +
        r.rejected.map((x) => `<li class="rejected"><code>${esc(x.name)}</code>: ${esc(x.reason)}</li>`).join("") + "</ul>" +
        `<a class="button" href="?folder=${encodeURIComponent(folder)}">Show the folder</a>`;
    } catch (err) { report.innerHTML = `<p class="error-box">${esc(err.message)}</p>`; }
  });
}

for (const form of document.querySelectorAll("form.rename-folder, #add-folder")) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const d = formData(form);
    if (form.dataset.folder) d.folder = form.dataset.folder;
    try { await api("POST", datasetUrl(form.dataset.dataset, "folders"), d); location.href = location.pathname; }
    catch (err) { toast(err.message, "error", 10000); }
  });
}

const captionJob = document.getElementById("caption-job");
if (captionJob) captionJob.addEventListener("submit", async (e) => {
  e.preventDefault();
  try { const r = await api("POST", datasetUrl(captionJob.dataset.dataset, "caption-job"), formData(captionJob)); location.href = `/jobs/${r.job}`; }
  catch (err) { toast(err.message, "error", 10000); }
});

// -- the queue -----------------------------------------------------------------------------------------
for (const td of document.querySelectorAll("td.time")) {
  if (td.dataset.t) td.textContent = new Date(Number(td.dataset.t) * 1000).toLocaleString();
}
document.addEventListener("click", async (e) => {
  const b = e.target.closest("tr[data-job] button[data-act]");
  if (!b) return;
  if (["kill", "cancel"].includes(b.dataset.act) && !confirm(`${b.dataset.act} job #${b.closest("tr").dataset.job}?`)) return;
  try { await api("POST", `/api/jobs/${b.closest("tr").dataset.job}/${b.dataset.act}`); location.reload(); }
  catch (err) { toast(err.message, "error", 10000); }
});

// -- the trash -----------------------------------------------------------------------------------------
document.addEventListener("click", async (e) => {
  const b = e.target.closest("button.restore");
  if (!b) return;
  try { const r = await api("POST", "/api/trash/restore", { entry: b.dataset.entry }); toast(`restored ${r.restored}`); b.closest("tr").remove(); }
  catch (err) { toast(err.message, "error", 10000); }
});

// -- new config --------------------------------------------------------------------------------------------
const newConfig = document.getElementById("new-config");
if (newConfig) newConfig.addEventListener("submit", async (e) => {
  e.preventDefault();
  const d = formData(newConfig), form = {};
  if (d.dataset) {
    form["data.train_data_dir"] = `datasets/${d.dataset}/img`;
    form["data.reg_data_dir"] = "";  // the dataset's own reg folders, if any, are added on its config page
  }
  try { await api("POST", "/api/configs", { name: d.name, preset: d.preset, form }); location.href = `/configs/${encodeURIComponent(d.name)}`; }
  catch (err) { toast(err.message, "error", 10000); }
});
