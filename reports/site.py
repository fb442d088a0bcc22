"""Render the static website from the results database (or from plain dicts).

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
                               assets or this code changed, or with ``full=True``)

Rendering works on *view models*: plain dicts in the shape documented by
:func:`entry_view` and :func:`index_row`. A *source* supplies them; :class:`DictSource`
holds them in memory (tests), :class:`DatabaseSource` reads them through
:mod:`rerefine.reports.queries`.

Everything from the archive is escaped: Jinja2 autoescape is on for the HTML, the charts
escape their texts, and the index script writes cells with ``textContent`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np

from rerefine.reports import plots
from rerefine.reports.viewer import copy_viewer_assets
from rerefine.reports.waters import waters_view
from rerefine.common.atomicfile import write_atomic
from rerefine.common.errors import InputError
from rerefine.reports import entry_validation as ev
from rerefine.reports.verdict import CC_MARGIN
from rerefine.reports.verdict import finite_float as _f

log = logging.getLogger(__name__)

PAGE_SIZE_NOSCRIPT = 100
MANIFEST = ".manifest.json"

# --- identifiers and outside links ----------------------------------------------------

_PDB_RE = re.compile(r"^(?:[1-9][A-Za-z0-9]{3}|pdb_[0-9]{4}[A-Za-z0-9]{4})$")
_EMDB_RE = re.compile(r"^EMD-[0-9]{4,8}$")


def valid_pdb_id(pdb_id) -> bool:
    """A PDB id: classic four characters (digit 1-9 then three alphanumerics) or extended ``pdb_0000xxxx``."""
    return isinstance(pdb_id, str) and bool(_PDB_RE.match(pdb_id))


def normal_emdb_id(emdb_id) -> str | None:
    """``EMD-NNNN`` from ``EMD-1234``, ``emd_1234`` or ``1234``; ``None`` if not an EMDB id."""
    if emdb_id is None:
        return None
    s = str(emdb_id).strip().upper().replace("_", "-")
    if s.isdigit():
        s = "EMD-" + s
    return s if _EMDB_RE.match(s) else None


def rcsb_url(pdb_id) -> str | None:
    """Entry page at RCSB PDB, only for a valid id (never builds a URL from arbitrary text)."""
    return f"https://www.rcsb.org/structure/{pdb_id.upper()}" if valid_pdb_id(pdb_id) else None


def emdb_url(emdb_id) -> str | None:
    """Entry page at EMDB (EBI), only for a valid id."""
    e = normal_emdb_id(emdb_id)
    return f"https://www.ebi.ac.uk/emdb/{e}" if e else None


def page_slug(text: str) -> str:
    """A file-name-safe, lower-case form of an id or version (letters, digits, ``._-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._").lower()
    return s or "_"


# --- science -----------------------------------------------------------------------------

def expected_q(resolution) -> float | None:
    """Expected mean Q-score (σ 0.6 Å, protein) at a map resolution (Å), or None when it is unknown:
    :func:`rerefine.refine.qscore.expected_q` (MapQ's line, Pintilie et al. 2020)."""
    if resolution is None or not math.isfinite(resolution) or resolution <= 0:
        return None
    from rerefine.refine.qscore import expected_q as mapq_expected_q  # numba module: loaded when needed

    return mapq_expected_q(float(resolution))


# name -> (label, higher is better, decimals); names as in rerefine.reports.db.METRIC_COLUMNS.
# Unknown numeric metrics are shown with their own names after these (no better/worse colour).
METRICS = {
    "cc_mask": ("CCmask", True, 3),
    **ev.FIT_EXTRA,
    "cc_box": ("CCbox", True, 3),
    "cc_peaks": ("CCpeaks", True, 3),
    "cc_volume": ("CCvolume", True, 3),
    "q_score": ("Q-score (mean)", True, 3),
    "atom_inclusion": ("Atom inclusion", True, 3),
    "atom_inclusion_backbone": ("Atom inclusion, backbone", True, 3),
    "contour": ("Contour level for atom inclusion (map units)", None, 4),
}
GEOMETRY = {
    "bond_rmsd": ("RMSD bonds (Å)", False, 4),
    "angle_rmsd": ("RMSD angles (°)", False, 3),
    "chirality_rmsd": ("RMSD chirality (Å³)", False, 3),
    "planarity_rmsd": ("RMSD planarity (Å)", False, 4),
    "nonbonded_overlaps": ("Non-bonded overlaps", False, 0),
    # library torsion targets include the alternatives refinement does not restrain (side-chain
    # rotamers, phi/psi): shown for information, without a better/worse tone
    "torsion_rmsd": ("RMSD torsions to library targets (°)", None, 1),
}
# Numbers stored with the metrics that are not shown in the tables: shown elsewhere on the page,
# or parameters and timings of the measurement rather than figures of the model.
HIDDEN_METRICS = {"q_score_expected", "b_iso_before", "b_iso_after", "b_sharpen", "q_sigma", "resolution",
                  "seconds"} | ev.NOT_IN_FIT_TABLE
# Geometry figures shown as deltas in the index (when present).
INDEX_GEOMETRY = ("bond_rmsd", "angle_rmsd", "nonbonded_overlaps")
# Changes the archive page plots (fit gain against validation change), kept in the rows.
ARCHIVE_DELTAS = ("cc_mask_input_b", "rama_favored_pct", "rotamer_outliers_pct", "clashscore")

# Columns of the index data: key, header, kind (drives sorting/formatting in index.js).
INDEX_COLUMNS = [
    ("pdb_id", "PDB", "id"),
    ("emdb_id", "EMDB", "id"),
    ("title", "Title", "text"),
    ("resolution", "Resolution (Å)", "num2"),
    ("release_date", "Released", "text"),
    ("cc_mask_before", "CCmask before", "num3"),
    ("cc_mask_after", "CCmask after", "num3"),
    ("q_score_before", "Q before", "num3"),
    ("q_score_after", "Q after", "num3"),
    ("atom_inclusion_before", "Atom incl. before", "num3"),
    ("atom_inclusion_after", "Atom incl. after", "num3"),
    ("d_bond_rmsd", "ΔRMSD bonds (Å)", "delta4"),
    ("d_angle_rmsd", "ΔRMSD angles (°)", "delta3"),
    ("d_nonbonded_overlaps", "ΔOverlaps", "delta0"),
    ("verdict", "Verdict", "text"),
    ("verdict_gate", "Decided by", "text"),
    ("status", "Status", "text"),
    ("version", "Version", "text"),
]

RESOLUTION_BINS = [(0, 2.0), (2.0, 2.5), (2.5, 3.0), (3.0, 3.5), (3.5, 4.0), (4.0, 5.0), (5.0, 99.0)]


def _delta(a, b):
    a, b = _f(a), _f(b)
    return None if a is None or b is None else b - a


def _date(v):
    if v is None:
        return None
    return v.isoformat()[:10] if hasattr(v, "isoformat") else str(v)[:10]


# --- view models ---------------------------------------------------------------------------

RESIDUE_ID_KEYS = ("chain", "seq", "icode", "resname")


def residue_columns(res) -> dict:
    """Per-residue data as columns (the layout of :func:`rerefine.reports.store.pack_residues`).

    Accepts that column dict as is, or a list of row dicts with the same keys
    (``chain, seq, icode, resname, cc_before, cc_after, q_score_before, ...``).
    Numeric columns become float arrays (missing values NaN).
    """
    if not res:
        return {}
    if isinstance(res, dict):
        cols = dict(res)
    else:
        keys = list(res[0])
        if all(len(r) == len(keys) for r in res) and all(list(r) == keys for r in res[:: max(1, len(res) // 16)]):
            # Same keys in the same order (rows from one packed document): transpose at C speed.
            cols = dict(zip(keys, (list(c) for c in zip(*(r.values() for r in res)))))
        else:
            keys = list(dict.fromkeys(k for r in res for k in r))
            cols = {k: [r.get(k) for r in res] for k in keys}
    for k, c in cols.items():
        if k not in ("chain", "icode", "resname") and not isinstance(c, np.ndarray):
            cols[k] = plots.as_floats(c)
    return cols


def entry_view(d: dict) -> dict:
    """Normalise one entry's data to the entry-page view model.

    Input keys (all optional but ``pdb_id``): ``pdb_id``, ``emdb_id``, ``title``,
    ``resolution`` (Å), ``release_date``, ``authors`` (str or list), ``method``, ``status``,
    ``verdict``, ``reason``, ``version``, ``git_commit``, ``parameters`` (dict),
    ``timings`` (stage -> s), ``host``, ``metrics`` (``{"before": {...}, "after": {...}}``,
    names as :data:`rerefine.reports.db.METRIC_COLUMNS`: fit and geometry together),
    ``sharpening`` (``b_iso_before``, ``b_iso_after``, ``b_sharpen`` Å², ``method``,
    optional ``radial`` = ``{"s": [1/Å], "before": [...], "after": [...]}``), ``residues``
    (columns as :func:`residue_columns`: ``chain, seq, icode, resname`` and
    ``cc_*, q_score_*, atom_inclusion_*, b_iso_*`` for ``before``/``after``),
    ``artefacts`` (list of ``kind, path, size, sha256``).
    """
    pdb_id = str(d.get("pdb_id") or "").strip()
    if not pdb_id:
        raise InputError("site: an entry without a PDB id cannot get a page")
    metrics = {k: dict((d.get("metrics") or {}).get(k) or {}) for k in ("before", "after")}
    v = {
        "pdb_id": pdb_id,
        "slug": page_slug(pdb_id),
        "emdb_id": normal_emdb_id(d.get("emdb_id")) or (str(d["emdb_id"]) if d.get("emdb_id") else None),
        "title": d.get("title") or "",
        "resolution": _f(d.get("resolution")),
        "release_date": _date(d.get("release_date")),
        "authors": ", ".join(map(str, d["authors"])) if isinstance(d.get("authors"), (list, tuple)) else (d.get("authors") or ""),
        "method": d.get("method") or "",
        "status": d.get("status") or "unknown",
        "verdict": d.get("verdict"),
        "reason": d.get("reason"),
        "version": d.get("version"),
        "version_label": d.get("version_label"),
        "verdict_reasons": list(d.get("verdict_reasons") or []),
        "verdict_gate": d.get("verdict_gate"),
        "gates": ev.gate_rows(d.get("verdict_gates"), d.get("verdict_gate")),
        "history": list(d.get("history") or []),
        "git_commit": d.get("git_commit"),
        "parameters": d.get("parameters") or {},
        "timings": d.get("timings") or {},
        "host": d.get("host"),
        "metrics": metrics,
        "sharpening": {k: val for k, val in (d.get("sharpening") or {}).items() if val is not None},
        "residues": residue_columns(d.get("residues")),
        "artefacts": list(d.get("artefacts") or []),
    }
    v["placement"] = _placement(metrics["before"].get("placement"))
    v["waters"] = waters_view(metrics["after"].get("douse"))
    refinement = metrics["after"].get("refinement") if isinstance(metrics["after"].get("refinement"), dict) else {}
    v["warnings"] = [str(w) for w in refinement.get("warnings") or []] + \
        [str(w) for w in metrics["after"].get("validation_warnings") or []]
    v["contour_fallback"] = str(metrics["before"].get("contour_source") or "").startswith("default")
    eq = _f(metrics["before"].get("q_score_expected")) or _f(metrics["after"].get("q_score_expected"))
    v["expected_q"] = eq if eq is not None else expected_q(v["resolution"])
    return v


def _placement(p) -> dict | None:
    """The rigid-body placement check of the deposited model (:func:`rerefine.refine.rigidbody.placement_check`)
    as the entry page shows it: ``by``, ``misplaced`` and per group ``group, rotation_deg, shift``."""
    if not isinstance(p, dict) or not isinstance(p.get("groups"), list):
        return None
    rows = [{"group": str(g.get("group", "")), "rotation_deg": _f(g.get("rotation_deg")), "shift": _f(g.get("shift"))}
            for g in p["groups"] if isinstance(g, dict)]
    if not rows:
        return None
    return {"by": "chain" if p.get("by") == "chain" else "model", "misplaced": bool(p.get("misplaced")),
            "groups": rows}


def index_row(v: dict) -> dict:
    """One index-table row (flat dict keyed by :data:`INDEX_COLUMNS`) from an entry view model."""
    mb, ma = v["metrics"]["before"], v["metrics"]["after"]
    row = {
        "pdb_id": v["pdb_id"], "emdb_id": v["emdb_id"], "title": v["title"],
        "resolution": v["resolution"], "release_date": v["release_date"],
        "status": v["status"], "verdict": v["verdict"], "version": v["version"],
        "verdict_gate": v["verdict_gate"],
    }
    for m in ("cc_mask", "q_score", "atom_inclusion"):
        row[m + "_before"] = _f(mb.get(m))
        row[m + "_after"] = _f(ma.get(m))
    for g in INDEX_GEOMETRY + ARCHIVE_DELTAS:
        row["d_" + g] = _delta(mb.get(g), ma.get(g))
    return row


def _metric_rows(before: dict, after: dict, known: dict, others: bool) -> list[dict]:
    """Table rows for the metrics in ``known`` (in that order), then, if ``others``, every other
    numeric metric not in :data:`METRICS`, :data:`GEOMETRY` or :data:`HIDDEN_METRICS`."""
    keys = [k for k in known if k in before or k in after]
    if others:
        skip = set(METRICS) | set(GEOMETRY) | HIDDEN_METRICS
        keys += sorted(k for k in set(before) | set(after)
                       if k not in skip and (_f(before.get(k)) is not None or _f(after.get(k)) is not None))
    rows = []
    for k in keys:
        label, higher, dec = known.get(k, (k.replace("_", " "), None, 3))
        b, a = _f(before.get(k)), _f(after.get(k))
        d = None if a is None or b is None else a - b
        tone = ""
        if d is not None and higher is not None and abs(d) > 0.5 * 10 ** (-dec):
            tone = "better" if (d > 0) == higher else "worse"
        rows.append({"key": k, "label": label, "before": _fmtn(b, dec), "after": _fmtn(a, dec),
                     "delta": _fmtn(d, dec, sign=True), "tone": tone})
    return rows


def _fmtn(v, dec=3, sign=False):
    if v is None:
        return "–"
    s = f"{v:+.{dec}f}" if sign else f"{v:.{dec}f}"
    return s.replace("-", "−")


# --- per-entry charts ---------------------------------------------------------------------

def _residue_charts(v: dict) -> list[dict]:
    """One stacked CC / Q / B figure per chain, in chain order of first appearance."""
    res = v["residues"]
    chain_col = res.get("chain") or []
    if not chain_col:
        return []
    chains: dict[str, list[int]] = {}
    for i, ch in enumerate(chain_col):
        chains.setdefault(str(ch), []).append(i)
    n_all = len(chain_col)
    empty = [None] * n_all

    def column(key):
        c = res.get(key)
        return c if c is not None and len(c) == n_all else empty

    seq = plots.as_floats(column("seq"))
    cols = {k: plots.as_floats(column(k)) for k in
            ("cc_before", "cc_after", "q_score_before", "q_score_after", "b_iso_before", "b_iso_after")}
    has_b = bool(np.isfinite(cols["b_iso_before"]).any() or np.isfinite(cols["b_iso_after"]).any())
    eq = v["expected_q"]
    q_line = ((eq, f"expected Q at {v['resolution']:.2f} Å", "expected"),) if eq is not None and v["resolution"] else ()
    out = []
    for n, (ch, idx) in enumerate(chains.items()):
        idx = np.asarray(idx)
        x = seq[idx]
        # a gap in the residue numbering (missing residues, a ligand numbered apart) breaks the
        # lines: a straight segment across it would suggest values that were never measured
        gaps = np.flatnonzero((np.diff(x) > 1) | (np.diff(x) < 0)) + 1
        x = np.insert(x, gaps, np.nan)

        def pick(key):
            return np.insert(cols[key][idx], gaps, np.nan)

        cc_b, cc_a = pick("cc_before"), pick("cc_after")
        panels = [
            plots.Panel("CC", [plots.Series("before", x, cc_b, "before"),
                               plots.Series("after", x, cc_a, "after")], y_max=1.0),
            plots.Panel("Q-score", [plots.Series("before", x, pick("q_score_before"), "before"),
                                    plots.Series("after", x, pick("q_score_after"), "after")],
                        y_max=1.0, hlines=q_line),
        ]
        if has_b:
            panels.append(plots.Panel("B (Å²)", [plots.Series("before", x, pick("b_iso_before"), "before"),
                                                   plots.Series("after", x, pick("b_iso_after"), "after")]))
        ccb = cc_b[np.isfinite(cc_b)]
        cca = cc_a[np.isfinite(cc_a)]
        desc = (f"Chain {ch}, {len(idx)} residues. Per-residue CC, Q-score"
                f"{' and B-factor' if has_b else ''} before (deposited, dashed) and after "
                f"re-refinement (solid) against residue number.")
        if ccb.size and cca.size:
            desc += f" Mean CC {ccb.mean():.3f} before, {cca.mean():.3f} after."
        svg = plots.line_panels(f"res{n}", f"Chain {ch}: per-residue fit" + (" and B-factors" if has_b else ""),
                                desc, "residue number", panels)
        out.append({"chain": ch, "n": len(idx), "svg": svg, "has_b": has_b})
    return out


def _scatter_cc_q(v: dict) -> str | None:
    res = v["residues"]
    n = len(res.get("chain") or [])
    if not n:
        return None
    series = []
    for when in ("before", "after"):
        x = res.get("cc_" + when)
        y = res.get("q_score_" + when)
        if x is None or y is None:
            continue
        x, y = plots.as_floats(x), plots.as_floats(y)
        if x.size and x.size == y.size and (np.isfinite(x) & np.isfinite(y)).any():
            series.append(plots.Series(f"{when} ({'deposited' if when == 'before' else 're-refined'})", x, y, when))
    if not series:
        return None
    return plots.scatter("ccq", "Per-residue CC versus Q-score",
                         f"{n} residues; each point is one residue, x its real-space CC, "
                         "y its Q-score, before and after re-refinement. Residues far from the "
                         "trend are where the two metrics disagree.",
                         "per-residue CC", "per-residue Q-score", series, x_max=1.0, y_max=1.0)


def _sharpening_chart(v: dict) -> str | None:
    radial = v["sharpening"].get("radial") or {}
    s = radial.get("s") or []
    if not s:
        return None
    series = []
    for when, label in (("before", "deposited map"), ("after", "sharpened map")):
        amp = radial.get(when) or []
        y = [math.log(a) if _f(a) is not None and a > 0 else None for a in amp]
        series.append(plots.Series(label, [_f(q) ** 2 if _f(q) is not None else None for q in s], y, when))
    return plots.line_panels("sharp", "Radial amplitude profile of the map before and after sharpening",
                             "Natural logarithm of the spherically averaged Fourier amplitude against "
                             "s² (1/Å²), before and after sharpening; sharpening flattens the fall-off.",
                             "s² (1/Å²)", [plots.Panel("ln amplitude", series)], width=480, panel_height=220)


# --- rendering ------------------------------------------------------------------------------

def _template_dir() -> Path:
    return Path(str(resources.files("rerefine.site"))) / "templates"


def _static_dir() -> Path:
    return Path(str(resources.files("rerefine.site"))) / "static"


def make_environment() -> jinja2.Environment:
    """Jinja2 environment with autoescape ON for every template (they are all HTML)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_template_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, dec=3: _fmtn(_f(v), dec)
    env.filters["delta"] = lambda v, dec=3: _fmtn(_f(v), dec, sign=True)
    env.globals["rcsb_url"] = rcsb_url
    env.globals["emdb_url"] = emdb_url
    return env


def code_fingerprint() -> str:
    """Hash of the templates, static assets and rendering code: a change re-renders every page."""
    h = hashlib.sha256()
    for d in (_template_dir(), _static_dir()):
        for p in sorted(d.glob("*")):
            if p.is_file():
                h.update(p.name.encode())
                h.update(p.read_bytes())
    for mod in (__file__, plots.__file__):
        h.update(Path(mod).read_bytes())
    return h.hexdigest()[:16]


def _json_default(o):
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if isinstance(o, np.ndarray):
        # Arrays (per-residue columns) are hashed by their bytes, see data_hash.
        return ["ndarray", str(o.dtype), list(o.shape), hashlib.sha1(o.tobytes()).hexdigest()]
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def data_hash(obj, salt: str) -> str:
    """Hash of a page's data (plus ``salt``, the code fingerprint); numpy arrays by their bytes."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256((salt + text).encode()).hexdigest()[:24]


def _script_json(obj) -> str:
    """JSON safe to place in a script: ``<``, ``>``, ``&`` and line separators are escaped."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), default=_json_default, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# --- sources ----------------------------------------------------------------------------------

def _impact_item(pdb_id, title, resolution, prev_cc, cur_cc, d_q, prev_verdict, cur_verdict, why) -> dict:
    return {"pdb_id": pdb_id, "slug": page_slug(pdb_id), "title": title or "", "resolution": _f(resolution),
            "prev_cc": _f(prev_cc), "cur_cc": _f(cur_cc), "d_cc": _delta(prev_cc, cur_cc), "d_q": _f(d_q),
            "prev_verdict": prev_verdict, "cur_verdict": cur_verdict, "why": "; ".join(why)}


def _impact(both: list[dict], margin: float) -> dict:
    improved = sorted((i for i in both if not i["why"] and i["d_cc"] is not None and i["d_cc"] >= margin),
                      key=lambda i: -i["d_cc"])
    worsened = sorted((i for i in both if i["why"]), key=lambda i: i["d_cc"] if i["d_cc"] is not None else 0.0)
    return {"margin": margin, "n_both": len(both), "improved": improved, "worsened": worsened,
            "d_cc": [i["d_cc"] for i in both], "d_q": [i["d_q"] for i in both]}


class DictSource:
    """Site data held in memory (tests, previews).

    Parameters
    ----------
    entries : list of dict
        The latest result of every entry, as :func:`entry_view` takes them.
    engine : sqlalchemy.engine.Engine, optional
        A results database whose pipeline versions make the method-impact pages (through
        :class:`DatabaseSource`, i.e. :func:`rerefine.reports.queries.compare_versions`);
        without it the site has no version pages.
    """

    def __init__(self, entries: list[dict], engine=None):
        self._entries = {str(e["pdb_id"]): e for e in entries}
        self._versions = DatabaseSource(engine) if engine is not None else None

    def listing(self, since=None) -> list[dict]:
        """Every entry (index-level data is all there is); marker = hash of the entry."""
        return [{**e, "marker": data_hash(e, "")} for e in self._entries.values()]

    def detail(self, item: dict) -> dict:
        return self._entries[str(item["pdb_id"])]

    def version_summaries(self) -> list[dict]:
        return self._versions.version_summaries() if self._versions is not None else []


class DatabaseSource:
    """Site data from the results database, through :mod:`rerefine.reports.queries` only.

    The listing is one query (:func:`~rerefine.reports.queries.latest_results`); an entry's
    full detail (:func:`~rerefine.reports.queries.entry_detail`, a handful of primary-key
    lookups) is read only when its marker changed: the run id and time stamps from the
    listing, plus any entry :func:`~rerefine.reports.queries.changed_since` the previous
    build started (entry metadata edits that the listing does not show).
    """

    def __init__(self, engine):
        self.engine = engine

    def listing(self, since=None) -> list[dict]:
        from rerefine.reports import queries, db

        import datetime as dt

        if isinstance(since, str):
            since = dt.datetime.fromisoformat(since)
        changed = set(queries.changed_since(self.engine, since)) if since is not None else None
        labels = self._labels()
        out = []
        for r in queries.latest_results(self.engine):
            before = {n: r.get(f"{n}_before") for n in db.METRIC_COLUMNS}
            after = {n: r.get(f"{n}_after") for n in db.METRIC_COLUMNS}
            marker = None if changed is not None and r["pdb_id"] in changed else data_hash(
                [r["run_id"], r["status"], r["verdict"], r["verdict_gate"], r["updated_at"], r["finished_at"], r["title"],
                 r["emdb_id"], r["resolution"], r["release_date"], r["version"], r["params_hash"]], "")
            out.append({"pdb_id": r["pdb_id"], "emdb_id": r["emdb_id"], "title": r["title"],
                        "resolution": r["resolution"], "release_date": r["release_date"],
                        "status": r["status"], "verdict": r["verdict"], "reason": r["reason"],
                        "verdict_gate": r["verdict_gate"],
                        "version": r["version"],
                        "version_label": labels.get((r["version"], r["params_hash"]), r["version"]),
                        "metrics": {"before": before, "after": after},
                        "run_id": r["run_id"], "marker": marker})
        return out

    def _labels(self) -> dict:
        """(version, params_hash) -> label: the version string, plus ``@hash`` when one version
        string ran with several parameter sets."""
        from rerefine.reports import queries

        vs = queries.versions(self.engine)
        n = {}
        for v in vs:
            n[v["version"]] = n.get(v["version"], 0) + 1
        return {(v["version"], v["params_hash"]): v["version"] if n[v["version"]] == 1
                else f"{v['version']}@{v['params_hash'][:8]}" for v in vs}

    def detail(self, item: dict) -> dict:
        from rerefine.reports import queries

        d = queries.entry_detail(self.engine, item["pdb_id"], run_id=item.get("run_id"))
        if d is None:
            return item
        return entry_from_detail(d, item.get("version_label"))

    def version_summaries(self) -> list[dict]:
        from rerefine.reports import queries

        vs = queries.versions(self.engine)
        labels = self._labels()
        out = []
        prev = None
        for v in vs:
            label = labels[(v["version"], v["params_hash"])]
            spec = f"{v['version']}@{v['params_hash']}"
            dist = queries.distributions(self.engine, spec, metrics=("cc_mask",))
            comp = None
            if prev is not None:
                c = queries.compare_versions(self.engine, prev[1], spec)
                worse = {w["pdb_id"]: w["why"] for w in c["worse"]}
                comp = _impact([_impact_item(r["pdb_id"], r["title"], r["resolution"], r["cc_mask_a"], r["cc_mask_b"],
                                             r["d_q_score"], r["verdict_a"], r["verdict_b"], worse.get(r["pdb_id"], []))
                                for r in c["rows"]], CC_MARGIN)
            counts = dict(v["by_status"])
            counts.pop("done", None)
            counts.update(v["by_verdict"])
            out.append({"version": label, "created": v["created_at"], "git_commit": v["git_commit"],
                        "parameters": v["params"] or {}, "n": v["n_runs"], "counts": counts,
                        "median_dcc": dist["metrics"]["cc_mask"]["summary_delta"]["median"],
                        "previous": prev[0] if prev else None, "comp": comp})
            prev = (label, spec)
        return out


def entry_from_detail(d: dict, version_label: str | None = None) -> dict:
    """Entry dict (input of :func:`entry_view`) from :func:`rerefine.reports.queries.entry_detail`."""
    from rerefine.reports import db

    e, run = d["entry"], d.get("run") or {}
    details = e.get("method_details") or {}
    out = {k: e.get(k) for k in ("pdb_id", "emdb_id", "title", "resolution", "release_date", "method")}
    out["authors"] = details.get("authors") or ""
    if not run:
        out["status"] = "no run"
        return out
    before = dict(run.get("before") or {k: run.get(f"{k}_before") for k in db.METRIC_COLUMNS})
    after = dict(run.get("after") or {k: run.get(f"{k}_after") for k in db.METRIC_COLUMNS})
    sharp = {k: run.get(k) for k in ("b_iso_before", "b_iso_after", "b_sharpen")}
    sharp["method"] = run.get("sharpening_method")
    for m in (after, before):  # a radial amplitude profile, if the pipeline kept one
        sub = m.get("sharpening") if isinstance(m.get("sharpening"), dict) else {}
        if sub.get("radial") and "radial" not in sharp:
            sharp["radial"] = sub["radial"]
    out.update({
        "status": run.get("status"), "verdict": run.get("verdict"), "reason": run.get("reason"),
        "verdict_reasons": run.get("verdict_reasons") or [],
        "verdict_gate": run.get("verdict_gate"), "verdict_gates": run.get("verdict_gates") or [],
        "version": run.get("version"), "version_label": version_label or run.get("version"),
        "git_commit": run.get("git_commit"), "parameters": run.get("params") or {},
        "timings": run.get("timings") or {}, "host": run.get("host"),
        "metrics": {"before": before, "after": after}, "sharpening": sharp,
        "residues": residue_columns(run.get("per_residue")), "artefacts": run.get("artefacts") or [],
        "history": [{"version": h.get("version"), "status": h.get("status"), "verdict": h.get("verdict"),
                     "reason": h.get("reason") if h.get("status") != "done" else None,
                     "cc_mask_before": h.get("cc_mask_before"), "cc_mask_after": h.get("cc_mask_after"),
                     "finished_at": _date(h.get("finished_at"))} for h in d.get("history") or []],
    })
    return out


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
        self.salt = code_fingerprint()
        self.full = full
        self.copy_artefacts = copy_artefacts
        self.manifest_path = self.out / MANIFEST
        old = {}
        if not full and self.manifest_path.is_file():
            try:
                old = json.loads(self.manifest_path.read_text())
            except (OSError, ValueError):
                old = {}
        same = old.get("salt") == self.salt
        self.old = old.get("pages", {}) if same else {}
        self.old_markers = old.get("markers", {}) if same else {}
        self.old_started = old.get("started") if same else None
        self.new: dict[str, str] = {}
        self.markers: dict[str, str] = {}
        self.report = BuildReport(self.out)
        self._tpl = {}

    def template(self, name):
        if name not in self._tpl:
            self._tpl[name] = self.env.get_template(name)
        return self._tpl[name]

    def keep(self, rel: str, marker: str) -> bool:
        """True (and the page is kept as is) when the source marker of ``rel`` is the one of the
        previous build and its file exists: the data were not even read."""
        if self.old_markers.get(rel) == marker and rel in self.old and (self.out / rel).is_file():
            self.new[rel] = self.old[rel]
            self.markers[rel] = marker
            self.report.pages_total += 1
            return True
        return False

    def page(self, rel: str, data, render, marker: str | None = None) -> bool:
        """Write page ``rel`` with ``render()`` unless its ``data`` hash is unchanged and the file exists."""
        h = data_hash(data, self.salt)
        self.new[rel] = h
        if marker is not None:
            self.markers[rel] = marker
        self.report.pages_total += 1
        target = self.out / rel
        if self.old.get(rel) == h and target.is_file():
            return False
        write_atomic(target, render())
        self.report.pages_written += 1
        self.report.written.append(rel)
        return True

    def static(self) -> None:
        dest = self.out / "static"
        for p in sorted(_static_dir().glob("*")):
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
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_name(".tmp-" + dst.name)
                    try:
                        if tmp.exists():
                            tmp.unlink()
                        os.link(src, tmp)
                    except OSError:
                        shutil.copy2(src, tmp)
                    os.replace(tmp, dst)
                item["href"] = "../" + rel
                if item["size"] is None:
                    item["size"] = src.stat().st_size
            out.append(item)
        return out

    def finish(self, started: str) -> None:
        # Pages of the previous build that no longer exist (entry withdrawn, version gone).
        for rel in set(self.old) - set(self.new):
            p = self.out / rel
            if p.is_file():
                p.unlink()
                self.report.pages_removed += 1
        write_atomic(self.manifest_path, json.dumps({"salt": self.salt, "started": started, "pages": self.new,
                                                     "markers": self.markers}, sort_keys=True, indent=0))


def render_entry(b: SiteBuilder, v: dict) -> str:
    """HTML of one entry page from its view model."""
    ctx = {
        "root": "../",
        "e": v,
        "rcsb": rcsb_url(v["pdb_id"]),
        "emdb": emdb_url(v["emdb_id"]),
        "metric_rows": _metric_rows(v["metrics"]["before"], v["metrics"]["after"], METRICS, True),
        "geometry_rows": _metric_rows(v["metrics"]["before"], v["metrics"]["after"], GEOMETRY, False),
        "validation_rows": _metric_rows(v["metrics"]["before"], v["metrics"]["after"], ev.VALIDATION, False),
        "crossval_rows": _metric_rows(v["metrics"]["before"], v["metrics"]["after"], ev.CROSSVAL, False),
        "changed_residues": ev.changed_residues(v["metrics"]["before"].get("validation_residues"),
                                                v["metrics"]["after"].get("validation_residues")),
        "rama_plots": ev.rama_plots(v["metrics"]["before"].get("validation_residues"),
                                    v["metrics"]["after"].get("validation_residues")),
        "rama_credit": ev.ramaplot.CREDIT,
        "residue_charts": _residue_charts(v),
        "scatter": _scatter_cc_q(v),
        "sharpening_chart": _sharpening_chart(v),
        "downloads": b.artefact_links(v),
        "version_slug": page_slug(v["version_label"] or v["version"]) if v["version"] else None,
        "parameters": sorted((str(k), json.dumps(val, default=_json_default) if not isinstance(val, str) else val)
                             for k, val in v["parameters"].items()),
    }
    return b.template("entry.html").render(**ctx)


def _bin_label(lo, hi):
    if lo == 0:
        return f"< {hi:g} Å"
    if hi >= 99:
        return f"≥ {lo:g} Å"
    return f"{lo:g}–{hi:g} Å"


def render_archive(b: SiteBuilder, rows: list[dict]) -> str:
    """Archive-wide page: metric-vs-metric scatters across entries and improvement by resolution bin."""
    done = [r for r in rows if r["cc_mask_after"] is not None]

    def ser(label, xk, yk, cls):
        return plots.Series(label, [r[xk] for r in done], [r[yk] for r in done], cls)

    n = len(done)
    sc_q = plots.scatter(
        "arch-q", "CCmask versus mean Q-score across entries",
        f"{n} entries; each point is one entry, x its CCmask, y its mean Q-score, for the deposited "
        "model and after re-refinement. CCmask uses all model parameters and the resolution; "
        "Q-score does not.", "CCmask", "mean Q-score",
        [ser("deposited", "cc_mask_before", "q_score_before", "before"), ser("re-refined", "cc_mask_after", "q_score_after", "after")],
        width=480, height=400)
    sc_ai = plots.scatter(
        "arch-ai", "CCmask versus atom inclusion across entries",
        f"{n} entries; x CCmask, y fraction of atoms inside the map contour, deposited and re-refined.",
        "CCmask", "atom inclusion",
        [ser("deposited", "cc_mask_before", "atom_inclusion_before", "before"), ser("re-refined", "cc_mask_after", "atom_inclusion_after", "after")],
        width=480, height=400)
    val_sc = []
    for key, lab in (("d_rama_favored_pct", "Δ Ramachandran favoured (%)"), ("d_clashscore", "Δ clashscore")):
        pts = [r for r in done if r.get(key) is not None and r.get("d_cc_mask_input_b") is not None]
        series = [plots.Series(v, [r["d_cc_mask_input_b"] for r in pts if r["verdict"] == v],
                               [r[key] for r in pts if r["verdict"] == v], f"v-{v}")
                  for v in ("improved", "unchanged", "worse")]
        val_sc.append(plots.scatter(
            f"arch-val-{key}", f"CCmask gain against {lab[2:]} change",
            f"{len(pts)} entries with validation before and after; x: CCmask of the re-refined coordinates "
            f"with the input B-factors minus the deposited model's CCmask, y: {lab}; one point per entry, "
            "by verdict.", "Δ CCmask (coordinates, input B)", lab, series, width=480, height=400))
    groups_cc, groups_q = [], []
    bins = []
    for lo, hi in RESOLUTION_BINS:
        sel = [r for r in done if r["resolution"] is not None and lo <= r["resolution"] < hi]
        lab = _bin_label(lo, hi)
        dcc = [_delta(r["cc_mask_before"], r["cc_mask_after"]) for r in sel]
        dq = [_delta(r["q_score_before"], r["q_score_after"]) for r in sel]
        groups_cc.append((lab, dcc))
        groups_q.append((lab, dq))
        verdicts = {}
        for r in sel:
            verdicts[r["verdict"] or "none"] = verdicts.get(r["verdict"] or "none", 0) + 1
        vals = sorted(x for x in dcc if x is not None)
        bins.append({"label": lab, "n": len(sel), "improved": verdicts.get("improved", 0),
                     "unchanged": verdicts.get("unchanged", 0), "worse": verdicts.get("worse", 0),
                     "median_dcc": vals[len(vals) // 2] if vals else None})
    box_cc = plots.box_by_group("arch-dcc", "Change in CCmask by resolution bin",
                                "Box plots of CCmask after minus before re-refinement per resolution bin "
                                "(box: quartiles; line: median; whiskers: range).",
                                "map resolution", "ΔCCmask", groups_cc)
    box_q = plots.box_by_group("arch-dq", "Change in mean Q-score by resolution bin",
                               "Box plots of mean Q-score after minus before re-refinement per resolution bin.",
                               "map resolution", "ΔQ-score", groups_q)
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    return b.template("archive.html").render(root="", n_entries=len(rows), n_done=n, status=sorted(status.items()),
                                             sc_q=sc_q, sc_ai=sc_ai, box_cc=box_cc, box_q=box_q, bins=bins,
                                             val_sc=val_sc)


def build_site(source, out_dir, *, full: bool = False, copy_artefacts: bool = True, jobs: int = 1) -> BuildReport:
    """Build (or update) the static site in ``out_dir`` from ``source``.

    Parameters
    ----------
    source
        :class:`DatabaseSource` or :class:`DictSource`: ``listing(since)`` (index-level
        entry dicts with a ``marker`` that changes whenever the entry's data change, or
        ``None`` to force a read), ``detail(item)`` (full entry dict, see
        :func:`entry_view`) and ``version_summaries()``.
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
    copy_viewer_assets(_static_dir(), b.out / "static")
    since = None if (full or not b.old) else b.old_started
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
                          "table": b.new["data/index.js"]},
           lambda: b.template("index.html").render(root="", columns=INDEX_COLUMNS, first=first, n=len(rows),
                                                   statuses=statuses, verdicts=verdicts,
                                                   data_version=b.new["data/index.js"][:10]))
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
    return rel, b.new[rel], item.get("marker"), b.report.pages_written > before


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
                    b.new[rel] = h
                    if marker is not None:
                        b.markers[rel] = marker
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
        item = {"version": s["version"], "slug": page_slug(s["version"]), "created": _date(s.get("created")),
                "n": s["n"], "counts": sorted((s.get("counts") or {}).items()), "median_dcc": s.get("median_dcc"),
                "previous": s.get("previous"), "previous_slug": page_slug(s["previous"]) if s.get("previous") else None,
                "git_commit": s.get("git_commit"),
                "n_both": comp["n_both"] if comp else None,
                "n_improved": len(comp["improved"]) if comp else None,
                "n_worsened": len(comp["worsened"]) if comp else None}
        items.append(item)
        params = sorted((str(k), json.dumps(val, default=_json_default)) for k, val in (s.get("parameters") or {}).items())
        data = {"item": item, "comp": comp, "params": params}

        def render(item=item, comp=comp, params=params):
            box = None
            if comp and comp["n_both"]:
                box = plots.box_by_group(
                    "ver-d", f"Change in re-refined CCmask and Q-score, {item['version']} vs {item['previous']}",
                    f"Per-entry difference of the re-refined CCmask and mean Q-score between version "
                    f"{item['version']} and version {item['previous']}, over the {comp['n_both']} entries both processed.",
                    "metric", "version difference", [("ΔCCmask", comp["d_cc"]), ("ΔQ-score", comp["d_q"])],
                    width=480, height=280)
            return b.template("version.html").render(root="../", v=item, comp=comp, box=box, limit=200,
                                                     parameters=params)

        b.page(f"version/{item['slug']}.html", data, render)
    b.page("versions.html", items, lambda: b.template("versions.html").render(root="", versions=items[::-1]))
