"""Side-chain rotamer classes with MolProbity's Top8000 rotamer grids.

Definition (MolProbity ``rotalyze``; Top8000 reference data, Williams et al. (2018) Protein
Sci. 27:293-315, CC-BY 4.0): the side-chain dihedrals chi1..chin (degrees, taken in
[0, 360)) are looked up in the amino acid's "rotamericity" grid (interpolated; grids spanning
0-180° on a dimension apply the symmetry of Asp chi2, Glu chi3, Phe/Tyr chi2): *favoured*
at ≥ 2 %, *outlier* below 0.3 %, *allowed* in between.

Scored: CYS SER THR VAL (chi1), ASN ASP HIS ILE LEU PHE TYR TRP (chi1, chi2), GLN GLU MET
(chi1-3), PRO (chi1). **ARG and LYS are not scored**: their grids are not in the Top8000 copy
used here (the reference figures of cctbx leave them out for the same reason). GLY, ALA and
residues missing a chi atom are not scored (class None).

``rotamer_name``: the named Top8000 rotamer (``rotamer_central_values``) nearest to the
chis (largest per-chi angular difference), ``OUTLIER`` for outliers.
"""

from __future__ import annotations


import numpy as np

from .residues import ProteinResidue, torsion
from .tables import load_table, rotamer_central_values

FAVORED = 0.02
OUTLIER = 0.003

_CHI1 = {"SER": "OG", "CYS": "SG", "THR": "OG1", "VAL": "CG1", "ILE": "CG1"}
_CHI2 = {"ILE": ("CB", "CG1", "CD1"), "LEU": ("CB", "CG", "CD1"), "ASN": ("CB", "CG", "OD1"),
         "ASP": ("CB", "CG", "OD1"), "HIS": ("CB", "CG", "ND1"), "PHE": ("CB", "CG", "CD1"),
         "TYR": ("CB", "CG", "CD1"), "TRP": ("CB", "CG", "CD1"), "MET": ("CB", "CG", "SD"),
         "GLN": ("CB", "CG", "CD"), "GLU": ("CB", "CG", "CD"), "PRO": ("CB", "CG", "CD")}
_CHI3 = {"MET": ("CG", "SD", "CE"), "GLN": ("CG", "CD", "OE1"), "GLU": ("CG", "CD", "OE1")}

#: residue name -> (grid file, number of chis scored)
GRIDS = {
    "CYS": ("rotamer/rota8000-cys.data", 1), "SER": ("rotamer/rota8000-ser.data", 1),
    "THR": ("rotamer/rota8000-thr.data", 1), "VAL": ("rotamer/rota8000-val.data", 1),
    "PRO": ("rotamer/rota8000-pro.data", 1),
    "ASN": ("rotamer/rota8000-asn.data", 2), "ASP": ("rotamer/rota8000-asp.data", 2),
    "HIS": ("rotamer/rota8000-his.data", 2), "ILE": ("rotamer/rota8000-ile.data", 2),
    "LEU": ("rotamer/rota8000-leu.data", 2), "PHE": ("rotamer/rota8000-phetyr.data", 2),
    "TYR": ("rotamer/rota8000-phetyr.data", 2), "TRP": ("rotamer/rota8000-trp.data", 2),
    "GLN": ("rotamer/rota8000-gln.data", 3), "GLU": ("rotamer/rota8000-glu.data", 3),
    "MET": ("rotamer/rota8000-met.data", 3),
}
NOT_SCORED = ("ARG", "LYS")


def chis(r: ProteinResidue, n: int) -> list[float] | None:
    """chi1..chin of ``r`` in degrees [0, 360), or None when an atom is missing."""
    x1 = _CHI1.get(r.resname, "CG")
    out = [torsion([(r, "N"), (r, "CA"), (r, "CB"), (r, x1)])]
    if n >= 2:
        a, b, c = _CHI2[r.resname]
        out.append(torsion([(r, "CA"), (r, a), (r, b), (r, c)]))
    if n >= 3:
        a, b, c = _CHI3[r.resname]
        out.append(torsion([(r, "CB"), (r, a), (r, b), (r, c)]))
    if any(v is None for v in out):
        return None
    return [v % 360.0 for v in out]


def classify(score: float) -> str:
    """``favored`` (≥ 2 %) / ``allowed`` / ``outlier`` (< 0.3 %) for a rotamericity fraction."""
    if score >= FAVORED:
        return "favored"
    if score >= OUTLIER:
        return "allowed"
    return "outlier"


def rotamer_name(top8000_dir: str, resname: str, chi: list[float]) -> str | None:
    """Nearest named Top8000 rotamer (smallest largest-per-chi angular difference)."""
    best, best_d = None, 1e9
    for name, _, means, _ in rotamer_central_values(str(top8000_dir), resname):
        k = min(len(means), len(chi))
        if k == 0:
            continue
        d = max(abs((chi[j] - means[j] + 180.0) % 360.0 - 180.0) for j in range(k))
        if d < best_d:
            best, best_d = name, d
    return best


def evaluate(residues: list[ProteinResidue], top8000_dir: str) -> list[dict]:
    """Per residue: ``chis`` (deg or None), ``rotamer_score`` (%), ``rotamer`` class, ``rotamer_name``."""
    rows = [{"chis": None, "rotamer_score": None, "rotamer": None, "rotamer_name": None} for _ in residues]
    groups: dict[str, list[tuple[int, list[float]]]] = {}
    for i, r in enumerate(residues):
        spec = GRIDS.get(r.resname)
        if spec is None:
            continue
        c = chis(r, spec[1])
        if c is None:
            continue
        rows[i]["chis"] = c
        groups.setdefault(spec[0], []).append((i, c))
    for grid, items in groups.items():
        table = load_table(str(top8000_dir), grid)
        scores = table.lookup(np.array([c for _, c in items], dtype=np.float64))
        for (i, c), s in zip(items, scores.tolist()):
            cls = classify(s)
            rows[i]["rotamer_score"] = 100.0 * s
            rows[i]["rotamer"] = cls
            rows[i]["rotamer_name"] = "OUTLIER" if cls == "outlier" else rotamer_name(
                top8000_dir, residues[i].resname, c)
    return rows
