"""What the entry page shows of the verdict's gates, the fit figures B cannot inflate, the half-map
cross-validation and the validation: table labels, the residues whose class changed, the
Ramachandran plots before and after (:mod:`rerefine.reports.ramaplot`).

The entry page's other view models are in :mod:`rerefine.reports.site_views`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from rerefine.reports import ramaplot

# name -> (label, higher is better, decimals), as site.METRICS.
FIT_EXTRA = {
    "cc_mask_input_b": ("CCmask, coordinates with the input B-factors", True, 3),
}
# Half-map cross-validation: "before" is the deposited model, "after" the model refined against
# half-map 1 only (not the re-refined model of the other tables).
CROSSVAL = {
    "fsc_avg_work": ("FSC average vs half-map 1 (work)", True, 3),
    "fsc_avg_free": ("FSC average vs half-map 2 (free)", True, 3),
    "cc_mask_work": ("CCmask vs half-map 1 (work)", True, 3),
    "cc_mask_free": ("CCmask vs half-map 2 (free)", True, 3),
}
VALIDATION = {
    "rama_favored_pct": ("Ramachandran favoured (%)", True, 1),
    "rama_outliers": ("Ramachandran outliers", False, 0),
    "rama_outliers_pct": ("Ramachandran outliers (%)", False, 2),
    "rotamer_outliers": ("Rotamer outliers", False, 0),
    "rotamer_outliers_pct": ("Rotamer outliers (%)", False, 2),
    "cbeta_outliers": ("C-beta deviations ≥ 0.25 Å", False, 0),
    "clashscore": ("Clashscore", False, 2),
    "cis_nonpro_peptides": ("Cis non-proline peptides", False, 0),
    "twisted_nonpro_peptides": ("Twisted non-proline peptides", False, 0),
    "cis_peptides": ("Cis peptides (all)", None, 0),
    "twisted_peptides": ("Twisted peptides (all)", None, 0),
    "bond_rmsd_heavy": ("RMSD bonds, non-H atoms (Å)", False, 4),
    "angle_rmsd_heavy": ("RMSD angles, non-H atoms (°)", False, 3),
}
#: Keys of the metric dicts that are not plain fit figures of the main table.
NOT_IN_FIT_TABLE = set(CROSSVAL) | set(VALIDATION)

GATE_LABELS = {"geometry": "Geometry (restraint RMSDs)", "validation": "Validation (MolProbity-class)",
               "cross-validation": "Half-map cross-validation", "fit": "Fit of the coordinates"}


def gate_rows(gates: list[dict] | None, deciding: str | None) -> list[dict]:
    """The verdict's gates for the page: label, status, detail and whether it decided."""
    return [{"name": g.get("name"), "label": GATE_LABELS.get(g.get("name"), str(g.get("name"))),
             "status": g.get("status"), "detail": g.get("detail"), "decided": g.get("name") == deciding}
            for g in gates or [] if isinstance(g, dict)]


def _key(r: dict) -> tuple:
    return (str(r.get("chain", "")), int(r.get("seq", 0)), str(r.get("icode") or "").strip())


def _label(r: dict) -> str:
    return f"{r.get('chain', '')} {r.get('resname', '')} {r.get('seq', '')}{str(r.get('icode') or '').strip()}"


def changed_residues(before: list[dict] | None, after: list[dict] | None) -> list[dict]:
    """Residues whose Ramachandran or rotamer class, or C-beta outlier status, changed.

    Rows: ``residue``, ``what`` (``Ramachandran``/``rotamer``/``C-beta``), ``before``, ``after``,
    ``tone`` (``better``/``worse``/``""``), in model order.
    """
    rank = {"favored": 2, "allowed": 1, "outlier": 0}
    a_by = {_key(r): r for r in after or []}
    out = []
    for rb in before or []:
        ra = a_by.get(_key(rb))
        if ra is None:
            continue
        for field, what in (("rama", "Ramachandran"), ("rotamer", "rotamer")):
            x, y = rb.get(field), ra.get(field)
            if x != y and (x is not None or y is not None):
                tone = ""
                if x in rank and y in rank:
                    tone = "better" if rank[y] > rank[x] else "worse"
                out.append({"residue": _label(rb), "what": what, "before": x or "–", "after": y or "–",
                            "tone": tone})
        cb0, cb1 = rb.get("cbeta_dev"), ra.get("cbeta_dev")
        if cb0 is not None and cb1 is not None and (cb0 >= 0.25) != (cb1 >= 0.25):
            out.append({"residue": _label(rb), "what": "C-beta", "before": f"{cb0:.2f} Å", "after": f"{cb1:.2f} Å",
                        "tone": "better" if cb1 < 0.25 else "worse"})
    return out


@lru_cache(maxsize=1)
def general_rama_grid() -> np.ndarray | None:
    """The Top8000 general-case Ramachandran table as a (φ, ψ) grid, or None when the Top8000
    folder is not installed (the page then says so instead of drawing)."""
    from rerefine.common.errors import RerefineError
    from rerefine.refine.validation.tables import default_top8000_dir, load_table

    try:
        t = load_table(str(default_top8000_dir()), "ramachandran/rama8000-general-noGPIVpreP.data")
    except (RerefineError, OSError):
        return None
    n = [int(x) for x in t.nbins]
    return np.asarray(t.values, float).reshape(n[0], n[1])


def rama_plots(before: list[dict] | None, after: list[dict] | None) -> list[dict]:
    """Ramachandran plots (SVG) of the deposited and the re-refined model; empty without data."""
    if not before and not after:
        return []
    grid = general_rama_grid()
    if grid is None:
        return []
    out = []
    for stage, rows, title in (("before", before, "deposited model"), ("after", after, "re-refined model")):
        if not rows:
            continue
        pts = [{"phi": r.get("phi"), "psi": r.get("psi"), "rama": r.get("rama"), "label": _label(r)} for r in rows]
        n_out = sum(1 for r in rows if r.get("rama") == "outlier")
        out.append({"stage": stage, "title": title, "n_outliers": n_out,
                    "svg": ramaplot.rama_svg(f"rama-{stage}", f"Ramachandran plot, {title}", pts, grid)})
    return out
