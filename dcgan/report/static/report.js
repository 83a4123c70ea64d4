// The experiments page and each experiment's page: sort and filter the table, pick the rows to draw, move
// the sample-grid sliders (together, matched by images seen), and draw DVC's Vega-Lite plots with Vega-Embed.
"use strict";

const data = JSON.parse(document.getElementById("report-data").textContent);
const byId = new Map(data.experiments.map((e) => [e.id, e]));
const table = document.getElementById("experiments");

function rows() {
  return table ? Array.from(table.tBodies[0].rows) : [];
}

// The experiments drawn below the table: ticked and not filtered out (every one on an experiment's page).
function chosen() {
  if (!table) return data.experiments;
  return rows()
    .filter((r) => r.style.display !== "none" && r.querySelector("input.pick").checked)
    .map((r) => byId.get(r.dataset.id));
}

// ---- the table: click a header to sort (again to reverse), type to filter
function sortBy(th) {
  const col = th.cellIndex;
  const asc = th.dataset.order !== "asc";
  table.querySelectorAll("th").forEach((h) => delete h.dataset.order);
  th.dataset.order = asc ? "asc" : "desc";
  const key = (r) => r.cells[col].dataset.v ?? "";
  const sorted = rows().sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");   // no value: last either way
    const nx = Number(x), ny = Number(y);
    const c = !isNaN(nx) && !isNaN(ny) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  });
  sorted.forEach((r) => table.tBodies[0].appendChild(r));
  update();
}

function filterRows(text) {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  rows().forEach((r) => {
    const hay = r.textContent.toLowerCase() + " " + r.dataset.id.toLowerCase();
    r.style.display = words.every((w) => hay.includes(w)) ? "" : "none";
  });
  update();
}

// ---- the grids: one card per experiment, a slider over its epochs
function gridCard(e) {
  const card = document.createElement("figure");
  card.className = "gridcard";
  card.dataset.id = e.id;
  const last = e.grids.length - 1;
  const title = `<figcaption><a href="${e.page}">${e.label}</a> <span class="at"></span></figcaption>`;
  if (last < 0) {
    card.innerHTML = title + '<p class="missing">no sample grids</p>';
    return card;
  }
  card.innerHTML = title + `<img loading="lazy" alt="samples of ${e.label}">` +
    `<input type="range" min="0" max="${last}" value="${last}" step="1" aria-label="epoch of ${e.label}">`;
  const slider = card.querySelector("input");
  slider.addEventListener("input", () => {
    show(card, e, Number(slider.value));
    const link = document.getElementById("link");
    if (link && link.checked) follow(e, Number(slider.value));
  });
  show(card, e, last);
  return card;
}

function show(card, e, i) {
  const [epoch, seen, src] = e.grids[i];
  const img = card.querySelector("img");
  if (img.getAttribute("src") !== src) img.src = src;
  card.querySelector("input").value = i;
  card.querySelector(".at").textContent =
    `epoch ${epoch}` + (seen !== null ? ` · ${seen.toLocaleString("en")} images` : "");
}

// The other sliders go to the grid nearest in images seen (in epochs where images seen are unknown).
function follow(leader, i) {
  const [epoch, seen] = leader.grids[i];
  document.querySelectorAll(".gridcard").forEach((card) => {
    const e = byId.get(card.dataset.id);
    if (e === leader || !e.grids.length) return;
    let best = 0, gap = Infinity;
    e.grids.forEach(([ep, s], j) => {
      const d = seen !== null && s !== null ? Math.abs(s - seen) : Math.abs(ep - epoch);
      if (d < gap) { gap = d; best = j; }
    });
    show(card, e, best);
  });
}

function drawGrids(exps) {
  const box = document.getElementById("grids");
  if (!box) return;
  const have = new Map(Array.from(box.children).map((c) => [c.dataset.id, c]));
  box.replaceChildren(...exps.map((e) => have.get(e.id) || gridCard(e)));
}

// ---- the curves: DVC's specs, with only the chosen experiments' rows and colours
function specFor(spec, revs) {
  const s = JSON.parse(JSON.stringify(spec));
  if (s.data && s.data.values) s.data.values = s.data.values.filter((d) => revs.has(d.rev));
  const scale = s.encoding && s.encoding.color && s.encoding.color.scale;
  if (scale && Array.isArray(scale.domain)) {
    const keep = scale.domain.map((r, i) => [r, i]).filter(([r]) => revs.has(r));
    if (Array.isArray(scale.range)) scale.range = keep.map(([, i]) => scale.range[i % scale.range.length]);
    scale.domain = keep.map(([r]) => r);
  }
  return s;
}

function drawCharts(exps) {
  const box = document.getElementById("charts");
  if (!box) return;
  const revs = new Set(exps.map((e) => e.rev));
  box.replaceChildren();
  if (typeof vegaEmbed === "undefined") {
    box.innerHTML = '<p class="missing">assets/vega.js did not load: rebuild with <code>make report</code>.</p>';
    return;
  }
  data.charts.forEach((c) => {
    const panel = document.createElement("div");
    panel.className = "panel chart";
    const spec = specFor(c.spec, revs);
    if (!spec.data || !spec.data.values || !spec.data.values.length) return;
    box.appendChild(panel);
    vegaEmbed(panel, spec, { actions: false, renderer: "svg" }).catch((err) => {
      panel.innerHTML = `<p class="missing">${c.title}: ${err}</p>`;
    });
  });
}

function update() {
  const exps = chosen();
  drawGrids(exps);
  drawCharts(exps);
}

if (table) {
  table.querySelectorAll("th[data-col]").forEach((th) => th.addEventListener("click", () => sortBy(th)));
  table.addEventListener("change", (ev) => {
    if (ev.target.id === "pick-all") rows().forEach((r) => { r.querySelector("input.pick").checked = ev.target.checked; });
    if (ev.target.matches("input.pick, #pick-all")) update();
  });
  document.getElementById("filter").addEventListener("input", (ev) => filterRows(ev.target.value));
}
update();
