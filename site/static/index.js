/* Index table: sort, filter and page the entries in window.RR_INDEX (data/index.js).
   No framework, no network: the data arrive as a plain script so the page also works from
   file://. Cells are written with textContent only, so nothing from the archive can
   become markup. State lives in location.hash so links and the back button keep it. */
(function () {
  "use strict";
  var data = window.RR_INDEX;
  var table = document.getElementById("entries");
  if (!data || !table) { return; }
  var cols = data.columns;
  var keys = cols.map(function (c) { return c.key; });
  var SLUG = keys.length;               // the row's page name follows the columns
  var idx = {};
  keys.forEach(function (k, i) { idx[k] = i; });
  var rows = data.rows;
  // Lower-case text to search once, not on every keystroke.
  var hay = rows.map(function (r) {
    return [r[idx.pdb_id], r[idx.emdb_id], r[idx.title]].join(" ").toLowerCase();
  });
  var tbody = table.tBodies[0];
  var $ = function (id) { return document.getElementById(id); };
  var f = { text: $("f-text"), status: $("f-status"), verdict: $("f-verdict"), res: $("f-res"), size: $("f-size") };
  var state = { q: "", status: "", verdict: "", res: "", sort: "pdb_id", dir: 1, page: 0, size: 100 };
  var view = [];

  function readHash() {
    var h = location.hash.replace(/^#/, "");
    if (!h) { return; }
    h.split("&").forEach(function (kv) {
      var p = kv.split("=");
      var k = decodeURIComponent(p[0]), v = decodeURIComponent(p[1] || "");
      if (k in state) { state[k] = (k === "dir" || k === "page" || k === "size") ? (parseInt(v, 10) || state[k]) : v; }
    });
    if (state.page < 0) { state.page = 0; }
    if (!(state.sort in idx)) { state.sort = "pdb_id"; }
    if (state.dir !== -1) { state.dir = 1; }
    if ([25, 100, 500].indexOf(state.size) < 0) { state.size = 100; }
  }
  function writeHash() {
    var parts = [];
    Object.keys(state).forEach(function (k) { parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(state[k])); });
    var h = "#" + parts.join("&");
    if (location.hash !== h) { history.replaceState(null, "", h); }
  }

  function fmt(v, kind) {
    if (v === null || v === undefined || v === "") { return "–"; }
    var m = /^(num|delta)(\d)$/.exec(kind);
    if (m) {
      var s = Number(v).toFixed(parseInt(m[2], 10));
      if (m[1] === "delta" && v > 0) { s = "+" + s; }
      return s.replace("-", "−");
    }
    return String(v);
  }

  function compute() {
    var q = state.q.trim().toLowerCase();
    var st = state.status, vd = state.verdict;
    var rmax = state.res === "" ? null : parseFloat(state.res);
    var iS = idx.status, iV = idx.verdict, iR = idx.resolution;
    view = [];
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (q && hay[i].indexOf(q) < 0) { continue; }
      if (st && r[iS] !== st) { continue; }
      if (vd && r[iV] !== vd) { continue; }
      if (rmax !== null && !isNaN(rmax) && (r[iR] === null || r[iR] > rmax)) { continue; }
      view.push(i);
    }
    var c = idx[state.sort], dir = state.dir;
    var numeric = cols[c].kind !== "text" && cols[c].kind !== "id";
    view.sort(function (a, b) {
      var x = rows[a][c], y = rows[b][c];
      // Missing values last whatever the direction; ties keep the PDB order (stable).
      if (x === null || x === undefined) { return (y === null || y === undefined) ? a - b : 1; }
      if (y === null || y === undefined) { return -1; }
      var d = numeric ? x - y : String(x).localeCompare(String(y));
      return d ? d * dir : a - b;
    });
  }

  function cell(tr, tag, text, cls) {
    var el = document.createElement(tag);
    if (cls) { el.className = cls; }
    el.textContent = text;
    tr.appendChild(el);
    return el;
  }

  function render() {
    var n = view.length, size = state.size;
    var pages = Math.max(1, Math.ceil(n / size));
    if (state.page >= pages) { state.page = pages - 1; }
    var start = state.page * size, end = Math.min(n, start + size);
    var frag = document.createDocumentFragment();
    for (var j = start; j < end; j++) {
      var r = rows[view[j]];
      var tr = document.createElement("tr");
      for (var c = 0; c < cols.length; c++) {
        var col = cols[c], v = r[c];
        if (col.key === "pdb_id") {
          var th = document.createElement("th");
          th.scope = "row";
          var a = document.createElement("a");
          a.href = "entry/" + encodeURIComponent(r[SLUG]) + ".html";
          a.textContent = v;
          th.appendChild(a);
          tr.appendChild(th);
        } else if (col.key === "verdict" || col.key === "status") {
          var td = document.createElement("td");
          var span = document.createElement("span");
          span.className = "tag tag-" + String(v || "none").replace(/[^a-z]/g, "");
          span.textContent = v || "–";
          td.appendChild(span);
          tr.appendChild(td);
        } else {
          cell(tr, "td", fmt(v, col.kind), /^(num|delta)/.test(col.kind) ? "num" : "");
        }
      }
      frag.appendChild(tr);
    }
    tbody.textContent = "";
    tbody.appendChild(frag);
    $("count").textContent = n === rows.length
      ? "Showing " + (n ? start + 1 : 0) + "–" + end + " of " + n + " entries."
      : "Showing " + (n ? start + 1 : 0) + "–" + end + " of " + n + " matching entries (" + rows.length + " in total).";
    $("pager").hidden = pages <= 1;
    $("p-info").textContent = "Page " + (state.page + 1) + " of " + pages;
    $("p-first").disabled = $("p-prev").disabled = state.page === 0;
    $("p-next").disabled = $("p-last").disabled = state.page >= pages - 1;
    var ths = table.tHead.rows[0].cells;
    for (var k = 0; k < ths.length; k++) {
      var key = ths[k].getAttribute("data-key");
      ths[k].setAttribute("aria-sort", key === state.sort ? (state.dir > 0 ? "ascending" : "descending") : "none");
    }
    writeHash();
  }

  function update(resetPage) {
    if (resetPage) { state.page = 0; }
    compute();
    render();
  }

  var timer = null;
  f.text.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = f.text.value; update(true); }, 120);
  });
  f.status.addEventListener("change", function () { state.status = f.status.value; update(true); });
  f.verdict.addEventListener("change", function () { state.verdict = f.verdict.value; update(true); });
  f.res.addEventListener("input", function () { state.res = f.res.value; update(true); });
  f.size.addEventListener("change", function () { state.size = parseInt(f.size.value, 10) || 100; update(true); });
  table.tHead.addEventListener("click", function (ev) {
    var th = ev.target.closest("th");
    if (!th) { return; }
    var key = th.getAttribute("data-key");
    if (state.sort === key) { state.dir = -state.dir; } else { state.sort = key; state.dir = 1; }
    update(true);
  });
  function go(p) { return function () { state.page = p(); render(); table.scrollIntoView({ block: "start" }); }; }
  $("p-first").addEventListener("click", go(function () { return 0; }));
  $("p-prev").addEventListener("click", go(function () { return Math.max(0, state.page - 1); }));
  $("p-next").addEventListener("click", go(function () { return state.page + 1; }));
  $("p-last").addEventListener("click", go(function () { return Math.ceil(view.length / state.size) - 1; }));

  function fromHash() {
    state = { q: "", status: "", verdict: "", res: "", sort: "pdb_id", dir: 1, page: 0, size: 100 };
    readHash();
    f.text.value = state.q; f.status.value = state.status; f.verdict.value = state.verdict;
    f.res.value = state.res; f.size.value = String(state.size);
    update(false);
  }
  // A link or the back button may change only the fragment: follow it.
  window.addEventListener("hashchange", fromHash);
  document.documentElement.classList.add("js");
  fromHash();
}());
