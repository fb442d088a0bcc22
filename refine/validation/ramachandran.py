"""Ramachandran classes with MolProbity's Top8000 contours.

Definition (MolProbity ``ramalyze``; Top8000 reference data, Williams et al. (2018)
Protein Sci. 27:293-315, CC-BY 4.0): each amino acid with both neighbours peptide-linked gets
phi = C(i-1)-N-CA-C and psi = N-CA-C-N(i+1) (degrees) and a category:

* ``glycine`` (GLY), else
* ``cis-proline`` / ``trans-proline`` (PRO; cis when omega = CA(i-1)-C(i-1)-N-CA is within
  30° of 0), else
* ``pre-proline`` (the next residue is a PRO), else
* ``isoleucine or valine`` (ILE, VAL), else
* ``general``.

The category's percentile table (2° bins, interpolated) gives the score; *favoured* when
score ≥ 2 %, *outlier* below 0.05 % (general), 0.2 % (cis-Pro) or 0.1 % (the others),
*allowed* in between -- MolProbity's thresholds.
"""

from __future__ import annotations

import math

import numpy as np

from .residues import ProteinResidue, torsion
from .tables import load_table

TABLES = {
    "general": "ramachandran/rama8000-general-noGPIVpreP.data",
    "glycine": "ramachandran/rama8000-gly-sym.data",
    "cis-proline": "ramachandran/rama8000-cispro.data",
    "trans-proline": "ramachandran/rama8000-transpro.data",
    "pre-proline": "ramachandran/rama8000-prepro-noGP.data",
    "isoleucine or valine": "ramachandran/rama8000-ileval-nopreP.data",
}
FAVORED = 0.02
OUTLIER = {"general": 0.0005, "cis-proline": 0.002}
OUTLIER_DEFAULT = 0.001


def classify(category: str, score: float) -> str:
    """``favored`` / ``allowed`` / ``outlier`` for a percentile ``score`` (fraction) of ``category``."""
    if score >= FAVORED:
        return "favored"
    if score >= OUTLIER.get(category, OUTLIER_DEFAULT):
        return "allowed"
    return "outlier"


def omega(residues: list[ProteinResidue], i: int) -> float | None:
    """Omega of residue ``i``: CA(i-1)-C(i-1)-N(i)-CA(i), degrees, or None without a linked predecessor."""
    r = residues[i]
    if r.prev < 0:
        return None
    p = residues[r.prev]
    return torsion([(p, "CA"), (p, "C"), (r, "N"), (r, "CA")])


def phi_psi(residues: list[ProteinResidue], i: int) -> tuple[float | None, float | None]:
    """(phi, psi) of residue ``i`` in degrees; None where a neighbour or atom is missing."""
    r = residues[i]
    p = residues[r.prev] if r.prev >= 0 else None
    n = residues[r.next] if r.next >= 0 else None
    phi = torsion([(p, "C"), (r, "N"), (r, "CA"), (r, "C")]) if p is not None else None
    psi = torsion([(r, "N"), (r, "CA"), (r, "C"), (n, "N")]) if n is not None else None
    return phi, psi


def category(residues: list[ProteinResidue], i: int) -> str:
    """MolProbity Ramachandran category of residue ``i`` (see module docstring)."""
    r = residues[i]
    if r.resname == "GLY":
        return "glycine"
    if r.resname == "PRO":
        om = omega(residues, i)
        return "cis-proline" if om is not None and abs(om) < 30.0 else "trans-proline"
    if r.next >= 0 and residues[r.next].resname == "PRO":
        return "pre-proline"
    if r.resname in ("ILE", "VAL"):
        return "isoleucine or valine"
    return "general"


def evaluate(residues: list[ProteinResidue], top8000_dir: str) -> list[dict]:
    """Per residue: ``phi``, ``psi`` (deg), ``rama_category``, ``rama_score`` (%) and ``rama`` class.

    Residues without both phi and psi get None for all but phi/psi.
    """
    rows = []
    by_cat: dict[str, list[int]] = {}
    pts = []
    for i in range(len(residues)):
        phi, psi = phi_psi(residues, i)
        row = {"phi": phi, "psi": psi, "rama_category": None, "rama_score": None, "rama": None}
        if phi is not None and psi is not None:
            cat = category(residues, i)
            row["rama_category"] = cat
            by_cat.setdefault(cat, []).append(i)
        rows.append(row)
        pts.append((math.nan if phi is None else phi, math.nan if psi is None else psi))
    pts = np.array(pts, dtype=np.float64).reshape(-1, 2)
    for cat, idx in by_cat.items():
        scores = load_table(str(top8000_dir), TABLES[cat]).lookup(pts[idx])
        for i, s in zip(idx, scores.tolist()):
            rows[i]["rama_score"] = 100.0 * s
            rows[i]["rama"] = classify(cat, s)
    return rows
