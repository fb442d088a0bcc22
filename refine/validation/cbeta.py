"""C-beta deviation (Lovell et al. 2003, Proteins 50:437; MolProbity ``cbetadev``).

Definition: the distance (Å) between the modelled CB and an ideal CB built from the backbone
N, CA, C. Two ideal positions are built -- one at the ideal CA-CB distance with the ideal
angle C-CA-CB and dihedral N-C-CA-CB, one with the ideal angle N-CA-CB and dihedral
C-N-CA-CB -- their mean is taken and put back at the ideal CA-CB distance. Ideal values by
residue type are MolProbity's (Ala; Pro; the beta-branched Ile/Thr/Val; all others).
A deviation ≥ 0.25 Å is an outlier. GLY and residues missing N, CA, C or CB are not scored.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .residues import ProteinResidue

OUTLIER = 0.25

# (CA-CB distance Å, angle C-CA-CB, dihedral N-C-CA-CB, angle N-CA-CB, dihedral C-N-CA-CB)
_IDEAL = {
    "ALA": (1.536, 110.1, 122.9, 110.6, -122.6),
    "PRO": (1.530, 112.2, 115.1, 103.0, -120.7),
    "VAL": (1.540, 109.1, 123.4, 111.5, -122.0),
    "THR": (1.540, 109.1, 123.4, 111.5, -122.0),
    "ILE": (1.540, 109.1, 123.4, 111.5, -122.0),
}
_IDEAL_OTHER = (1.530, 110.1, 122.8, 110.5, -122.6)


@njit(cache=True)
def place_fourth(a, b, c, dist, angle, dihed):
    """Point d with |c-d| = dist, angle b-c-d = angle and dihedral a-b-c-d = dihed (Å, degrees)."""
    bc = c - b
    bc = bc / math.sqrt(bc[0] ** 2 + bc[1] ** 2 + bc[2] ** 2)
    ab = b - a
    n = np.array([ab[1] * bc[2] - ab[2] * bc[1], ab[2] * bc[0] - ab[0] * bc[2], ab[0] * bc[1] - ab[1] * bc[0]])
    n = n / math.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
    m = np.array([n[1] * bc[2] - n[2] * bc[1], n[2] * bc[0] - n[0] * bc[2], n[0] * bc[1] - n[1] * bc[0]])
    th = math.radians(angle)
    ph = math.radians(dihed)
    return (c - dist * math.cos(th) * bc + dist * math.sin(th) * math.cos(ph) * m
            + dist * math.sin(th) * math.sin(ph) * n)


def ideal_cb(r: ProteinResidue) -> np.ndarray | None:
    """MolProbity's ideal CB of ``r`` (Å), or None when N, CA or C is missing."""
    n, ca, c = r.get("N"), r.get("CA"), r.get("C")
    if n is None or ca is None or c is None:
        return None
    dist, ang_c, dih_n, ang_n, dih_c = _IDEAL.get(r.resname, _IDEAL_OTHER)
    b1 = place_fourth(n, c, ca, dist, ang_c, dih_n)
    b2 = place_fourth(c, n, ca, dist, ang_n, dih_c)
    mid = 0.5 * (b1 + b2)
    v = mid - ca
    nv = np.linalg.norm(v)
    if nv == 0:
        return None
    return ca + v * (dist / nv)


def evaluate(residues: list[ProteinResidue]) -> list[dict]:
    """Per residue: ``cbeta_dev`` (Å) or None."""
    rows = []
    for r in residues:
        dev = None
        cb = r.get("CB")
        if r.resname != "GLY" and cb is not None:
            ideal = ideal_cb(r)
            if ideal is not None:
                dev = float(np.linalg.norm(cb - ideal))
        rows.append({"cbeta_dev": dev})
    return rows
