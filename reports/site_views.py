"""The site's view models: one entry's data as its page shows it, the index rows, the tables of
before/after figures, and the identifiers and outside links the pages carry.

A view model is a plain dict: :func:`entry_view` takes an entry dict (from a source of
:mod:`rerefine.reports.site_sources`) and normalises it; :func:`index_row` flattens it to one row
of the index table (:data:`INDEX_COLUMNS`); :func:`metric_rows` makes the before/after tables.
"""

from __future__ import annotations

import math
import re

import numpy as np

from rerefine.common.errors import InputError
from rerefine.reports import entry_validation as ev
from rerefine.reports import plots
from rerefine.reports.numbers import finite_float
from rerefine.reports.waters import waters_view

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


# --- figures -----------------------------------------------------------------------------

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


def delta(a, b):
    """``b - a`` when both are finite numbers, else None (the change from before to after)."""
    a, b = finite_float(a), finite_float(b)
    return None if a is None or b is None else b - a


def date_text(v):
    """``YYYY-MM-DD`` of a date, datetime or ISO text; None stays None."""
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
        "resolution": finite_float(d.get("resolution")),
        "release_date": date_text(d.get("release_date")),
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
    eq = (finite_float(metrics["before"].get("q_score_expected"))
          or finite_float(metrics["after"].get("q_score_expected")))
    v["expected_q"] = eq if eq is not None else expected_q(v["resolution"])
    return v


def _placement(p) -> dict | None:
    """The rigid-body placement check of the deposited model (:func:`rerefine.refine.rigidbody.placement_check`)
    as the entry page shows it: ``by``, ``misplaced`` and per group ``group, rotation_deg, shift``."""
    if not isinstance(p, dict) or not isinstance(p.get("groups"), list):
        return None
    rows = [{"group": str(g.get("group", "")), "rotation_deg": finite_float(g.get("rotation_deg")),
             "shift": finite_float(g.get("shift"))} for g in p["groups"] if isinstance(g, dict)]
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
        row[m + "_before"] = finite_float(mb.get(m))
        row[m + "_after"] = finite_float(ma.get(m))
    for g in INDEX_GEOMETRY + ARCHIVE_DELTAS:
        row["d_" + g] = delta(mb.get(g), ma.get(g))
    return row


def metric_rows(before: dict, after: dict, known: dict, others: bool) -> list[dict]:
    """Table rows for the metrics in ``known`` (in that order), then, if ``others``, every other
    numeric metric not in :data:`METRICS`, :data:`GEOMETRY` or :data:`HIDDEN_METRICS`."""
    keys = [k for k in known if k in before or k in after]
    if others:
        skip = set(METRICS) | set(GEOMETRY) | HIDDEN_METRICS
        keys += sorted(k for k in set(before) | set(after)
                       if k not in skip and (finite_float(before.get(k)) is not None
                                             or finite_float(after.get(k)) is not None))
    rows = []
    for k in keys:
        label, higher, dec = known.get(k, (k.replace("_", " "), None, 3))
        b, a = finite_float(before.get(k)), finite_float(after.get(k))
        d = None if a is None or b is None else a - b
        tone = ""
        if d is not None and higher is not None and abs(d) > 0.5 * 10 ** (-dec):
            tone = "better" if (d > 0) == higher else "worse"
        rows.append({"key": k, "label": label, "before": fmt_number(b, dec), "after": fmt_number(a, dec),
                     "delta": fmt_number(d, dec, sign=True), "tone": tone})
    return rows


def fmt_number(v, dec=3, sign=False):
    """A figure as the pages print it: ``dec`` decimals (with its sign if ``sign``), a true minus
    sign, and an en dash for a missing value."""
    if v is None:
        return "–"
    s = f"{v:+.{dec}f}" if sign else f"{v:.{dec}f}"
    return s.replace("-", "−")
