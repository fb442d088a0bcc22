"""Peptide conformations (cis, twisted) and chirality inversions.

Omega (MolProbity ``omegalyze``): omega(i) = CA(i-1)-C(i-1)-N(i)-CA(i), degrees, for
peptide-linked residues; *cis* when |omega| < 30°, *twisted* when 30° ≤ |omega| < 150°,
else *trans*. Cis and twisted peptides are counted separately for X-Pro (residue i a PRO)
and the others, as omegalyze reports them.

Chirality inversion: a tetrahedral centre whose signed chiral volume has the opposite sign
of its dictionary value (restraints with "both" signs excluded), as cctbx counts
``n_chiral_inverted``; needs the model's restraints (monomer library). Without a library,
only protein CA centres are checked (L-amino acids: volume of CA, N, C, CB positive,
the dictionary sign for L residues; D-amino acids in gemmi's table count as inverted when
positive).
"""

from __future__ import annotations

import numpy as np

from .ramachandran import omega
from .residues import D_AMINO, ProteinResidue

CIS_MAX = 30.0
TRANS_MIN = 150.0


def omega_class(om: float | None) -> str | None:
    """``cis`` / ``twisted`` / ``trans`` for omega in degrees (None stays None)."""
    if om is None:
        return None
    a = abs(om)
    if a < CIS_MAX:
        return "cis"
    if a < TRANS_MIN:
        return "twisted"
    return "trans"


def evaluate(residues: list[ProteinResidue]) -> list[dict]:
    """Per residue: ``omega`` (deg or None) and ``peptide`` (``cis``/``twisted``/``trans``/None)."""
    rows = []
    for i in range(len(residues)):
        om = omega(residues, i)
        rows.append({"omega": om, "peptide": omega_class(om)})
    return rows


def ca_chiral_volume(r: ProteinResidue) -> float | None:
    """Signed volume (Å³) (N-CA)·((C-CA)×(CB-CA)); positive for L-amino acids."""
    n, ca, c, cb = r.get("N"), r.get("CA"), r.get("C"), r.get("CB")
    if n is None or ca is None or c is None or cb is None:
        return None
    return float(np.dot(n - ca, np.cross(c - ca, cb - ca)))




def ca_inversions(residues: list[ProteinResidue]) -> list[int]:
    """Indices of residues whose CA has the wrong hand (see module docstring)."""
    out = []
    for i, r in enumerate(residues):
        v = ca_chiral_volume(r)
        if v is None:
            continue
        if (v < 0) != (r.resname in D_AMINO):
            out.append(i)
    return out


def restraint_inversions(chiral_idx: np.ndarray, ideal: np.ndarray, both: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Indices of chiral restraints whose model volume has the opposite sign of the ideal one."""
    idx = np.asarray(chiral_idx, dtype=np.int64).reshape(-1, 4)
    if idx.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    c = xyz[idx[:, 0]]
    v = np.einsum("ij,ij->i", xyz[idx[:, 1]] - c, np.cross(xyz[idx[:, 2]] - c, xyz[idx[:, 3]] - c))
    bad = (~np.asarray(both, dtype=bool)) & (np.sign(v) * np.sign(ideal) < 0)
    return np.nonzero(bad)[0]
