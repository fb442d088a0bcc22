"""C-beta restraints: the CB of each amino acid held where the backbone N, CA, C put it.

Form (Phenix's ``c_beta_restraints``, on by default in its refinement): two torsion
restraints per residue with a CB, ``N-C-CA-CB`` and ``C-N-CA-CB``, to MolProbity's ideal
values (:data:`IDEAL`; the values its ``cbetadev`` builds the ideal CB with, Lovell et al. 2003,
Proteins 50:437), sigma :data:`SIGMA` (Phenix's 2.5 deg). Without them the map and the
side-chain restraints can pull a CB off its tetrahedral place while bonds and angles stay
within their loose sigmas: re-refined 7CEC had 3 to 5 C-beta outliers (>= 0.25 Å) where the
deposited model had none. Gly and D-amino acids get none.
"""

from __future__ import annotations

import numpy as np

#: Ideal dihedrals (deg) ``N-C-CA-CB`` and ``C-N-CA-CB`` by residue (MolProbity cbetadev).
IDEAL = {"ALA": (122.9, -122.6), "PRO": (115.1, -120.7), "VAL": (123.4, -122.0), "THR": (123.4, -122.0),
         "ILE": (123.4, -122.0)}
IDEAL_OTHER = (122.8, -122.6)
#: Degrees (Phenix's c_beta_restraints sigma).
SIGMA = 2.5
#: Residues with a CB that are not L-amino acids with these ideals.
SKIP = {"GLY"}


def cbeta_rows(st, r):
    """Torsion rows ``(idx (n, 4), ideal, sigma, period, labels)`` for every amino acid of
    ``st[0]`` with N, CA, C, CB (no alternative conformer on them, none fixed)."""
    from .validation.residues import D_AMINO

    cras = list(st[0].all())
    at: dict[int, dict[str, int]] = {}
    name: dict[int, str] = {}
    for i, c in enumerate(cras):
        if c.atom.name in ("N", "CA", "C", "CB") and not r.altloc[i] and not r.fixed[i]:
            rid = int(r.residue[i])
            at.setdefault(rid, {})[c.atom.name] = i
            name[rid] = c.residue.name
    idx, ideal, lab = [], [], []
    for rid, a in at.items():
        rn = name[rid]
        if len(a) < 4 or rn in SKIP or rn in D_AMINO:
            continue
        dn, dc = IDEAL.get(rn, IDEAL_OTHER)
        idx += [(a["N"], a["C"], a["CA"], a["CB"]), (a["C"], a["N"], a["CA"], a["CB"])]
        ideal += [dn, dc]
        lab += ["cbeta_n", "cbeta_c"]
    n = len(idx)
    return (np.array(idx, dtype=np.int32).reshape(-1, 4), np.array(ideal, dtype=np.float64), np.full(n, SIGMA),
            np.ones(n, dtype=np.int32), lab)


def with_cbeta_restraints(st, r):
    """A shallow copy of ``r`` with the C-beta torsion rows appended."""
    from .restraints import with_torsions

    return with_torsions(r, *cbeta_rows(st, r))
