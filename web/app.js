// The page of `vlmo serve`: plain JavaScript over the JSON endpoints (/health, /api/search,
// /api/vqa, /api/itm). The picked image is a collection id or an uploaded data: URL.
"use strict";
const $ = (id) => document.getElementById(id);
let picked = null;  // {image: id-or-data-URL, label}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function call(endpoint, body) {
  const res = await fetch(endpoint, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
  return data;
}

function pct(p) { return (100 * p).toFixed(1) + " %"; }

function pick(image, label, src) {
  picked = { image, label };
  $("picked-name").textContent = label;
  $("picked-img").src = src;
  $("picked-img").hidden = false;
  $("answers").innerHTML = "";
  $("itm-result").textContent = "";
}

async function init() {
  try {
    const res = await fetch("/health");
    const h = await res.json();
    const parts = [`model ${h.model.path} (${h.model.depth} layers, ${h.model.embed_dim}-d, ${h.model.image_size} px)`];
    if (h.collection) parts.push(`collection ${h.collection.path}: ${h.collection.size} ${h.collection.modality}s, ${h.collection.kind} index`);
    $("model-info").textContent = parts.join(" · ");
    const off = (section, why) => { $(section).classList.add("disabled"); $(section).title = why; };
    if (!h.tasks.search) off("search-section", h.unavailable.search);
    if (!h.tasks.vqa && !h.tasks.itm) off("image-section", `${h.unavailable.vqa}; ${h.unavailable.itm}`);
  } catch (e) {
    showError("cannot reach the server: " + e.message);
  }
}

$("search-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const text = $("query").value.trim();
  if (!text) return showError("type a description to search for");
  try {
    const r = await call("/api/search", { text, top_k: Number($("top-k").value) || 8 });
    const grid = $("results");
    grid.innerHTML = "";
    r.results.forEach((hit, i) => {
      const cell = document.createElement("div");
      cell.className = "result";
      cell.dataset.id = hit.id;
      const src = "/api/image?id=" + encodeURIComponent(hit.id);
      cell.innerHTML = `<img alt=""><div class="score"></div><div class="id"></div>`;
      cell.querySelector("img").src = src;
      cell.querySelector(".score").textContent = `${i + 1}. ${hit.score.toFixed(3)}`;
      cell.querySelector(".id").textContent = hit.id;
      cell.title = hit.id;
      cell.addEventListener("click", () => {
        document.querySelectorAll(".result.picked").forEach((c) => c.classList.remove("picked"));
        cell.classList.add("picked");
        pick(hit.id, hit.id, src);
      });
      grid.appendChild(cell);
    });
  } catch (e) {
    showError("search: " + e.message);
  }
});

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => pick(reader.result, file.name, reader.result);
  reader.readAsDataURL(file);
});

// A form about the picked image: checks that an image is picked and the input is filled, then
// runs `ask(text)`; errors are shown prefixed with `label`.
function onPickedForm(form, input, emptyMessage, label, ask) {
  $(form).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError("");
    if (!picked) return showError("pick an image first: click a search result or upload one");
    const text = $(input).value.trim();
    if (!text) return showError(emptyMessage);
    try {
      await ask(text);
    } catch (e) {
      showError(label + ": " + e.message);
    }
  });
}

onPickedForm("vqa-form", "question", "type a question", "question", async (question) => {
  const r = await call("/api/vqa", { image: picked.image, question });
  const list = $("answers");
  list.innerHTML = "";
  for (const a of r.answers) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="answer"></span> <span class="prob"></span><span class="bar"></span>`;
    li.querySelector(".answer").textContent = a.answer;
    li.querySelector(".prob").textContent = pct(a.probability);
    li.querySelector(".bar").style.width = (120 * a.probability).toFixed(0) + "px";
    list.appendChild(li);
  }
});

onPickedForm("itm-form", "caption", "type a caption", "matching", async (text) => {
  const r = await call("/api/itm", { image: picked.image, text });
  $("itm-result").textContent = `match probability ${pct(r.match_probability)}`;
});

init();
