"""Build the static website from a source of entry data (the results database, or plain dicts).

The site is a folder of plain files that works from ``file://`` and from any static web
server, and loads nothing from any other host:

``index.html``                 all entries (table sorted/filtered/paginated in the browser by
                               ``static/index.js`` from ``data/index.js``; the first page is
                               also in the HTML so the table reads without JavaScript)
``entry/<pdb>.html``           one entry: metadata, before/after metrics, per-residue plots,
                               sharpening, downloads, pipeline version and parameters
``archive.html``               archive-wide CCmask vs Q-score / atom inclusion, improvement
                               by resolution bin
``versions.html``, ``version/<v>.html``  method impact of each pipeline version vs the previous
``files/<pdb>/...``            kept artefacts (hard links, else copies)
``.manifest.json``             hash of every page's data: the incremental build rewrites a
                               page only when its hash changed (all pages when the templates,
                               assets or the rendering code changed, or with ``full=True``)

This module is the builder: the Jinja2 environment, the pages and how they are written. The
parts it puts together live apart, one job each: the view models (what a page shows, in plain
dicts) in :mod:`rerefine.reports.site_views`, the charts in :mod:`rerefine.reports.site_charts`,
the manifest of page hashes in :mod:`rerefine.reports.site_manifest`, and the sources of entry
data (:class:`~rerefine.reports.site_sources.DatabaseSource`,
:class:`~rerefine.reports.site_sources.DictSource`) in :mod:`rerefine.reports.site_sources`.

Everything from the archive is escaped: Jinja2 autoescape is on for the HTML, the charts
escape their texts, and the index script writes cells with ``textContent`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2

from rerefine.common.atomicfile import link_atomic, write_atomic
from rerefine.reports import entry_validation as ev
from rerefine.reports import plots, ramaplot, site_charts, site_sources, site_views, waters
from rerefine.reports.numbers import finite_float
from rerefine.reports.site_manifest import Manifest, data_hash, json_default
from rerefine.reports.site_views import (GEOMETRY, INDEX_COLUMNS, METRICS, date_text, emdb_url, entry_view,
                                         fmt_number, index_row, metric_rows, page_slug, rcsb_url)
from rerefine.reports.viewer import copy_viewer_assets

log = logging.getLogger(__name__)

PAGE_SIZE_NOSCRIPT = 100
#: Modules whose code shapes the pages: a change in any of them re-renders every page.
RENDERING_MODULES = (site_views, site_charts, site_sources, plots, ramaplot, ev, waters)


# --- rendering ------------------------------------------------------------------------------

def template_dir() -> Path:
    """The site's Jinja2 templates (package ``rerefine.site``)."""
    return Path(str(resources.files("rerefine.site"))) / "templates"


def static_dir() -> Path:
    """The site's static assets (stylesheet, scripts), copied into ``<site>/static/``."""
    return Path(str(resources.files("rerefine.site"))) / "static"


def make_environment() -> jinja2.Environment:
    """Jinja2 environment with autoescape ON for every template (they are all HTML)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, dec=3: fmt_number(finite_float(v), dec)
    env.filters["delta"] = lambda v, dec=3: fmt_number(finite_float(v), dec, sign=True)
    env.globals["rcsb_url"] = rcsb_url
    env.globals["emdb_url"] = emdb_url
    return env


def code_fingerprint() -> str:
    """Hash of the templates, static assets and rendering code: a change re-renders every page."""
    h = hashlib.sha256()
    for d in (template_dir(), static_dir()):
        for p in sorted(d.glob("*")):
            if p.is_file():
                h.update(p.name.encode())
                h.update(p.read_bytes())
    for mod in (__file__,) + tuple(m.__file__ for m in RENDERING_MODULES):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()[:16]


def _script_json(obj) -> str:
    """JSON safe to place in a script: ``<``, ``>``, ``&`` and line separators are escaped."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=json_default, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- builder ------------------------------------------------------------------------------------

@dataclass
class BuildReport:
    """What a build did."""

    out_dir: Path
    pages_total: int = 0
    pages_written: int = 0
    pages_removed: int = 0
    entries: int = 0
    seconds: float = 0.0
    written: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "pages_total": self.pages_total, "pages_written": self.pages_written,
                "pages_removed": self.pages_removed, "entries": self.entries, "seconds": round(self.seconds, 3)}


class SiteBuilder:
    """Renders pages and keeps the manifest of page-data hashes for incremental builds."""

    def __init__(self, out_dir: Path, full: bool = False, copy_artefacts: bool = True):
        self.out = Path(out_dir)
        self.env = make_environment()
        self.full = full
        self.copy_artefacts = copy_artefacts
        self.manifest = Manifest(self.out, code_fingerprint(), full=full)
        self.report = BuildReport(self.out)
        self._tpl = {}

    def template(self, name):
        """The compiled template ``name`` (compiled once per build)."""
        if name not in self._tpl:
            self._tpl[name] = self.env.get_template(name)
        return self._tpl[name]

    def keep(self, rel: str, marker: str) -> bool:
        """True (and the page is kept as is) when the source marker of ``rel`` is the one of the
        previous build and its file exists: the data were not even read."""
        if self.manifest.keep_marked(rel, marker, (self.out / rel).is_file()):
            self.report.pages_total += 1
            return True
        return False

    def page(self, rel: str, data, render, marker: str | None = None) -> bool:
        """Write page ``rel`` with ``render()`` unless its ``data`` hash is unchanged and the file exists."""
        h = data_hash(data, self.manifest.salt)
        self.manifest.record(rel, h, marker)
        self.report.pages_total += 1
        target = self.out / rel
        if self.manifest.unchanged(rel, h) and target.is_file():
            return False
        write_atomic(target, render())
        self.report.pages_written += 1
        self.report.written.append(rel)
        return True

    def static(self) -> None:
        """Copy the static assets into ``static/`` where they differ."""
        dest = self.out / "static"
        for p in sorted(static_dir().glob("*")):
            if p.is_file() and not p.name.startswith((".", "__")):
                t = dest / p.name
                data = p.read_bytes()
                if not t.is_file() or t.read_bytes() != data:
                    write_atomic(t, data)

    def artefact_links(self, v: dict) -> list[dict]:
        """Downloads for the page: artefacts whose file exists are linked (hard link, else copy) into
        ``files/<pdb>/`` and linked relatively; others are listed as not kept."""
        out = []
        for a in v["artefacts"]:
            src = Path(a.get("path") or "")
            item = {"kind": a.get("kind") or "file", "name": src.name, "size": a.get("size"),
                    "sha256": a.get("sha256") or a.get("checksum"), "href": None}
            if self.copy_artefacts and src.name and src.is_file():
                rel = f"files/{v['slug']}/{page_slug(src.name)}"
                dst = self.out / rel
                if not dst.is_file() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
                    link_atomic(src, dst)
                item["href"] = "../" + rel
                if item["size"] is None:
                    item["size"] = src.stat().st_size
            out.append(item)
        return out

    def finish(self, started: str) -> None:
        """Remove the pages of the previous build that no longer exist (entry withdrawn, version
        gone), then write the manifest."""
        for rel in self.manifest.gone():
            p = self.out / rel
            if p.is_file():
                p.unlink()
                self.report.pages_removed += 1
        self.manifest.write(started)


def render_entry(b: SiteBuilder, v: dict) -> str:
    """HTML of one entry page from its view model."""
    ctx = {
        "root": "../",
        "e": v,
        "rcsb": rcsb_url(v["pdb_id"]),
        "emdb": emdb_url(v["emdb_id"]),
        "metric_rows": metric_rows(v["metrics"]["before"], v["metrics"]["after"], METRICS, True),
        "geometry_rows": metric_rows(v["metrics"]["before"], v["metrics"]["after"], GEOMETRY, False),
        "validation_rows": metric_rows(v["metrics"]["before"], v["metrics"]["after"], ev.VALIDATION, False),
        "crossval_rows": metric_rows(v["metrics"]["before"], v["metrics"]["after"], ev.CROSSVAL, False),
        "changed_residues": ev.changed_residues(v["metrics"]["before"].get("validation_residues"),
                                                v["metrics"]["after"].get("validation_residues")),
        "rama_plots": ev.rama_plots(v["metrics"]["before"].get("validation_residues"),
                                    v["metrics"]["after"].get("validation_residues")),
        "rama_credit": ev.ramaplot.CREDIT,
        "residue_charts": site_charts.residue_charts(v),
        "scatter": site_charts.scatter_cc_q(v),
        "sharpening_chart": site_charts.sharpening_chart(v),
        "downloads": b.artefact_links(v),
        "version_slug": page_slug(v["version_label"] or v["version"]) if v["version"] else None,
        "parameters": sorted((str(k), json.dumps(val, default=json_default) if not isinstance(val, str) else val)
                             for k, val in v["parameters"].items()),
    }
    return b.template("entry.html").render(**ctx)


def render_archive(b: SiteBuilder, rows: list[dict]) -> str:
    """Archive-wide page: metric-vs-metric scatters across entries and improvement by resolution bin."""
    charts = site_charts.archive_charts(rows)
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return b.template("archive.html").render(root="", n_entries=len(rows), status=sorted(status.items()), **charts)


def build_site(source, out_dir, *, full: bool = False, copy_artefacts: bool = True, jobs: int = 1) -> BuildReport:
    """Build (or update) the static site in ``out_dir`` from ``source``.

    Parameters
    ----------
    source
        :class:`~rerefine.reports.site_sources.DatabaseSource` or
        :class:`~rerefine.reports.site_sources.DictSource`: ``listing(since)`` (index-level
        entry dicts with a ``marker`` that changes whenever the entry's data change, or
        ``None`` to force a read), ``detail(item)`` (full entry dict, see
        :func:`~rerefine.reports.site_views.entry_view`) and ``version_summaries()``.
    out_dir : path
        Site folder; created if missing.
    full : bool
        Ignore the manifest and rewrite every page.
    jobs : int
        Processes that read and render entry pages (``fork`` start method; a
        :class:`DatabaseSource` opens its own connections in each).

    Returns
    -------
    BuildReport

    Notes
    -----
    An entry page is re-rendered only when its marker changed (then its detail is read
    and hashed, and the page rewritten only when that hash changed too); the index,
    archive and version pages are hashed and rewritten the same way. Every write is
    atomic (temporary file + rename), and the manifest is written last, so an
    interrupted build is completed by the next one.
    """
    t0 = time.perf_counter()
    started = _utcnow_naive()
    b = SiteBuilder(Path(out_dir), full=full, copy_artefacts=copy_artefacts)
    b.out.mkdir(parents=True, exist_ok=True)
    b.static()
    copy_viewer_assets(static_dir(), b.out / "static")
    since = None if (full or not b.manifest.old) else b.manifest.old_started
    rows = []
    todo: list[tuple[dict, str]] = []
    slugs: dict[str, str] = {}
    for item in source.listing(since):
        lv = entry_view(item)
        if lv["slug"] in slugs:
            log.warning("site: %s and %s share the page name %s; keeping the first",
                        slugs[lv["slug"]], lv["pdb_id"], lv["slug"])
            continue
        slugs[lv["slug"]] = lv["pdb_id"]
        row = index_row(lv)
        row["slug"] = lv["slug"]
        rows.append(row)
        rel = f"entry/{lv['slug']}.html"
        marker = item.get("marker")
        b.report.entries += 1
        if marker is not None and b.keep(rel, marker):
            continue
        todo.append((item, lv["slug"]))
    _entry_pages(b, source, todo, jobs)
    rows.sort(key=lambda r: r["pdb_id"].lower())
    table = index_table(rows)
    b.page("data/index.js", table, lambda: index_script(table))
    first = rows[:PAGE_SIZE_NOSCRIPT]
    statuses = sorted({r["status"] for r in rows})
    verdicts = sorted({r["verdict"] for r in rows if r["verdict"]})
    b.page("index.html", {"first": first, "n": len(rows), "statuses": statuses, "verdicts": verdicts,
                          "table": b.manifest.new["data/index.js"]},
           lambda: b.template("index.html").render(root="", columns=INDEX_COLUMNS, first=first, n=len(rows),
                                                   statuses=statuses, verdicts=verdicts,
                                                   data_version=b.manifest.new["data/index.js"][:10]))
    b.page("archive.html", rows, lambda: render_archive(b, rows))
    _version_pages(b, source.version_summaries())
    b.finish(started)
    b.report.seconds = time.perf_counter() - t0
    return b.report


def _one_entry(b: SiteBuilder, source, item: dict, slug: str) -> tuple:
    v = entry_view(source.detail(item))
    v["slug"] = slug
    rel = f"entry/{slug}.html"
    before = b.report.pages_written
    b.page(rel, v, lambda: render_entry(b, v), marker=item.get("marker"))
    return rel, b.manifest.new[rel], item.get("marker"), b.report.pages_written > before


_WORK: tuple | None = None  # (builder, source) inherited by forked workers


def _worker_init() -> None:
    engine = getattr(_WORK[1], "engine", None)
    if engine is not None:
        engine.dispose(close=False)  # connections of the parent must not be shared


def _worker_chunk(chunk: list) -> list:
    b, source = _WORK
    return [_one_entry(b, source, item, slug) for item, slug in chunk]


def _entry_pages(b: SiteBuilder, source, todo: list, jobs: int) -> None:
    """Read, render and write the entry pages in ``todo`` (serially, or in ``jobs`` forked processes)."""
    import multiprocessing as mp

    if jobs <= 1 or len(todo) < 64 or "fork" not in mp.get_all_start_methods():
        for item, slug in todo:
            _one_entry(b, source, item, slug)
        return
    global _WORK
    from concurrent.futures import ProcessPoolExecutor

    size = max(16, min(200, len(todo) // (jobs * 8)))
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    _WORK = (b, source)
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"),
                                 initializer=_worker_init) as pool:
            for results in pool.map(_worker_chunk, chunks):
                for rel, h, marker, written in results:
                    b.manifest.record(rel, h, marker)
                    b.report.pages_total += 1
                    if written:
                        b.report.pages_written += 1
                        b.report.written.append(rel)
    finally:
        _WORK = None


def index_table(rows: list[dict]) -> dict:
    """The index data: column descriptions and one list per row (the page name last)."""
    cols = [c[0] for c in INDEX_COLUMNS] + ["slug"]

    def cell(v):
        # Five decimals are more than any column shows (at most four) and halve the file.
        return round(v, 5) if isinstance(v, float) else v

    return {"columns": [{"key": k, "label": lab, "kind": kind} for k, lab, kind in INDEX_COLUMNS],
            "rows": [[cell(r.get(c)) for c in cols] for r in rows]}


def index_script(table: dict) -> str:
    """``data/index.js``: a plain script (not JSON fetched at run time, which ``file://`` forbids)."""
    return "window.RR_INDEX = " + _script_json(table) + ";\n"


def _utcnow_naive() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat()


def _version_pages(b: SiteBuilder, summaries: list[dict]) -> None:
    items = []
    for s in summaries:
        comp = s.get("comp")
        item = {"version": s["version"], "slug": page_slug(s["version"]), "created": date_text(s.get("created")),
                "n": s["n"], "counts": sorted((s.get("counts") or {}).items()), "median_dcc": s.get("median_dcc"),
                "previous": s.get("previous"), "previous_slug": page_slug(s["previous"]) if s.get("previous") else None,
                "git_commit": s.get("git_commit"),
                "n_both": comp["n_both"] if comp else None,
                "n_improved": len(comp["improved"]) if comp else None,
                "n_worsened": len(comp["worsened"]) if comp else None}
        items.append(item)
        params = sorted((str(k), json.dumps(val, default=json_default)) for k, val in (s.get("parameters") or {}).items())
        data = {"item": item, "comp": comp, "params": params}

        def render(item=item, comp=comp, params=params):
            return b.template("version.html").render(root="../", v=item, comp=comp,
                                                     box=site_charts.version_chart(item, comp), limit=200,
                                                     parameters=params)

        b.page(f"version/{item['slug']}.html", data, render)
    b.page("versions.html", items, lambda: b.template("versions.html").render(root="", versions=items[::-1]))
