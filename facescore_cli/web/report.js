// The table of all rows, drawn a page at a time from the JSON block. Text goes in as textContent only.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("rows").textContent);
  const PAGE = 100;
  const traits = data.traits;
  const hasStore = data.rows.some(r => r[8] !== null);
  const base = [
    ["", null], ["path", r => data.images[r[0]][0]], ["face", r => r[1]], ["score", r => r[2]],
    ["rank", r => r[3]], ["vibe", r => r[4]], ["conf", r => r[5]], ["source", r => r[6]], ["error", r => r[7]],
  ];
  if (hasStore) base.push(["store rank", r => r[8]]);
  const numeric = new Set(["face", "score", "rank", "conf", "store rank"]);
  const state = { text: "", vibe: "", status: "", sort: null, desc: false, page: 0, traits: false };

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function columns() {
    return state.traits ? base.concat(traits.map((t, i) => [t, r => r[9 + i]])) : base;
  }
  function fmt(name, v) {
    if (v === null || v === undefined || v === "") return "";
    if (name === "conf") return Number(v).toFixed(2);
    if (numeric.has(name) && name !== "face" || traits.includes(name)) return Number(v).toFixed(1);
    return String(v);
  }
  function rowStatus(r) {
    if (r[7] && r[1] === null && r[7] !== "no face found") return "failed";
    if (r[1] === null) return "no face";
    return "faces";
  }
  function visible() {
    const text = state.text.toLowerCase();
    let rows = data.rows.filter(r => {
      if (state.vibe && r[4] !== state.vibe) return false;
      const img = data.images[r[0]];
      if (state.status === "missing") { if (!img[1] || img[1] === "ok") return false; }
      else if (state.status && rowStatus(r) !== state.status) return false;
      if (!text) return true;
      return (img[0] + "\u0000" + r[4] + "\u0000" + r[6] + "\u0000" + r[7]).toLowerCase().includes(text);
    });
    if (state.sort !== null && state.sort >= columns().length) state.sort = null;  // a trait column hidden
    if (state.sort !== null) {
      const [name, get] = columns()[state.sort];
      const dir = state.desc ? -1 : 1;
      const num = numeric.has(name) || traits.includes(name);
      rows = rows.slice().sort((a, b) => {
        const x = get(a), y = get(b);
        if (x === null || x === "") return (y === null || y === "") ? 0 : 1;  // empty cells last
        if (y === null || y === "") return -1;
        return dir * (num ? x - y : String(x).localeCompare(String(y)));
      });
    }
    return rows;
  }
  function draw() {
    const rows = visible();
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    const cols = columns();
    const table = el("table", { id: "rowtable" });
    const head = el("tr");
    cols.forEach(([name], i) => {
      const th = el("th", numeric.has(name) || traits.includes(name) ? { class: "num" } : {}, name);
      if (i > 0) {
        th.dataset.col = String(i);
        if (state.sort === i) th.setAttribute("aria-sort", state.desc ? "descending" : "ascending");
        th.addEventListener("click", () => {
          state.desc = state.sort === i ? !state.desc : (numeric.has(name) || traits.includes(name));
          state.sort = i; draw();
        });
      }
      head.appendChild(th);
    });
    table.appendChild(el("thead")).appendChild(head);
    const body = el("tbody");
    for (const r of rows.slice(state.page * PAGE, (state.page + 1) * PAGE)) {
      const tr = el("tr", rowStatus(r) === "failed" ? { class: "failed" } : {});
      const img = data.images[r[0]];
      const pic = el("td");
      if (img[2]) pic.appendChild(el("img", { src: img[2], alt: "", loading: "lazy" }));
      else if (img[1] && img[1] !== "ok") pic.appendChild(el("div", { class: "gone" }, img[1]));
      tr.appendChild(pic);
      cols.slice(1).forEach(([name, get]) => {
        const attrs = numeric.has(name) || traits.includes(name) ? { class: "num" } : (name === "path" ? { class: "path" } : {});
        tr.appendChild(el("td", attrs, fmt(name, get(r))));
      });
      body.appendChild(tr);
    }
    table.appendChild(body);
    const pager = el("div", { class: "pager" });
    const prev = el("button", { type: "button" }, "‹ previous");
    const next = el("button", { type: "button" }, "next ›");
    prev.disabled = state.page === 0; next.disabled = state.page >= pages - 1;
    prev.addEventListener("click", () => { state.page -= 1; draw(); });
    next.addEventListener("click", () => { state.page += 1; draw(); });
    const from = rows.length ? state.page * PAGE + 1 : 0;
    const range = rows.length ? `rows ${from}-${Math.min(rows.length, (state.page + 1) * PAGE)} of ${rows.length.toLocaleString()}`
                              : "no rows match";
    const shown = el("span", { id: "shown" }, range +
      (rows.length !== data.rows.length ? ` (filtered from ${data.rows.length.toLocaleString()})` : ""));
    pager.append(prev, shown, next);
    const holder = document.getElementById("table");
    holder.replaceChildren(table, pager);
  }
  function controls() {
    const box = document.getElementById("controls");
    const search = el("input", { type: "search", id: "filter", placeholder: "filter: path, vibe, source, error" });
    search.addEventListener("input", () => { state.text = search.value; state.page = 0; draw(); });
    const vibe = el("select", { id: "vibe" });
    vibe.appendChild(el("option", { value: "" }, "every vibe"));
    [...new Set(data.rows.map(r => r[4]).filter(Boolean))].sort().forEach(v => vibe.appendChild(el("option", { value: v }, v)));
    vibe.addEventListener("change", () => { state.vibe = vibe.value; state.page = 0; draw(); });
    const status = el("select", { id: "status" });
    [["", "every row"], ["faces", "faces"], ["no face", "no face"], ["failed", "failed"], ["missing", "image missing or changed"]]
      .forEach(([v, t]) => status.appendChild(el("option", { value: v }, t)));
    status.addEventListener("change", () => { state.status = status.value; state.page = 0; draw(); });
    box.append(search, vibe, status);
    if (traits.length) {
      const label = el("label");
      const check = el("input", { type: "checkbox", id: "traits" });
      check.addEventListener("change", () => { state.traits = check.checked; draw(); });
      label.append(check, " show traits");
      box.appendChild(label);
    }
  }
  controls();
  draw();
})();
