/* The entry page's 3D view: loads the vendored Mol* viewer and the entry's viewer data (a
   script that sets window.rerefineViewer) only when the user opens it. Script elements work
   from file:// (where fetch() is refused) and from any static server; nothing comes from
   another host. */
(function () {
  "use strict";
  var sec = document.getElementById("viewer-section");
  if (!sec) { return; }
  var button = document.getElementById("viewer-open");
  var status = document.getElementById("viewer-status");
  var wrap = document.getElementById("viewer-wrap");
  var list = document.getElementById("viewer-residues");

  function loadScript(src, what) {
    return new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = function () { reject(new Error(what)); };
      document.head.appendChild(s);
    });
  }

  function state(s, text) {
    sec.setAttribute("data-viewer-state", s);
    status.textContent = text;
  }

  function residues(viewer, rows) {
    rows.forEach(function (r) {
      var li = document.createElement("li");
      var b = document.createElement("button");
      b.type = "button";
      b.className = "linklike";
      b.textContent = r.label;
      b.addEventListener("click", function () {
        viewer.structureInteractivity({ elements: { auth_asym_id: String(r.chain), auth_seq_id: r.seq },
                                        action: ["select", "focus"] });
        sec.setAttribute("data-focused", r.label);
      });
      li.appendChild(b);
      li.appendChild(document.createTextNode(" " + r.why));
      list.appendChild(li);
    });
  }

  button.addEventListener("click", function () {
    button.disabled = true;
    state("loading", "Loading the viewer and this entry's models and maps…");
    var base = sec.getAttribute("data-molstar");
    var css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = base + "molstar.css";
    document.head.appendChild(css);
    Promise.all([
      loadScript(base + "molstar.js", "The Mol* viewer is not installed with this site (make setup vendors it)."),
      loadScript(sec.getAttribute("data-viewer-src"), "This entry's viewer data could not be loaded.")
    ]).then(function () {
      wrap.hidden = false;
      return window.molstar.Viewer.create("viewer-app", {
        layoutIsExpanded: false, layoutShowControls: false, layoutShowRemoteState: false,
        layoutShowSequence: false, layoutShowLog: false, layoutShowLeftPanel: false,
        viewportShowExpand: true, viewportShowSelectionMode: false, viewportShowAnimation: false,
        viewportShowControls: true
      });
    }).then(function (viewer) {
      window.rerefineViewerInstance = viewer;
      var d = window.rerefineViewer;
      return viewer.loadMvsData(d.data, d.format).then(function () {
        residues(viewer, d.residues || []);
        state("ready", "");
      });
    }).catch(function (err) {
      state("error", err && err.message ? err.message : String(err));
      button.disabled = false;
    });
  });
})();
