// The tag page: the tag table, previewed bulk changes (rename, delete, add, trigger word, regex), long captions.
"use strict";
const table = document.getElementById("tag-table"), dataset = table.dataset.dataset;
const preview = document.getElementById("preview");
let pending = null, allTags = [];

function drawTags() {
  const q = document.getElementById("tag-filter").value.trim().toLowerCase();
  const rows = allTags.filter((t) => !q || t.tag.toLowerCase().includes(q)).slice(0, 1000);
  table.innerHTML = "<tr><th>tag</th><th>captions</th><th></th></tr>" + rows.map((t) =>
    `<tr><td><code>${esc(t.tag)}</code></td><td>${t.count}</td><td><button class="small" data-use="${esc(t.tag)}">use</button></td></tr>`).join("");
  document.getElementById("tag-count").textContent = `${allTags.length} tags`;
}
async function loadTags() {
  allTags = (await api("GET", `/api/datasets/${encodeURIComponent(dataset)}/tags`)).tags;
  drawTags();
}
document.getElementById("tag-filter").addEventListener("input", drawTags);
table.addEventListener("click", (e) => {
  const b = e.target.closest("button[data-use]");
  if (b) for (const inp of document.querySelectorAll("form.tag-op input[name=tag]")) inp.value = b.dataset.use;
});

for (const form of document.querySelectorAll("form.tag-op")) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const op = { op: form.dataset.op, ...formData(form) };
    try {
      const r = await api("POST", `/api/datasets/${encodeURIComponent(dataset)}/tags/preview`, op);
      pending = { ...op, digest: r.digest };
      preview.hidden = false;
      preview.querySelector(".what").textContent = r.what;
      preview.querySelector(".count").textContent = `${r.count} caption file(s) change` + (r.count > r.changes.length ? ` (first ${r.changes.length} listed)` : "");
      preview.querySelector(".note").textContent = r.note || "";
      preview.querySelector("tbody").innerHTML = r.changes.map((c) =>
        `<tr><td>${esc(c.path)}</td><td>${esc(c.before)}</td><td>${esc(c.after)}</td></tr>`).join("") ||
        `<tr><td colspan="3" class="muted">no caption changes</td></tr>`;
      document.getElementById("apply").disabled = !r.count;
      preview.scrollIntoView({ behavior: "smooth" });
    } catch (err) { toast(err.message, "error", 10000); }
  });
}
document.getElementById("apply").addEventListener("click", async () => {
  try {
    const r = await api("POST", `/api/datasets/${encodeURIComponent(dataset)}/tags/apply`, pending);
    toast(`${r.changed} caption(s) changed: ${r.what}`);
    preview.hidden = true; pending = null;
    setTimeout(() => location.reload(), 600);
  } catch (err) { toast(err.message, "error", 10000); }
});
document.getElementById("cancel-preview").addEventListener("click", () => { preview.hidden = true; pending = null; });

document.addEventListener("click", async (e) => {
  const b = e.target.closest("button.undo-batch");
  if (!b) return;
  try { const r = await api("POST", `/api/datasets/${encodeURIComponent(b.dataset.dataset)}/tags/undo`, { entry: b.dataset.batch }); toast(`${r.undone} caption(s) restored`); setTimeout(() => location.reload(), 600); }
  catch (err) { toast(err.message, "error", 10000); }
});

document.getElementById("long").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = document.getElementById("long-result"), model = e.target.model.value;
  out.textContent = "counting tokens…";
  try {
    const r = await api("GET", `/api/datasets/${encodeURIComponent(dataset)}/long-captions?model=${encodeURIComponent(model)}`);
    out.innerHTML = r.captions.length ? `<p>${r.captions.length} caption(s) over ${r.limit} tokens (the rest is cut, or goes to a second 75-token chunk with max_token_length):</p><table class="list">` +
      r.captions.map((c) => `<tr><td>${esc(c.image)}</td><td><b>${c.tokens}</b></td><td>${esc(c.line)}</td></tr>`).join("") + "</table>"
      : `<p>every caption fits in ${r.limit} tokens.</p>`;
  } catch (err) { out.innerHTML = `<p class="error-box">${esc(err.message)}</p>`; }
});
loadTags().catch((err) => toast(err.message, "error"));
